-- WhatsApp (issue 15): each chat row records the version of the chat's last event it applied, so the webhook worker
-- can tell a current row from one behind the event store and load the chat's aggregate only when it must change it.
ALTER TABLE whatsapp_chats ADD COLUMN version bigint NOT NULL DEFAULT 0;
