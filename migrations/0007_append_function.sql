-- One round trip per command (columns as plain arrays: far cheaper to send than an array of composites): lock, notify, idempotency key, events and their cause in a single statement.
-- The EXCLUSIVE lock keeps commit order equal to notification order, as eventsourcing's own recorder does,
-- so followers never pass over a gap that fills in later.
CREATE OR REPLACE FUNCTION flusia_append(
    originator_ids uuid[], versions bigint[], topics text[], states bytea[], cause jsonb, idempotency jsonb
)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    SET LOCAL lock_timeout = '10s';
    IF idempotency IS NOT NULL THEN
        INSERT INTO idempotency_keys (organization_id, key, tool, request_hash, result)
        VALUES ((idempotency->>'organization_id')::uuid, idempotency->>'key', idempotency->>'tool',
                idempotency->>'request_hash', idempotency->'result');
    END IF;
    IF coalesce(array_length(originator_ids, 1), 0) = 0 THEN
        RETURN;
    END IF;
    LOCK TABLE stored_events IN EXCLUSIVE MODE;
    NOTIFY stored_events;
    WITH inserted AS (
        INSERT INTO stored_events (originator_id, originator_version, topic, state)
        SELECT * FROM unnest(originator_ids, versions, topics, states)
        RETURNING notification_id
    )
    SELECT array_agg(notification_id ORDER BY notification_id) INTO ids FROM inserted;
    IF cause IS NOT NULL THEN
        INSERT INTO event_causes (first_notification_id, last_notification_id, organization_id, user_id, token_id,
                                  oauth_client_id, correlation_id, tool)
        VALUES (ids[1], ids[array_length(ids, 1)], (cause->>'organization_id')::uuid, (cause->>'user_id')::uuid,
                (cause->>'token_id')::uuid, cause->>'oauth_client_id', (cause->>'correlation_id')::uuid, cause->>'tool');
    END IF;
    RETURN QUERY SELECT unnest(ids);
END
$$;
