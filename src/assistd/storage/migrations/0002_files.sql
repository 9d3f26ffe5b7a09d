-- assistd schema, version 2: files uploaded through /v1/files.
-- The row is the whole API object; the bytes are `files/<id>` in the data dir, never in the database.

CREATE TABLE files (
    seq {seq},
    id TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    expires_at BIGINT
);
CREATE INDEX files_purpose ON files (purpose, seq);
CREATE INDEX files_expires ON files (expires_at);
