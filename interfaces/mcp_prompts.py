"""MCP prompts: the product's use cases as ready instructions an assistant follows with the CRM's tools.

Each prompt names the tools it uses. `prompts/list` shows a prompt to a caller who may call every tool it needs
(its `tools`); tools it can do without (`optional`, e.g. the audit tools) are named only when they exist and the
caller may use them. Arguments are plain strings (MCP prompt arguments), put into the text as given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_ARGUMENT_CHARS = 20_000


@dataclass(frozen=True)
class PromptArg:
    name: str
    description: str
    required: bool = False


@dataclass(frozen=True)
class PromptSpec:
    name: str
    title: str
    description: str
    arguments: tuple[PromptArg, ...]
    tools: tuple[str, ...]
    """Every tool the prompt needs: it is listed only for callers who may call them all."""
    render: Callable[[dict[str, str], Callable[[str], bool]], str]
    """(arguments, usable(tool)) -> the instructions; `usable` tells which optional tools to name."""
    optional: tuple[str, ...] = ()


def _new_lead(args: dict[str, str], usable: Callable[[str], bool]) -> str:
    assignee = args.get("assign_to")
    return "\n".join([
        "Create a lead in Flusia CRM from the conversation below.",
        "1. Extract the business name, the contact person's name, e-mail, phone, VAT number, the source and what they "
        "need.",
        "2. Check it is not already there: crm_clients_search with the business name, then with the VAT number or "
        "e-mail. If a match exists, show it and ask whether to update it (crm_clients_update) instead.",
        f"3. Resolve the salesperson to assign ({assignee}) with crm_users_list." if assignee else
        "3. If the conversation names who should follow up, resolve them with crm_users_list.",
        "4. Create it with crm_clients_create_lead (assigned_to from step 3), add other people as contacts with "
        "crm_clients_add_contact and the need in a note with crm_clients_add_note.",
        "5. Schedule the follow-up with crm_tasks_create (client_id of the new lead, due_date, assignee_id).",
        "6. Answer with the lead's id, what was recorded and the follow-up date.",
        "",
        "Conversation:",
        args["conversation"],
    ])


def _won_deals(args: dict[str, str], usable: Callable[[str], bool]) -> str:
    month = args.get("month") or "last month (the calendar month before today in the organization's time zone)"
    return "\n".join([
        f"Write the report of the deals won in {month}.",
        "1. crm_users_me gives today's date and the organization's time zone: turn the month into its first and last "
        "day.",
        "2. crm_stats_revenue(start_date, end_date) gives the total, the win rate, won and lost counts and the totals "
        "by pipeline and owner.",
        "3. crm_deals_list(status='accepted', closed_from=first day, closed_to=last day, sort='value_desc') lists the "
        "deals; follow next_cursor until it is absent.",
        "4. Report: total won, number of deals, average value, win rate, the top five deals (title, client, value, "
        "owner), and totals by owner and by pipeline. Say which figures come from which tool.",
    ])


def _duplicates(args: dict[str, str], usable: Callable[[str], bool]) -> str:
    scope = f"of '{args['name']}'" if args.get("name") else "of the organization"
    match = args.get("match") or "any"
    return "\n".join([
        f"Clean up duplicate leads/clients {scope}, with the user's confirmation before anything is removed.",
        f"1. Find them: crm_clients_find_duplicates(by='{match}')" + (
            f", and crm_clients_search(q='{args['name']}') to see every candidate" if args.get("name") else "") + ".",
        "2. For each group, show the records side by side (crm_clients_get: fields, contacts, counts of deals, tasks "
        "and notes) and propose which one survives.",
        "3. Preview every change first: crm_clients_merge(survivor_id, duplicate_ids, preview=true) keeps their deals, "
        "notes and tasks on the survivor; crm_clients_delete(client_id, preview=true) only where a record is empty. "
        "A preview changes nothing and returns what would happen and a confirmation.",
        "4. Show the previews to the user and ask for explicit confirmation.",
        "5. Only then repeat each call with its confirmation (confirmation=<the preview's confirmation>). A refused "
        "confirmation means the record changed meanwhile: preview again.",
        "6. Summarise what was merged or deleted.",
    ])


def _onboarding(args: dict[str, str], usable: Callable[[str], bool]) -> str:
    deal = args.get("deal")
    return "\n".join([
        f"Onboard the new customer '{args['client']}'.",
        "1. Find it with crm_clients_search (or use the id given); if it is still a lead, crm_clients_convert_to_client.",
        (f"2. Find the deal '{deal}' with crm_clients_list_deals; if it is still open, ask before marking it won."
         if deal else "2. Look at its deals with crm_clients_list_deals: the won one is the project's origin."),
        "3. Create the delivery project with crm_projects_create(client_id, deal_id, name, start_date) and add the "
        "team with crm_projects_assign_user (people from crm_users_list).",
        "4. Create the kick-off tasks with crm_tasks_create (project_id, client_id, due dates, assignees): welcome "
        "call, access and materials, kick-off meeting.",
        "5. Record what was agreed with crm_clients_add_note.",
        "6. Answer with the project, the tasks and their due dates.",
    ])


def _investigate(args: dict[str, str], usable: Callable[[str], bool]) -> str:
    deal = args.get("deal")
    audit = all(usable(t) for t in ("crm_audit_recent_changes", "crm_audit_entity_history"))
    restore = usable("crm_audit_restore_entity")
    lines = [
        f"A user reports that a deal of '{args['client']}'" + (f" ('{deal}')" if deal else "") + " disappeared. "
        "Find out what happened, who did it and when.",
        "1. Find the client with crm_clients_search.",
        "2. crm_activities_timeline(client_id, kinds=['deal_deleted', 'deal_status', 'deal_created']) shows each "
        "deal's creation, status changes and deletion with who did it (user, API token or OAuth client) and when.",
    ]
    if audit:
        lines.append("3. crm_audit_recent_changes(entity_type='deal') over the last days shows the organization's "
                     "deletions; crm_audit_entity_history(entity_id=<the deal>) shows every change of that deal with "
                     "field-level before and after.")
    else:
        lines.append("3. crm_deals_list(client_id) confirms which deals are still there.")
    if restore:
        lines.append("4. Report the findings, then ask whether to bring it back: crm_audit_restore_entity(entity_id) "
                     "restores it by a new event (history stays).")
    else:
        lines.append("4. Report the findings: what changed, who, when, through which tool, and what can be done.")
    return "\n".join(lines)


PROMPTS: tuple[PromptSpec, ...] = (
    PromptSpec(
        "new_lead_from_chat", "New lead from a chat",
        "Turn a conversation (chat, e-mail, call notes) into a lead with contacts, a note and a follow-up task.",
        (PromptArg("conversation", "The conversation or notes to take the lead from.", True),
         PromptArg("assign_to", "Who follows it up (a user's name), if known.")),
        ("crm_clients_search", "crm_users_list", "crm_clients_create_lead", "crm_clients_add_contact",
         "crm_clients_add_note", "crm_tasks_create"),
        _new_lead),
    PromptSpec(
        "monthly_won_deals_report", "Monthly won-deals report",
        "Revenue, win rate and the top won deals of a month, by owner and pipeline.",
        (PromptArg("month", "The month, YYYY-MM (default: last month)."),),
        ("crm_users_me", "crm_stats_revenue", "crm_deals_list"),
        _won_deals),
    PromptSpec(
        "duplicate_cleanup", "Duplicate cleanup with confirmation",
        "Find duplicate leads/clients, preview their merge or deletion, and do it only after the user confirms.",
        (PromptArg("name", "Only duplicates of this name (e.g. 'Mario Rossi')."),
         PromptArg("match", "What must match: vat, email, phone or any (default).")),
        ("crm_clients_find_duplicates", "crm_clients_search", "crm_clients_get", "crm_clients_merge",
         "crm_clients_delete"),
        _duplicates),
    PromptSpec(
        "customer_onboarding", "Customer onboarding",
        "A won customer: convert the lead, open the delivery project, its team and kick-off tasks.",
        (PromptArg("client", "The customer's name or id.", True),
         PromptArg("deal", "The won deal's title, if there are several.")),
        ("crm_clients_search", "crm_clients_convert_to_client", "crm_clients_list_deals", "crm_projects_create",
         "crm_projects_assign_user", "crm_users_list", "crm_tasks_create", "crm_clients_add_note"),
        _onboarding),
    PromptSpec(
        "investigate_deleted_deal", "Investigate an anomaly: a deal disappeared",
        "Find who deleted or changed a deal and when, from the event history; offer to restore it.",
        (PromptArg("client", "The client whose deal disappeared.", True),
         PromptArg("deal", "The deal's title, if known.")),
        ("crm_clients_search", "crm_activities_timeline"),
        _investigate,
        optional=("crm_audit_recent_changes", "crm_audit_entity_history", "crm_audit_restore_entity",
                  "crm_deals_list")),
)


def prompt(name: str) -> PromptSpec | None:
    return next((p for p in PROMPTS if p.name == name), None)


def check_arguments(spec: PromptSpec, given: dict[str, Any] | None) -> dict[str, str]:
    """The arguments as strings; a ValueError names a missing, unknown or oversized one."""
    given = dict(given or {})
    known = {a.name for a in spec.arguments}
    for name in given:
        if name not in known:
            raise ValueError(f"unknown argument {name!r} for prompt {spec.name}; it takes: {', '.join(sorted(known))}")
    out: dict[str, str] = {}
    for arg in spec.arguments:
        value = given.get(arg.name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if arg.required:
                raise ValueError(f"argument {arg.name!r} is required: {arg.description}")
            continue
        if not isinstance(value, str) or len(value) > MAX_ARGUMENT_CHARS or "\x00" in value:
            raise ValueError(f"argument {arg.name!r} must be text of at most {MAX_ARGUMENT_CHARS} characters")
        out[arg.name] = value.strip()
    return out
