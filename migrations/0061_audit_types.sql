-- Audit (issue 11): the feed by entity type (crm_audit_recent_changes entity_type). An aggregate's events in one
-- organization (`domain.deals:Deal.Created` -> `domain.deals:Deal`): a type too rare to be among the newest
-- commands is found through this index instead of walking every command.
CREATE INDEX stored_events_org_aggregate_idx ON stored_events
    (organization_id, (left(topic, length(topic) - strpos(reverse(topic), '.'))), notification_id);
