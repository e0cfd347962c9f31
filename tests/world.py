"""One organization with one entity of every kind, linked as users link them, each text carrying a marker
`MARK-<resource>-...`: the world the tests that call every tool point their arguments at (`tool_args`)."""

from __future__ import annotations

from typing import Any

from tests.inprocess import call


def seed(runtime: Any, admin: Any) -> dict[str, Any]:
    """One entity of every kind, linked to each other as users link them, markers in their texts."""
    def do(tool: str, **args: Any) -> dict[str, Any]:
        return call(runtime, admin, tool, args)

    pipeline = do("crm_pipelines_create", name="MARK-pipelines-pipe", stages=[
        {"name": "MARK-pipelines-stage-a", "probability": 20}, {"name": "MARK-pipelines-stage-b", "probability": 60}])
    stage_a, stage_b = (s["id"] for s in pipeline["stages"])
    category = do("crm_services_create_category", name="MARK-services-category")
    service = do("crm_services_create", name="Consulenza", unit_price="100", description="MARK-services-description",
                 category_id=category["id"])
    client = do("crm_clients_create_lead", business_name="MARK-clients-lead", contact_name="MARK-clients-person",
                vat_number="IT12345678901", source="MARK-clients-source", email="mark-clients@example.com")
    duplicate = do("crm_clients_create_lead", business_name="MARK-clients-duplicate", vat_number="IT12345678901")
    contact = do("crm_clients_add_contact", client_id=client["id"], name="MARK-clients-contact")
    client_note = do("crm_clients_add_note", client_id=client["id"], body="MARK-clients-note")
    recording = do("crm_clients_add_recording", client_id=client["id"], media_url="https://example.com/a.mp3",
                   duration_seconds=60, transcript="MARK-clients-transcript")
    deal = do("crm_deals_create", title="MARK-deals-open", client_id=client["id"], pipeline_id=pipeline["id"],
              description="MARK-deals-description")
    line = do("crm_deals_add_service", deal_id=deal["id"], service_id=service["id"])["items"][0]
    do("crm_deals_add_contact", deal_id=deal["id"], contact_id=contact["id"], role="MARK-deals-role")
    do("crm_deals_set_commission", deal_id=deal["id"], user_id=str(admin.user_id), percent="10")
    deal_note = do("crm_deals_add_note", deal_id=deal["id"], body="MARK-deals-note")
    do("crm_deals_move_stage", deal_id=deal["id"], stage_id=stage_b)
    lost = do("crm_deals_create", title="MARK-deals-lost", client_id=client["id"], pipeline_id=pipeline["id"])
    do("crm_deals_set_status", deal_id=lost["id"], status="rejected", reason="MARK-deals-reason")
    do("crm_deals_create", title="MARK-deals-default", client_id=client["id"])  # records the default pipeline
    project = do("crm_projects_create", name="MARK-projects-name", description="MARK-projects-description",
                 client_id=client["id"], deal_id=deal["id"])
    do("crm_projects_update_brief", project_id=project["id"], goals=["MARK-projects-goal"])
    do("crm_projects_add_activity", project_id=project["id"], kind="worklog", text="MARK-projects-worklog", minutes=30)
    task = do("crm_tasks_create", title="MARK-tasks-title", description="MARK-tasks-description", client_id=client["id"],
              deal_id=deal["id"], project_id=project["id"], checklist=["MARK-tasks-item"], tags=["mark-tasks-tag"])
    attachment = do("crm_tasks_add_attachment", task_id=task["id"], name="MARK-tasks-file.pdf",
                    mime_type="application/pdf", url="https://example.com/f.pdf")
    activity = do("crm_activities_log_call", client_id=client["id"], deal_id=deal["id"],
                  subject="MARK-activities-subject", body="MARK-activities-body", outcome="MARK-activities-outcome")
    wiki_category = do("crm_wiki_create_category", name="MARK-wiki-category")
    page = do("crm_wiki_create_page", title="MARK-wiki-page", body="MARK-wiki-body", category_id=wiki_category["id"])
    mailing_list = do("crm_newsletter_create_list", name="MARK-newsletter-list", description="MARK-newsletter-about")
    do("crm_newsletter_add_subscribers", list_id=mailing_list["id"], consent_source="form",
       subscribers=[{"email": "mark-newsletter-sub@example.com", "first_name": "MARK-newsletter-first"}])
    campaign = do("crm_newsletter_create_campaign", name="MARK-newsletter-campaign", subject="MARK-newsletter-subject",
                  from_name="Shop", from_email="news@mark.example", text_body="MARK-newsletter-body",
                  list_ids=[mailing_list["id"]])
    sender_domain = do("crm_newsletter_add_domain", domain="mark.example")
    entry = do("crm_newsletter_add_to_blacklist", value="blocked.example", reason="MARK-newsletter-reason")
    qr = do("crm_qr_codes_create", target_url="https://example.com/mark", label="MARK-qr_codes-label",
            client_id=client["id"], deal_id=deal["id"], campaign_id=campaign["id"])
    workflow, step_id, run_id = seed_workflow(runtime, admin, client["id"])
    user = str(admin.user_id)
    return {
        **seed_settings_and_invoices(runtime, admin, client["id"], deal["id"]),
        **seed_whatsapp(runtime, admin, client["id"]),
        "workflow_id": workflow["id"], "workflows.step_id": step_id, "workflows.step_ids": [step_id], "run_id": run_id,
        "crm_workflows_set_trigger.config": {"to_status": "accepted"},
        "crm_workflows_add_step.config": {"title": "MARK-workflows-step"},
        "crm_workflows_update_step.config": {"title": "MARK-workflows-updated"},
        "list_id": mailing_list["id"], "campaign_id": campaign["id"], "domain_id": sender_domain["id"],
        "entry_id": entry["id"], "qr_code_id": qr["id"], "newsletter.email": "mark-newsletter-sub@example.com",
        "crm_qr_codes_list.campaign_id": None, "crm_qr_codes_list.client_id": None, "crm_qr_codes_list.deal_id": None,
        "client_id": client["id"], "survivor_id": client["id"], "duplicate_ids": [duplicate["id"]],
        "contact_id": contact["id"], "clients.note_id": client_note["id"], "recording_id": recording["id"],
        "deal_id": deal["id"], "audit.entity_id": deal["id"], "deals.note_id": deal_note["id"], "line_id": line["id"], "deals.percent": "10",
        "pipeline_id": pipeline["id"], "stage_id": stage_a, "stage_ids": [stage_b, stage_a],
        "service_id": service["id"], "services.category_id": category["id"], "task_id": task["id"],
        "item_id": task["checklist"][0]["id"], "attachment_id": attachment["id"], "tasks.url": "https://example.com/g.pdf",
        "activity_id": activity["id"], "project_id": project["id"], "page_id": page["id"],
        "wiki.category_id": wiki_category["id"], "user_id": user, "assigned_to": user, "assignee_id": user,
        "owner_id": user, "crm_activities_timeline.deal_id": None,  # a client's whole timeline: its notes too
    }


