"""The operation registry: one declaration per tool.

An operation is an input Struct (its docstring is the tool description, its annotated fields the JSON
Schema and the validation), a kind, an output type and a handler. Everything the MCP layer shows —
name, schemas, annotations, required permissions, toolset — is derived from that one entry.

Permissions cover every resource a tool touches: its own (read, write or delete by kind), plus read on each
resource in `reads` (its result shows that resource's data, or it checks that resource's records, e.g. the
client a new task links to) and write on each resource in `writes` (its events change that resource's read
models, e.g. a merge re-pointing deals). What is not counted as another resource's data, on purpose:
- counts and sums (`crm_clients_get` deals_count, a pipeline refusing deletion while it has open deals, the
  `crm_stats_*` figures): they tell how many, not what; labels taken from another resource's records (pipeline
  and stage names, lead sources, campaign names) are that resource's data and are declared;
- people's names (and project members' e-mails) beside user ids: the organization's directory, which every
  member sees; `users:read` guards listing and searching users, their roles and permissions;
- a deal's service lines: copies made when the line was added (name, code, price), so the deal's own data;
- recording the organization's default pipeline on its first use by a deal: it already exists, with the same
  ids, for every reader (see application.toolsets.pipelines), so nothing about pipelines changes.
Where leaving something out is the better product, a tool does so and says so in its result instead of
requiring the permission (`crm_activities_timeline` and its `omitted`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from application.permissions import RESOURCES, allows

Kind = Literal["query", "command", "destructive"]
KIND_ACTION = {"query": "read", "command": "write", "destructive": "delete"}


REPEAT_ADDS = ("create", "add_", "log_", "send_", "invite", "allocate", "sync", "restore")
REPEAT_ADDS_EXCEPT = {"add_tag", "add_to_blacklist"}
"""Tool verbs (`crm_<toolset>_<verb>`) whose repetition adds something again (see Operation.repeat_adds)."""
CONFIRM_INPUTS = {"preview": {"type": "boolean"}, "confirmation": {"type": "string"}}
CONFIRM_OUTPUTS = {"preview": {"type": "object"}, "confirmation": {"type": "string"}}
"""A preview's answer, `{preview: {...}, confirmation}`, is admitted by every destructive tool's output schema."""


META_TOOLSETS = ("tools", "connector")
"""Toolsets that are not permission resources: their tools need no permission of their own (see Operation.meta)."""


def resource_of(tool_name: str) -> str:
    """`crm_qr_codes_list` -> `qr_codes`: the longest known resource (or meta toolset) the name starts with."""
    rest = tool_name.removeprefix("crm_")
    matches = [r for r in (*RESOURCES, *META_TOOLSETS) if rest.startswith(r + "_")]
    if not matches:
        raise ValueError(f"tool {tool_name} does not start with crm_<resource>_")
    return max(matches, key=len)


DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"
SIMPLE_TYPES = {"string", "integer", "number", "boolean", "array", "object"}


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """msgspec emits `$ref`/`$defs`; clients fill in tool arguments from a self-contained schema, so inline them."""
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


LEAN_DROPS = {"additionalProperties", "minLength", "maxLength", "pattern", "minItems", "maxItems", "minProperties",
              "maxProperties", "propertyNames"}
"""Rules the published input schemas leave to the server: it enforces every one of them (the msgspec Struct is
the validation; an unknown argument is refused too) and its error names the field and the limit. What an
assistant needs to fill in arguments (types, formats, enums, required, defaults, ranges of numbers,
descriptions) stays."""


def compact(node: Any, *, prose: bool = True, lean: bool = False) -> Any:
    """The same schema in fewer characters, with standard formats only: no titles, no `default: null`,
    `anyOf [X, null]` folded into X's type, decimals as a string pattern (or a number) instead of the
    non-standard `format: decimal`; without `prose` (output schemas: the model reads the input side,
    validators read the output side), descriptions, defaults and formats go too."""
    if isinstance(node, list):
        return [compact(v, prose=prose, lean=lean) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    absent_is_null = node.get("default", ...) is None  # an optional argument: leaving it out says the same as null
    for key, value in node.items():
        if key in ("properties", "$defs"):
            out[key] = {name: compact(sub, prose=prose, lean=lean) for name, sub in value.items()}
        elif key == "title" or (key == "default" and value is None):
            continue
        elif not prose and key in ("description", "default", "format", "required"):
            # An output schema is for validators and states each field's type; results leave absent values out,
            # so presence is not asserted, and prose, defaults and formats do not constrain anything.
            continue
        elif (key == "required" and not value) or (lean and key in LEAN_DROPS):
            continue
        elif lean and key == "format" and value == "uuid":
            continue  # an id is never made up: it comes from another tool's answer (the descriptions say which)
        elif lean and key == "default" and (value is False or value == [] or value == {}):
            continue  # an empty list, object or false is what leaving an argument out plainly means
        elif lean and key == "minimum" and value == 1 and node.get("type") == "integer":
            continue  # a count or a limit: at least one goes without saying (0 is refused with the field named)
        else:
            out[key] = compact(value, prose=prose, lean=lean)
    if node.get("format") == "decimal":
        out.pop("format", None)
        out["type"] = ["string", "number"] if prose else "string"  # results always write decimals as strings
        if prose and not lean:
            out["pattern"] = DECIMAL_PATTERN
    variants = out.get("anyOf")
    if isinstance(variants, list) and len(variants) == 2 and {"type": "null"} in variants:
        other = next(v for v in variants if v != {"type": "null"})
        # Where null only means "not given", the schema shows the type alone; where null means something (an
        # update's "clear this field"), it stays.
        merged = other if absent_is_null else _with_null(other)
        if merged is not None:
            del out["anyOf"]
            out = {**merged, **out}
    return out


def _with_null(schema: dict[str, Any]) -> dict[str, Any] | None:
    """`schema` also accepting null, without anyOf, where that is plain: a simple type or an enum."""
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None]}
    kind = schema.get("type")
    if isinstance(kind, str) and kind in SIMPLE_TYPES:
        return {**schema, "type": [kind, "null"]}
    if isinstance(kind, list) and "null" not in kind:
        return {**schema, "type": [*kind, "null"]}
    return None


def json_schema(tp: type) -> dict[str, Any]:
    """An input schema as published: self-contained (references inlined), compact and lean (see LEAN_DROPS)."""
    return compact(_inline_refs(msgspec.json.schema(tp)), lean=True)


def output_json_schema(tp: type) -> dict[str, Any]:
    """An output schema: shared definitions kept as `$defs` (a deal's money object is written once), no prose, and
    none of the input rules (lengths, patterns, closed objects): it says what a result holds, not what is refused."""
    return compact(msgspec.json.schema(tp), prose=False, lean=True)


@dataclass(frozen=True)
class Operation:
    name: str
    kind: Kind
    input: type[msgspec.Struct]
    output: type
    handler: Callable[..., Any]
    returns: type
    present: Callable[..., Any] | None = None
    open_world: bool = False
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    own_id: str | None = None
    """The toolset's entity id argument (deal_id for crm_deals_*): self-explanatory there, so shown without prose."""
    meta: bool = False
    """A tool about tools (discovery): run by the runner itself, `await handler(params, runner, principal)`, with no
    permission of its own; the tools it runs bring theirs."""
    free: bool = False
    """Callable with any valid token (crm_users_me: it is how a caller learns why other tools are refused)."""
    group: str | None = None
    """The toolset, for tools whose names do not say it (`search` and `fetch`, named by the ChatGPT contract)."""

    def __post_init__(self) -> None:
        for other in (*self.reads, *self.writes):
            if other not in RESOURCES or other == self.resource:
                raise ValueError(f"{self.name}: reads/writes name other resources; {other!r} is not one")

    @property
    def toolset(self) -> str:
        return self.group or resource_of(self.name)

    @property
    def resource(self) -> str:
        """The permission resource: the toolset's own (meta toolsets have none and need none)."""
        return self.toolset

    @property
    def action(self) -> str:
        return KIND_ACTION[self.kind]

    @property
    def permission(self) -> str:
        if self.meta or self.free:
            return "none"
        """The permission on the tool's own resource, from its kind."""
        return f"{self.resource}:{self.action}"

    @property
    def needs(self) -> tuple[tuple[str, str], ...]:
        """Every (resource, action) a call needs: its own, then read on what it reads and write on what it writes."""
        if self.meta or self.free:
            return ()
        return ((self.resource, self.action), *((r, "read") for r in self.reads), *((r, "write") for r in self.writes))

    @property
    def permissions(self) -> list[str]:
        """`needs` as permission names, e.g. ["pipelines:read", "deals:read"]."""
        return [f"{r}:{a}" for r, a in self.needs]

    def missing(self, grants: Mapping[str, str]) -> list[tuple[str, str]]:
        return [(r, a) for r, a in self.needs if not allows(grants, r, a)]

    def refusal(self, missing: list[tuple[str, str]]) -> str:
        """Why a call is refused, naming each missing permission and what the tool does with it."""
        verbs = {"read": "shows" if self.kind == "query" else "reads", "write": "changes", "delete": "deletes"}
        parts = [f"{r}:{a} ({self.name} {verbs[a]} {r})" for r, a in missing]
        return (f"missing permission{'s' if len(parts) > 1 else ''} {', '.join(parts)}:"
                " the token or the user's role does not grant it")

    @property
    def read_only(self) -> bool:
        return self.kind == "query"

    @property
    def confirmable(self) -> bool:
        """Destructive tools take `preview` / `confirmation` (application.confirmation); discovery's caller passes
        them on inside the arguments of the tool it runs."""
        return self.kind == "destructive" and not self.meta

    @property
    def repeat_adds(self) -> bool:
        """Whether running it twice would add something twice (a second lead, note, call, e-mail): only these
        publish `idempotency_key`. Every write tool accepts it (the server instructions say so); setting a field,
        a status or a tag, or deleting, comes out the same when repeated, and 60 schemas need not carry it."""
        verb = self.name.removeprefix("crm_").removeprefix(self.toolset).strip("_")
        return (self.kind == "command" and not self.meta and verb.startswith(REPEAT_ADDS)
                and verb not in REPEAT_ADDS_EXCEPT)

    @property
    def description(self) -> str:
        text = " ".join(inspect.cleandoc(self.input.__doc__ or "").split())  # one line: a docstring's wrapping is not prose
        return text  # a destructive tool's preview/confirmation: the server instructions explain it once

    @property
    def title(self) -> str:
        """For people: `crm_deals_set_status` -> "Deals: set status"."""
        rest = self.name.removeprefix("crm_").removeprefix(self.toolset).strip("_").replace("_", " ")
        return f"{self.toolset.replace('_', ' ').capitalize()}: {rest}" if rest else self.name

    def input_schema(self) -> dict[str, Any]:
        schema = json_schema(self.input)
        schema.pop("description", None)  # the description is the tool's, not repeated inside its schema
        own = schema.get("properties", {}).get(self.own_id or "")
        if own is not None:
            own.pop("description", None)
        if self.confirmable:
            schema["properties"] = {**schema.get("properties", {}), **CONFIRM_INPUTS}
        if not self.repeat_adds:
            schema.get("properties", {}).pop("idempotency_key", None)
        return schema

    def full_input_schema(self) -> dict[str, Any]:
        """The input schema with every rule (for explaining a refusal: enums, formats, limits)."""
        return compact(_inline_refs(msgspec.json.schema(self.input)))

    def output_schema(self) -> dict[str, Any]:
        schema = output_json_schema(self.output)
        if "$ref" in schema:  # MCP wants an object schema at the top: the referenced definition, with the others
            defs = schema.pop("$defs")
            schema = {**defs.pop(schema["$ref"].rsplit("/", 1)[-1]), **({"$defs": defs} if defs else {})}
        if self.confirmable:
            schema["properties"] = {**schema.get("properties", {}), **CONFIRM_OUTPUTS}
        return schema

    def annotations(self) -> dict[str, bool]:
        """The hints a client needs, read with the spec's defaults: a read-only tool says so (its other hints mean
        nothing); a write tool always says whether it is destructive (a missing destructiveHint means true);
        openWorldHint is always explicit; idempotentHint keeps its default, false."""
        if self.kind == "query":
            return {"readOnlyHint": True, "openWorldHint": self.open_world}
        return {"destructiveHint": self.kind == "destructive", "openWorldHint": self.open_world}


class Registry:
    def __init__(self) -> None:
        self._ops: dict[str, Operation] = {}
        self.toolsets: dict[str, Any] = {}
        """name -> application.toolset.Toolset: title, description, listed by default or not."""

    def add_toolset(self, toolset: Any) -> None:
        if toolset.name in self.toolsets:
            raise ValueError(f"toolset {toolset.name} declared twice")
        if toolset.name not in RESOURCES and not (toolset.meta and toolset.name in META_TOOLSETS):
            raise ValueError(f"toolset {toolset.name} is not a permission resource ({', '.join(RESOURCES)})")
        self.toolsets[toolset.name] = toolset

    def arrange(self, order: list[str] | tuple[str, ...]) -> None:
        """Put toolsets, and tools grouped by toolset, in this order (others after, as declared): the order of
        `tools/list` and of the README's table must not depend on which module happened to be imported first."""
        rank = {name: i for i, name in enumerate(order)}
        names = sorted(self.toolsets, key=lambda n: rank.get(n, len(rank)))
        self.toolsets = {n: self.toolsets[n] for n in names}
        position = {n: i for i, n in enumerate(names)}
        self._ops = dict(sorted(self._ops.items(), key=lambda item: position[item[1].toolset]))

    def add(self, op: Operation) -> Operation:
        if op.name in self._ops:
            raise ValueError(f"operation {op.name} declared twice")
        if not op.description:
            raise ValueError(f"{op.name}: the input Struct's docstring is the tool description and must be set")
        if op.toolset not in self.toolsets:
            raise ValueError(f"{op.name}: toolset {op.toolset} is not declared (application.toolset.Toolset)")
        toolset = self.toolsets[op.toolset]
        op = dataclasses.replace(op, own_id=toolset.id_field, meta=toolset.meta)
        self._ops[op.name] = op
        return op

    def query(
        self, name: str, *, output: type, input: type[msgspec.Struct] | None = None, open_world: bool = False,
        reads: tuple[str, ...] = (), free: bool = False, group: str | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """`handler(query, ctx) -> output`; `reads`: other resources whose data the result shows; `free`: no
        permission needed; `group`: the toolset of a tool whose name does not start with crm_<toolset>_."""

        def register(handler: Callable[..., Any]) -> Callable[..., Any]:
            self.add(Operation(name, "query", input or _input_of(handler), output, handler, returns=output,
                               open_world=open_world, reads=reads, free=free, group=group))
            return handler

        return register

    def command(
        self,
        name: str,
        *,
        output: type,
        input: type[msgspec.Struct] | None = None,
        destructive: bool = False,
        returns: type | None = None,
        present: Callable[..., Any] | None = None,
        open_world: bool = False,
        reads: tuple[str, ...] = (),
        writes: tuple[str, ...] = (),
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """`handler(command, uow) -> returns`; `present(ctx, returned) -> output` runs after projections caught up.

        `reads`: other resources it checks or whose data its output shows; `writes`: other resources it changes."""

        def register(handler: Callable[..., Any]) -> Callable[..., Any]:
            kind: Kind = "destructive" if destructive else "command"
            self.add(
                Operation(name, kind, input or _input_of(handler), output, handler, returns=returns or output,
                          present=present, open_world=open_world, reads=reads, writes=writes)
            )
            return handler

        return register

    def get(self, name: str) -> Operation | None:
        return self._ops.get(name)

    def __iter__(self):
        return iter(self._ops.values())

    def __len__(self) -> int:
        return len(self._ops)

    def select(
        self, grants: dict[str, str] | None = None, toolsets: Iterable[str] | None = None, read_only: bool = False
    ) -> list[Operation]:
        """The one list every filter applies to: permissions (every one a tool needs), toolsets, read-only mode."""
        wanted = set(toolsets) if toolsets else None
        return [
            op
            for op in self._ops.values()
            if (wanted is None or op.toolset in wanted or self.toolsets[op.toolset].always)
            and (not read_only or op.read_only)
            and (grants is None or not op.missing(grants))
        ]


def _input_of(handler: Callable[..., Any]) -> type[msgspec.Struct]:
    hints = inspect.get_annotations(handler, eval_str=True)
    first = next(iter(inspect.signature(handler).parameters))
    tp = hints[first]
    if not (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
        raise TypeError(f"{handler.__qualname__}: first parameter must be annotated with its input Struct")
    return tp


registry = Registry()
