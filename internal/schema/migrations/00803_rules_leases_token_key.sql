-- vigil:phase expand
-- +goose Up
-- The fencing token as a key of its lease row (issue #18, REQ-HA-049). The engine's writes
-- fence a bucket with FOR KEY SHARE on its lease row: a take-over (owner and token + 1)
-- changes a column of a unique index, so it takes FOR UPDATE and waits for them, while the
-- renewal every 2 s (expires_at only) takes FOR NO KEY UPDATE and no longer waits for — nor
-- holds back — every evaluation in flight, as it did with FOR SHARE. Older binaries' FOR SHARE
-- still conflicts with both.
CREATE UNIQUE INDEX rules_leases_bucket_token ON rules_leases (bucket, token);

-- +goose Down
DROP INDEX rules_leases_bucket_token;
