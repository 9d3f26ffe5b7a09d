-- assistd schema, version 4: dense vectors for vector store chunks.
-- A chunk's `embedding` is its unit-length float32 vector (little-endian bytes) from the model
-- named in `embedding_model`; chunks of other models are not searched densely. A store's
-- `vectors_version` changes in the same transaction as any change to its chunks, so a cached
-- copy of its vectors can tell whether it is still true.

-- dialect: sqlite
ALTER TABLE vector_store_chunks ADD COLUMN embedding BLOB;

-- dialect: postgresql
ALTER TABLE vector_store_chunks ADD COLUMN embedding BYTEA;

ALTER TABLE vector_store_chunks ADD COLUMN embedding_model TEXT;

ALTER TABLE vector_stores ADD COLUMN vectors_version BIGINT NOT NULL DEFAULT 0;
