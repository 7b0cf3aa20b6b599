-- vigil:phase expand
-- +goose Up
-- The snapshot of the transaction that created each FHIR Subscription: the durable dispatcher
-- (interop/fhir/subscription, RunDurable) notifies a Subscription only of the stored rows that
-- snapshot does not see, i.e. committed after its creation, however far behind the dispatcher
-- is when it reads them. The default fills it on insert (an older binary's inserts too).
-- Subscriptions created before this migration have none (NULL): every row read is theirs.
ALTER TABLE interop_fhir_subscriptions ADD COLUMN created_snapshot pg_snapshot;
ALTER TABLE interop_fhir_subscriptions ALTER COLUMN created_snapshot SET DEFAULT pg_current_snapshot();

-- +goose Down
ALTER TABLE interop_fhir_subscriptions DROP COLUMN created_snapshot;
