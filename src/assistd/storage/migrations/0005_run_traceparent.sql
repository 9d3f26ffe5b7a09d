-- The W3C traceparent of the request that created a run (when tracing is on), so the run's
-- spans join that trace in whichever process executes it. Internal: never shown by the API.
ALTER TABLE runs ADD COLUMN traceparent TEXT;
