-- vigil:phase expand
-- +goose Up
-- The results of the server's verification runs (audit/chain/verifyruns.go; docs/audit.md
-- "Verification in the server"): the background incremental pass and the full
-- re-verifications an auditor starts. A run is inserted when it starts and its result is
-- set once when it ends. GET /api/v1/audit/verify serves the latest.
CREATE TABLE audit_verifications (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text        NOT NULL CHECK (kind IN ('incremental', 'full')),
    started_at    timestamptz NOT NULL,
    started_by    jsonb,                -- the actor who started a full run; NULL for the background pass
    finished_at   timestamptz,          -- NULL while it runs (or if its process died)
    ok            boolean,
    tree_size     bigint,               -- the log size of the checkpoint verified against
    checkpoint_id bigint,
    events        bigint,               -- event rows verified by this run
    total_events  bigint,               -- event rows verified in all since the last full run
    findings      jsonb,
    report        jsonb,                -- the whole report (without the incremental state)
    error         text                  -- the run could not complete (database, log), or was abandoned
);
CREATE INDEX audit_verifications_finished ON audit_verifications (finished_at DESC) WHERE finished_at IS NOT NULL;

-- vigil_app (00112) got every privilege on this table by default: it may add a run and set
-- its result once, nothing else (TestApplicationRoleCannotRewriteEvents checks the catalogue).
-- +goose StatementBegin
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vigil_app') THEN
        REVOKE ALL ON audit_verifications FROM vigil_app;
        GRANT SELECT, INSERT ON audit_verifications TO vigil_app;
        GRANT UPDATE (finished_at, ok, tree_size, checkpoint_id, events, total_events, findings, report, error)
            ON audit_verifications TO vigil_app;
    END IF;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER audit_verifications_write_once BEFORE UPDATE ON audit_verifications FOR EACH ROW
    WHEN (OLD.finished_at IS NOT NULL)
    EXECUTE FUNCTION audit_write_once('the result of a finished verification');

-- +goose Down
DROP TABLE audit_verifications;
