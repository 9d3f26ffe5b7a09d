-- assistd schema, version 3: vector stores, their files, and the files' text chunks.
-- A vector store file's `id` is the file's id (unique per store). `claimed_by`/`claimed_at`
-- are the ingester's lease on an `in_progress` file; counts and status are computed on read.

CREATE TABLE vector_stores (
    seq {seq},
    id TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    name TEXT NOT NULL,
    metadata TEXT NOT NULL,
    expires_after TEXT,
    last_active_at BIGINT NOT NULL
);

CREATE TABLE vector_store_file_batches (
    seq {seq},
    id TEXT NOT NULL UNIQUE,
    vector_store_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    cancelled INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE vector_store_files (
    seq {seq},
    id TEXT NOT NULL,
    vector_store_id TEXT NOT NULL,
    batch_id TEXT,
    created_at BIGINT NOT NULL,
    status TEXT NOT NULL,
    usage_bytes BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    chunking_strategy TEXT NOT NULL,
    attributes TEXT,
    claimed_by TEXT,
    claimed_at DOUBLE PRECISION,
    UNIQUE (vector_store_id, id)
);
CREATE INDEX vector_store_files_pending ON vector_store_files (status, seq);
CREATE INDEX vector_store_files_batch ON vector_store_files (batch_id);

CREATE TABLE vector_store_chunks (
    seq {seq},
    vector_store_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX vector_store_chunks_file ON vector_store_chunks (vector_store_id, file_id, position);

-- The lexical index. SQLite: an FTS5 table whose rowid is the chunk's seq (kept in step by
-- the storage code). PostgreSQL: a stored tsvector column with a GIN index.

-- dialect: sqlite
CREATE VIRTUAL TABLE vector_store_chunks_fts USING fts5(text, tokenize = 'porter unicode61');

-- dialect: postgresql
ALTER TABLE vector_store_chunks
    ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED;

-- dialect: postgresql
CREATE INDEX vector_store_chunks_tsv ON vector_store_chunks USING GIN (tsv);
