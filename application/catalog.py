"""Importing this module declares every tool: the one inventory the MCP layer and the tests read."""

from application import clients, tasks, users  # noqa: F401
from application import activities, deals, pipelines, services, stats  # noqa: F401
from application import projects, wiki  # noqa: F401
from application.registry import registry

__all__ = ["registry"]