def seed_workflow(runtime: Any, admin: Any, client_id: str) -> tuple[dict[str, Any], str, str]:
    """A workflow (deal won -> a task) with one finished run, then paused. The task's title carries no marker: what
    a workflow writes into another resource is that resource's data."""
    import time

    import psycopg

    from application.workflow_engine import WorkflowEngine

    def do(tool: str, **args: Any) -> dict[str, Any]:
        return call(runtime, admin, tool, args)

    workflow = do("crm_workflows_create", name="MARK-workflows-name", description="MARK-workflows-about")
    do("crm_workflows_set_trigger", workflow_id=workflow["id"], type="deal_status_changed",
       config={"to_status": "accepted"})
    step_id = do("crm_workflows_add_step", workflow_id=workflow["id"], type="create_task",
                 config={"title": "Kickoff", "due_in_days": 2, "assignee_id": "{{deal.owner_id}}"})["step_id"]
    do("crm_workflows_activate", workflow_id=workflow["id"])
    won = do("crm_deals_create", title="MARK-deals-won", client_id=client_id)
    do("crm_deals_set_status", deal_id=won["id"], status="accepted")
    engine = WorkflowEngine(runtime)
    try:
        engine.drain_sync()
    finally:
        engine.close()
    deadline = time.monotonic() + 60  # another process's engine (the e2e server on the same database) may hold it
    with psycopg.connect(runtime.database_url, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT run_id, status FROM workflow_pending WHERE workflow_id = %s",
                               (workflow["id"],)).fetchone()
            if row is not None and row[1] != "pending" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert row is not None and row[1] == "done", row
    # Paused, so that the calls the tests make (a deal accepted) start no runs behind their back; the tools that
    # need an active workflow (deactivate) answer a clear conflict.
    do("crm_workflows_deactivate", workflow_id=workflow["id"])
    return workflow, step_id, str(row[0])


