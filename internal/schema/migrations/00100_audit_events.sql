-- +goose Up
-- The audit outbox: one row per audited action, written in the action's own transaction.
-- payload (which may hold PHI) and payload_salt can be erased under a retention policy;
-- payload_commitment = SHA-256(salt || payload) stays and is what the log commits to.
CREATE TABLE audit_events (
    id                 uuid PRIMARY KEY,
    seq                bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    occurred_at        timestamptz NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now(),
    actor_kind         text NOT NULL CHECK (actor_kind IN ('user','device','service')),
    actor_id           text NOT NULL,
    actor_auth         text NOT NULL,
    action             text NOT NULL,
    object_type        text NOT NULL,
    object_id          text NOT NULL,
    outcome            text NOT NULL CHECK (outcome IN ('success','rejected','failure')),
    reason             text NOT NULL,
    request_id         text NOT NULL,
    source_addr        text NOT NULL,
    payload            jsonb,
    payload_salt       bytea,
    payload_commitment bytea NOT NULL CHECK (length(payload_commitment) = 32)
);
CREATE INDEX audit_events_occurred_at ON audit_events (occurred_at);
CREATE INDEX audit_events_action ON audit_events (action, occurred_at);

-- +goose Down
DROP TABLE audit_events;
