-- vigil:phase expand
-- +goose Up
-- FHIR Subscriptions' heartbeats (the backport IG's backport-heartbeat-period, in seconds;
-- NULL: none asked) and the time of the last notification of any kind enqueued (handshake,
-- event, heartbeat): a heartbeat is sent when none was for a period. Rows made before this
-- migration have no heartbeat and count from now. Additive only.
ALTER TABLE interop_fhir_subscriptions ADD COLUMN heartbeat_period integer CHECK (heartbeat_period > 0);
ALTER TABLE interop_fhir_subscriptions ADD COLUMN last_sent_at timestamptz;

-- +goose Down
ALTER TABLE interop_fhir_subscriptions DROP COLUMN last_sent_at;
ALTER TABLE interop_fhir_subscriptions DROP COLUMN heartbeat_period;
