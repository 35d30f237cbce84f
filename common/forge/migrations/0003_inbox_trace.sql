-- The W3C trace context of the webhook request that stored a delivery, so the worker that
-- processes it later continues the same trace (webhook -> inbox -> publish -> run).
ALTER TABLE forge_inbox ADD COLUMN trace_context text;
