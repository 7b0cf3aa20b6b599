-- +goose Up
-- Event authentication (docs/audit.md "Event authentication"): every event is written by one
-- writer session (one audit.Outbox in one process), numbered by the session's own counter and
-- authenticated with HMAC-SHA256 under the session's key. The key is random per session and
-- stored here only wrapped by the key ring (Vault Transit in production, the local key ring in
-- the data directory): a database-only attacker cannot unwrap it, so cannot forge, back-date
-- or renumber an event. recorded_at is set by the writer and is in the leaf (encoding v2).
CREATE TABLE audit_sessions (
    id          uuid PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    wrapped_key bytea NOT NULL
);

ALTER TABLE audit_events
    ALTER COLUMN recorded_at DROP DEFAULT,
    ADD COLUMN session_id  uuid,
    ADD COLUMN session_seq bigint,
    ADD COLUMN auth_mac    bytea CHECK (length(auth_mac) = 32),
    -- Set by the shipper when it refused to log the row (no valid authentication).
    ADD COLUMN refused_at  timestamptz;
-- (No index on (session_id, session_seq): verify reads every row anyway, and a duplicate
-- number cannot carry a valid tag, which covers the event id.)
DROP INDEX audit_events_pending;
CREATE INDEX audit_events_pending ON audit_events (seq) WHERE batch_id IS NULL AND refused_at IS NULL;

-- +goose Down
DROP INDEX audit_events_pending;
CREATE INDEX audit_events_pending ON audit_events (seq) WHERE batch_id IS NULL;
ALTER TABLE audit_events DROP COLUMN refused_at, DROP COLUMN auth_mac, DROP COLUMN session_seq,
    DROP COLUMN session_id, ALTER COLUMN recorded_at SET DEFAULT now();
DROP TABLE audit_sessions;