def seed_settings_and_invoices(runtime: Any, admin: Any, client_id: str, deal_id: str) -> dict[str, Any]:
    """Settings (a custom role, template, custom field, API token, an invited user, the FattureInCloud connection)
    and one invoice imported as the sync worker imports it, allocated in part to the deal, plus a queued sync.
    People's names carry no marker (every member sees the directory)."""
    import datetime as dt

    import psycopg
    from psycopg.rows import dict_row

    from application.invoice_sync import import_documents
    from tests.fic_stub import document

    def do(tool: str, **args: Any) -> dict[str, Any]:
        return call(runtime, admin, tool, args)

    role = do("crm_settings_create_role", name="MARK-settings-role", permissions={"clients": ["read"]})
    template = do("crm_settings_create_template", kind="email", name="MARK-settings-template", entity="client",
                  subject="MARK-settings-subject {{client.business_name}}", text_body="Hello {{user.name}}")
    field = do("crm_settings_create_custom_field", entity_type="client", key="mark_field", label="MARK-settings-field",
               type="text")
    token = do("crm_settings_create_api_token", name="MARK-settings-token", permissions={"settings": ["read"]})
    do("crm_settings_invite_user", email="invited@example.com", name="Invited Person", role="viewer")
    do("crm_settings_update_organization", fattureincloud={"company_id": 777, "access_token": "seed-fic-token"})
    day = dt.date.today() - dt.timedelta(days=40)
    with psycopg.connect(runtime.database_url, autocommit=True, row_factory=dict_row) as conn:
        import_documents(runtime.store, conn, admin.organization_id, 777, [document(
            501, day=day, client="MARK-invoices-client", vat="IT12345678901", net="1000", instalments=2,
            subject="MARK-invoices-subject")], requested_by=admin.user_id)
    runtime.settle()
    invoice = do("crm_invoices_list")["items"][0]
    allocated = do("crm_invoices_allocate", invoice_id=invoice["id"], deal_id=deal_id, amount="100",
                   note="MARK-invoices-note")
    queued = do("crm_invoices_sync", date_from=day.isoformat(), date_to=dt.date.today().isoformat())
    return {
        "role_id": role["id"], "template_id": template["id"], "field_id": field["id"], "token_id": token["token"]["id"],
        "invoice_id": invoice["id"], "allocation_id": allocated["allocations"][0]["id"], "queue_item_id": queued["id"],
        "document_id": 501, "invoices.date_from": day.isoformat(), "invoices.date_to": dt.date.today().isoformat(),
        "crm_invoices_allocate.client_id": None, "crm_invoices_list.client_id": None,
        "crm_invoices_list.deal_id": None, "crm_invoices_sync.document_id": None,
    }


WORLD_NUMBER = "106540352242999"
"""The world's WhatsApp business number id. The world does not connect WhatsApp (sends are refused as not connected,
so no test reaches a real Cloud API); its chat arrives as a webhook delivery does."""


def seed_whatsapp(runtime: Any, admin: Any, client_id: str) -> dict[str, Any]:
    """A WhatsApp chat (contact name, a text, a photo, a reaction) stored as the webhook stores deliveries and applied
    by the worker, then linked to the client, assigned to the admin, granted to the admin, with a note."""
    import time as clock

    import psycopg
    from psycopg.rows import dict_row

    from application import whatsapp_inbox
    from tests.whatsapp_stub import contact, delivery, text_message

    def do(tool: str, **args: Any) -> dict[str, Any]:
        return call(runtime, admin, tool, args)

    wa_id = "393330000001"
    photo = {"from": wa_id, "id": "wamid.MARKPHOTO", "timestamp": str(int(clock.time())), "type": "image",
             "image": {"id": "9990001", "mime_type": "image/jpeg", "sha256": "abc", "caption": "MARK-whatsapp-caption"}}
    reaction = {"from": wa_id, "id": "wamid.MARKREACT", "timestamp": str(int(clock.time())), "type": "reaction",
                "reaction": {"message_id": "wamid.MARKTEXT", "emoji": "\U0001f44d"}}
    body = delivery(WORLD_NUMBER, contacts=[contact(wa_id, "MARK-whatsapp-contact")],
                    messages=[text_message(wa_id, "wamid.MARKTEXT", "MARK-whatsapp-message preventivo"), photo, reaction])
    with psycopg.connect(runtime.database_url, autocommit=True, row_factory=dict_row) as conn:
        whatsapp_inbox.store_delivery(conn, admin.organization_id, WORLD_NUMBER, body)
    runtime.whatsapp.run_pending()
    runtime.settle()
    chat = do("crm_whatsapp_list_chats")["items"][0]
    do("crm_whatsapp_link_client", chat_id=chat["id"], client_id=client_id)
    do("crm_whatsapp_assign_chat", chat_id=chat["id"], user_id=str(admin.user_id))
    do("crm_whatsapp_grant_access", chat_id=chat["id"], user_id=str(admin.user_id))
    note = do("crm_whatsapp_add_note", chat_id=chat["id"], body="MARK-whatsapp-note")
    return {"chat_id": chat["id"], "whatsapp.note_id": note["id"], "crm_whatsapp_send_template.template_id": None}
