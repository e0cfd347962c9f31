"""Importing this module declares every tool: the one inventory the MCP layer and the tests read."""

from application.toolsets import activities, clients, deals, pipelines, projects, services, stats, tasks, users, wiki  # noqa: F401
from application.registry import registry

__all__ = ["registry"]
