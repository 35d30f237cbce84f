-- A run's jobs in declaration order (matrix combinations in matrix order), for listings.
ALTER TABLE jobs ADD COLUMN position integer NOT NULL DEFAULT 0;
