"""Generic command handlers: most write tools only load one aggregate, call one domain method and save.

`entity_command` declares such a tool once; resources (tasks, projects, wiki) reuse it instead of
repeating the same load/call/return handler for every tool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from msgspec import Struct

from application.registry import registry
from application.runner import UnitOfWork
from domain.base import TenantAggregate


def entity_command(
    name: str,
    input: type[Struct],
    aggregate: type[TenantAggregate],
    id_field: str,
    act: Callable[[Any, Any, UnitOfWork], Any],
    *,
    output: type,
    present: Callable[..., Any] | None = None,
    returns: type = UUID,
    destructive: bool = False,
    presents_aggregate: bool = False,
    reads: tuple[str, ...] = (),
    writes: tuple[str, ...] = (),
) -> None:
    """Declare a tool whose handler loads `aggregate` by `cmd.<id_field>`, calls `act(agg, cmd, uow)` and saves.

    The handler returns what `act` returns, or the aggregate's id when it returns None (always the id with
    `presents_aggregate`, for tools whose output is the aggregate itself); `present` renders that from the
    read models once they have caught up. `reads`/`writes`: other resources it touches (see application.registry).
    """

    def handle(cmd: Any, uow: UnitOfWork) -> Any:
        agg = uow.get(aggregate, getattr(cmd, id_field), field=id_field)
        result = act(agg, cmd, uow)
        return agg.id if result is None or presents_aggregate else result

    registry.command(name, input=input, output=output, returns=returns, present=present,
                     destructive=destructive, reads=reads, writes=writes)(handle)
