-- vigil:phase expand
-- +goose Up
-- More domain rows tied to their events (audit/rowdigest, docs/audit.md "Rows that carry their
-- event"): break-glass grants, device enrollment links, per-patient rule settings (SpO2 scale,
-- documented oxygen) and ward NEWS2 settings. NULL in rows written before this migration:
-- verify reports them as unaudited changes until `vigil audit baseline` adopts them (or an
-- audited action rewrites them).
ALTER TABLE auth_break_glass ADD COLUMN audit_event_id uuid, ADD COLUMN audit_digest bytea;
ALTER TABLE devices_enrollment_tokens ADD COLUMN audit_event_id uuid, ADD COLUMN audit_digest bytea;
ALTER TABLE rules_patient_settings ADD COLUMN audit_event_id uuid, ADD COLUMN audit_digest bytea;
ALTER TABLE rules_ward_settings ADD COLUMN audit_event_id uuid, ADD COLUMN audit_digest bytea;

-- +goose Down
ALTER TABLE rules_ward_settings DROP COLUMN audit_event_id, DROP COLUMN audit_digest;
ALTER TABLE rules_patient_settings DROP COLUMN audit_event_id, DROP COLUMN audit_digest;
ALTER TABLE devices_enrollment_tokens DROP COLUMN audit_event_id, DROP COLUMN audit_digest;
ALTER TABLE auth_break_glass DROP COLUMN audit_event_id, DROP COLUMN audit_digest;
