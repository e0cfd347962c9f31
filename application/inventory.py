"""Importing this module declares every toolset and tool: the one inventory the MCP layer, the CLI and the
tests read. The order of the imports is the order of `tools/list` and of the README's table."""

from application.registry import Registry, registry
from application.toolsets import (  # noqa: F401 - imported for their declarations
    users, clients, tasks, deals, pipelines, services, activities, projects, wiki, stats, newsletter, qr_codes,
    invoices, settings,
    workflows,
)

__all__ = ["registry", "toolset_table"]


def toolset_table(reg: Registry = registry) -> str:
    """The README's table of tool groups, generated (`flusia tools --markdown`): README and code cannot drift."""
    lines = ["| toolset | tools | what it does |", "|---|---|---|"]
    for t in reg.toolsets.values():
        count = sum(1 for op in reg if op.toolset == t.name)
        default = "" if t.default else " (not listed unless chosen)"
        lines.append(f"| `{t.name}` | `crm_{t.name}_*` ({count}) | {t.description}{default} |")
    return "\n".join(lines) + "\n"
