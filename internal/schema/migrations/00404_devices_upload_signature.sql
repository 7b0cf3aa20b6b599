-- vigil:phase expand
-- +goose Up
-- The device's own Ed25519 signature over an accepted upload's canonical body, and the time
-- the device says it signed (its sent_at), kept with the upload's row so that the evidence of
-- who sent a reading travels with it (the FHIR Provenance's signature, docs/interop.md).
-- Nullable: uploads accepted before this migration have none. Removed with the row by the
-- upload-row retention.
ALTER TABLE devices_uploads
    ADD COLUMN signature bytea CHECK (signature IS NULL OR length(signature) = 64),
    ADD COLUMN signed_at timestamptz;

-- +goose Down
ALTER TABLE devices_uploads DROP COLUMN signed_at, DROP COLUMN signature;
