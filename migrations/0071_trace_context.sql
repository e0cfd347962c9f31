-- W3C trace context (https://www.w3.org/TR/trace-context/) of the request that caused a command's events, when it
-- sent a valid `traceparent` header: the trace id, the span the server gave to handling that request (answered in
-- the `traceresponse` header) and the caller's span (the header's parent-id). NULL for everything else.
-- The checks are NOT VALID: existing rows are all NULL, so the table is not scanned to check them; new rows are.
ALTER TABLE event_causes ADD COLUMN trace_id text, ADD COLUMN span_id text, ADD COLUMN parent_span_id text;
ALTER TABLE event_causes
    ADD CONSTRAINT event_causes_trace_id_check CHECK (trace_id ~ '^[0-9a-f]{32}$') NOT VALID,
    ADD CONSTRAINT event_causes_span_id_check CHECK (span_id ~ '^[0-9a-f]{16}$') NOT VALID,
    ADD CONSTRAINT event_causes_parent_span_id_check CHECK (parent_span_id ~ '^[0-9a-f]{16}$') NOT VALID;
-- From a trace to its events: only traced commands are indexed.
CREATE INDEX event_causes_trace_idx ON event_causes (trace_id) WHERE trace_id IS NOT NULL;
