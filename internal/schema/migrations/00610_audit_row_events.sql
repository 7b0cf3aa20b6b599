-- vigil:phase expand
-- +goose Up
-- Domain rows tied to their events (audit/rowdigest, docs/audit.md "Rows that carry their
-- event"): the id of the event whose action last created or changed the row (for a user, also
-- its recovery codes and passkeys), and the SHA-256 of the row's audited content that event
-- committed to. NULL in rows written before this migration: verify reports them as unaudited
-- changes until an audited action rewrites them. (Here, after the tables of the devices,
-- core and auth areas exist.)
ALTER TABLE devices_devices ADD COLUMN audit_event_id uuid, ADD COLUMN audit_digest bytea;
ALTER TABLE devices_assignments ADD COLUMN audit_event_id uuid, ADD COLUMN audit_digest bytea;
ALTER TABLE core_patients ADD COLUMN audit_event_id uuid, ADD COLUMN audit_digest bytea;
ALTER TABLE auth_users ADD COLUMN audit_event_id uuid, ADD COLUMN audit_digest bytea;
ALTER TABLE auth_policy_rules ADD COLUMN audit_event_id uuid, ADD COLUMN audit_digest bytea;
ALTER TABLE auth_service_accounts ADD COLUMN audit_event_id uuid, ADD COLUMN audit_digest bytea;
ALTER TABLE auth_api_tokens ADD COLUMN audit_event_id uuid, ADD COLUMN audit_digest bytea;

-- +goose Down
ALTER TABLE auth_api_tokens DROP COLUMN audit_event_id, DROP COLUMN audit_digest;
ALTER TABLE auth_service_accounts DROP COLUMN audit_event_id, DROP COLUMN audit_digest;
ALTER TABLE auth_policy_rules DROP COLUMN audit_event_id, DROP COLUMN audit_digest;
ALTER TABLE auth_users DROP COLUMN audit_event_id, DROP COLUMN audit_digest;
ALTER TABLE core_patients DROP COLUMN audit_event_id, DROP COLUMN audit_digest;
ALTER TABLE devices_assignments DROP COLUMN audit_event_id, DROP COLUMN audit_digest;
ALTER TABLE devices_devices DROP COLUMN audit_event_id, DROP COLUMN audit_digest;
