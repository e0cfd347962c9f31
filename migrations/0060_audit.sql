-- Audit (issue 11): the organization's changes newest first (crm_audit_recent_changes, `flusia audit changes`)
-- walk the cause rows by time: one index probe per page however long the history, also by user and by tool.
-- An entity's history reads its events by originator (the primary key) and each event's cause by position
-- (event_causes' primary key); the settings log has its own time index (0020).
CREATE INDEX event_causes_org_time_idx ON event_causes (organization_id, recorded_at DESC, first_notification_id DESC);
CREATE INDEX event_causes_org_user_time_idx ON event_causes (organization_id, user_id, recorded_at DESC)
    WHERE user_id IS NOT NULL;
CREATE INDEX event_causes_org_tool_time_idx ON event_causes (organization_id, tool, recorded_at DESC)
    WHERE tool IS NOT NULL;
