-- The timeline says who did each change: entries keep the notification id of their event, and the query joins
-- the event's cause (user, API token or OAuth client). Deals remember value and currency to show value changes;
-- tasks join the timeline of their client (and deal). Rebuild the timeline projection to fill older entries.
ALTER TABLE timeline_entries ADD COLUMN notification_id bigint;
ALTER TABLE timeline_entries ADD COLUMN task_id uuid;
ALTER TABLE timeline_deals ADD COLUMN value_cents bigint NOT NULL DEFAULT 0;
ALTER TABLE timeline_deals ADD COLUMN currency text NOT NULL DEFAULT 'EUR';
ALTER TABLE timeline_deals ADD COLUMN owner_id uuid;
CREATE TABLE timeline_tasks (
    task_id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    client_id uuid,
    deal_id uuid,
    title text NOT NULL
);
UPDATE projection_tracking SET position = 0 WHERE name = 'timeline';
DELETE FROM timeline_entries;
DELETE FROM timeline_deals;
