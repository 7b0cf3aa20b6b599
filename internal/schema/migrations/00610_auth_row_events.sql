-- vigil:phase expand
-- +goose Up
-- Users and policy lines tied to their events (audit/rowdigest, docs/audit.md "Domain rows
-- against the trail"): the id of the event whose action last created or changed the row (for
-- a user, also its recovery codes and passkeys), and the SHA-256 of its audited content that
-- event committed to. NULL in rows written before this migration.
ALTER TABLE auth_users ADD COLUMN audit_event_id uuid, ADD COLUMN audit_digest bytea;
ALTER TABLE auth_policy_rules ADD COLUMN audit_event_id uuid, ADD COLUMN audit_digest bytea;

-- +goose Down
ALTER TABLE auth_policy_rules DROP COLUMN audit_event_id, DROP COLUMN audit_digest;
ALTER TABLE auth_users DROP COLUMN audit_event_id, DROP COLUMN audit_digest;
