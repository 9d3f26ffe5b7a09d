-- assistd schema, version 1. `{seq}` is the dialect's auto-increment key.
-- Objects keep their API fields in JSON text columns (`data`, `metadata`);
-- columns that queries filter on, or that change concurrently, are their own columns.

CREATE TABLE assistants (
    seq {seq},
    id TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL
);

CREATE TABLE threads (
    seq {seq},
    id TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL,
    active_run_id TEXT
);

CREATE TABLE messages (
    seq {seq},
    id TEXT NOT NULL UNIQUE,
    thread_id TEXT NOT NULL REFERENCES threads(id) ON DELETE CASCADE,
    run_id TEXT,
    created_at BIGINT NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL
);
CREATE INDEX messages_thread ON messages (thread_id, seq);

CREATE TABLE runs (
    seq {seq},
    id TEXT NOT NULL UNIQUE,
    thread_id TEXT NOT NULL REFERENCES threads(id) ON DELETE CASCADE,
    assistant_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    status TEXT NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL,
    started_at BIGINT,
    expires_at BIGINT,
    cancelled_at BIGINT,
    failed_at BIGINT,
    completed_at BIGINT,
    required_action TEXT,
    last_error TEXT,
    incomplete_details TEXT,
    usage TEXT,
    worker_id TEXT,
    heartbeat_at DOUBLE PRECISION
);
CREATE INDEX runs_thread ON runs (thread_id, seq);
CREATE INDEX runs_status ON runs (status, seq);

CREATE TABLE run_steps (
    seq {seq},
    id TEXT NOT NULL UNIQUE,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    thread_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    status TEXT NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL
);
CREATE INDEX run_steps_run ON run_steps (run_id, seq);
