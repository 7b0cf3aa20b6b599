-- vigil:phase expand
-- +goose Up
-- The incremental state of a clean verification run (audit/chain/verifyruns.go; docs/audit.md
-- "Verification in the server"), so that a new leader resumes from the last complete run
-- instead of re-reading the whole trail: the state's JSON and its Ed25519 signature by the
-- audit checkpoint key (over "vigil-audit-verify-state-v1" 0x00 origin 0x00 state). A state
-- whose signature does not verify is ignored (a full run, and an audit event). Set once, with
-- the run's result.
ALTER TABLE audit_verifications ADD COLUMN state bytea, ADD COLUMN state_sig bytea;
-- +goose StatementBegin
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vigil_app') THEN
        GRANT UPDATE (state, state_sig) ON audit_verifications TO vigil_app;
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose Down
ALTER TABLE audit_verifications DROP COLUMN state, DROP COLUMN state_sig;
