"""Importing this module declares every toolset and tool: the one inventory the MCP layer, the CLI and the
tests read. TOOLSET_ORDER is the order of `tools/list` and of the README's table."""

from application.registry import Registry, registry
from application.toolsets import (  # noqa: F401 - imported for their declarations
    users, clients, tasks, deals, pipelines, services, activities, projects, wiki, client_overview, stats, newsletter,
    qr_codes, invoices, settings, whatsapp,
    workflows, audit, connector, tools,
)

__all__ = ["PRESETS", "TOOLSET_ORDER", "registry", "toolset_table"]

TOOLSET_ORDER = ("connector", "users", "clients", "deals", "pipelines", "services", "activities", "tasks", "projects",
                 "wiki",
                 "stats", "newsletter", "qr_codes", "invoices", "settings", "whatsapp", "workflows", "audit", "tools")
registry.arrange(TOOLSET_ORDER)

PRESETS = {
    "sales": ("users", "clients", "deals", "pipelines", "services", "activities", "stats"),
    "work": ("users", "tasks", "projects", "wiki", "clients"),
    "marketing": ("users", "clients", "newsletter", "qr_codes", "stats"),
    "admin": ("users", "settings", "workflows", "invoices", "audit"),
    "discover": ("tools",),
}
"""Names for common jobs, usable in `/mcp?toolsets=` beside toolset names (`?toolsets=sales,tasks`)."""


def expand_toolsets(names: list[str], reg: Registry = registry) -> frozenset[str]:
    """Toolset names and presets to toolset names; an unknown name is a ValueError listing the valid ones."""
    out: set[str] = set()
    for name in names:
        if name in PRESETS:
            out.update(PRESETS[name])
        elif name in reg.toolsets:
            out.add(name)
        else:
            raise ValueError(f"unknown toolset {name!r}; toolsets: {', '.join(reg.toolsets)};"
                             f" presets: {', '.join(PRESETS)}")
    return frozenset(out)


def toolset_table(reg: Registry = registry) -> str:
    """The README's table of tool groups, generated (`flusia tools --markdown`): README and code cannot drift."""
    lines = ["| toolset | tools | what it does |", "|---|---|---|"]
    for t in reg.toolsets.values():
        ops = [op for op in reg if op.toolset == t.name]
        names = (f"`crm_{t.name}_*` ({len(ops)})" if all(op.name.startswith(f"crm_{t.name}_") for op in ops)
                 else ", ".join(f"`{op.name}`" for op in ops))
        default = "" if t.default else " (listed only when chosen: `?toolsets=discover`)" if t.name == "tools" \
            else " (listed only when chosen)"
        if t.always:
            default = " (listed in every connection, whatever toolsets it chooses, except `?toolsets=discover`)"
        lines.append(f"| `{t.name}` | {names} | {t.description}{default} |")
    return "\n".join(lines) + "\n"
