-- Artifact bytes move from `artifact_chunks` rows to the blob store (orchestrator/blobstore):
-- each `artifacts` row names its blob by `store_key` and keeps the file's size and sha256.
-- Rows stored before this migration have no key until the one-time copy at start
-- (orchestrator/artifact_copy.py) has moved their chunks into the store; it then drops
-- `artifact_chunks`. A row without a key is not served.
ALTER TABLE artifacts ADD COLUMN store_key text UNIQUE;
