-- The web run list (newest first, a page at a time from a cursor) and the status badge (the
-- last run of a repository's branch) read runs by creation time, the badge and the list's
-- repository filter by repository too: without these, each view sorted the whole table
-- (~200 ms for a badge at 100k runs).
CREATE INDEX runs_newest_first ON runs (created_at DESC, id DESC);
CREATE INDEX runs_by_repository ON runs ((repo->>'owner'), (repo->>'name'), created_at DESC);
