-- vigil:phase expand
-- +goose Up
-- The transaction that wrote each rules_inbox row (issue #18, REQ-HA-045). An owner drains its
-- inbox by reading only the rows of transactions that committed after its previous read —
-- those not visible in the snapshot that read saw (pg_visible_in_snapshot) — through the
-- (bucket, xid) index, instead of reading again, every poll, the rows it evaluated and keeps
-- until their patients' checkpoint. Exact: a transaction that commits late, out of id order,
-- is still read. Older binaries insert without naming the column (its default fills it) and
-- keep reading by (bucket, id).
ALTER TABLE rules_inbox ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX rules_inbox_bucket_xid ON rules_inbox (bucket, xid);

-- +goose Down
DROP INDEX rules_inbox_bucket_xid;
ALTER TABLE rules_inbox DROP COLUMN xid;
