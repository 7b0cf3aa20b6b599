-- +goose Up
-- Outgoing webhooks: subscriptions and their deliveries (an outbox with retries and a dead
-- letter state). secret is the HMAC-SHA256 key shared with the receiver.
CREATE TABLE core_webhooks (
    id          uuid PRIMARY KEY,
    url         text NOT NULL,
    secret      bytea NOT NULL CHECK (length(secret) >= 32),
    event_types text[] NOT NULL,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL
);

CREATE TABLE core_webhook_deliveries (
    id              uuid PRIMARY KEY,
    webhook_id      uuid NOT NULL REFERENCES core_webhooks (id) ON DELETE CASCADE,
    event_type      text NOT NULL,
    payload         jsonb NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_status     integer NOT NULL DEFAULT 0,
    last_error      text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL,
    finished_at     timestamptz
);
CREATE INDEX core_webhook_deliveries_due ON core_webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX core_webhook_deliveries_dead ON core_webhook_deliveries (created_at) WHERE status = 'dead';

-- +goose Down
DROP TABLE core_webhook_deliveries;
DROP TABLE core_webhooks;
