-- vigil:phase expand
-- +goose Up
-- FHIR R4 Subscriptions (the Subscriptions R5 Backport IG, rest-hook; interop/fhir/subscription).
-- Each one is delivered by its own core webhook (webhook_id), subscribed to the event type
-- fhir.subscription.<id>; deleting the webhook deletes the subscription. owner_* is the
-- principal that created it: its policy (and, for an API token, its SMART scopes) is
-- evaluated at each event before a full resource is sent. events counts the notification
-- events sent (events-since-subscription-start).
CREATE TABLE interop_fhir_subscriptions (
    id              uuid PRIMARY KEY,
    webhook_id      uuid NOT NULL UNIQUE REFERENCES core_webhooks (id) ON DELETE CASCADE,
    topic           text NOT NULL,
    patient_id      uuid,
    content         text NOT NULL CHECK (content IN ('id-only', 'full-resource')),
    endpoint        text NOT NULL,
    base_url        text NOT NULL,
    reason          text NOT NULL,
    status          text NOT NULL CHECK (status IN ('active', 'off')),
    owner_kind      text NOT NULL,
    owner_id        uuid NOT NULL,
    owner_subject   text NOT NULL,
    owner_token     uuid,
    events          bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL
);
CREATE INDEX interop_fhir_subscriptions_topic ON interop_fhir_subscriptions (topic) WHERE status = 'active';

-- +goose Down
DROP TABLE interop_fhir_subscriptions;
