-- vigil:phase expand
-- +goose Up
-- Least privilege in PostgreSQL (docs/operations.md "Database roles"). vigil_app is the role
-- the running server connects as (a login role that is a member of it, not a superuser and
-- not the owner of the tables). It reads and writes the domain tables, but of the audit
-- tables it may only read and add rows and set the columns the recorder and the shipper
-- fill in after the insert, each once: no UPDATE of an event's content, no DELETE, no
-- TRUNCATE, no DDL (only the owner — the role that ran the migrations — has those). The role
-- is cluster-wide and made here if missing; a migrator that may not create roles gets a
-- notice and no grants (create the role first, see the docs).
-- +goose StatementBegin
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vigil_app') THEN
        BEGIN
            CREATE ROLE vigil_app NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL; -- made concurrently by another database's migration
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'role vigil_app does not exist and % may not create it: no grants (docs/operations.md "Database roles")', current_user;
                RETURN;
        END;
    END IF;

    GRANT USAGE ON SCHEMA public TO vigil_app;
    -- The audit trail: read and append.
    GRANT SELECT, INSERT ON audit_events, audit_batches, audit_checkpoints, audit_cosignatures,
        audit_sessions, audit_incidents, audit_log_state TO vigil_app;
    -- The columns filled in after the insert (each at most once, audit_write_once below; but
    -- queued_at, which the shipper renews when it submits a batch again).
    GRANT UPDATE (auth_mac, batch_id, batch_index, refused_at) ON audit_events TO vigil_app;
    GRANT UPDATE (queued_at, leaf_index, integrated_at, tree_size, tree_root) ON audit_batches TO vigil_app;
    GRANT UPDATE (resolved_at) ON audit_incidents TO vigil_app;
    -- Trillian's storage: the log server and sequencer run in the application (their state is
    -- checked against the stored, cosigned checkpoints).
    GRANT USAGE ON SCHEMA trillian TO vigil_app;
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA trillian TO vigil_app;
    GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA trillian TO vigil_app;
    -- Tables made before this migration that are not audit tables.
    GRANT SELECT ON installation TO vigil_app;
    IF to_regclass('goose_db_version') IS NOT NULL THEN
        GRANT SELECT ON goose_db_version TO vigil_app; -- the server checks the schema version
    END IF;
    -- Domain tables made by later migrations (and partitions made by the owner): read and
    -- write. A later migration that adds an audit table must revoke what it does not need
    -- (TestApplicationRoleCannotRewriteEvents checks every audit_* table).
    ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO vigil_app;
    ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO vigil_app;
END
$$;
-- +goose StatementEnd

-- The columns vigil_app may update are set once: a tag, a batch, a refusal, a queue/integration
-- record is never changed or cleared by the application (queued_at, the time a batch was last
-- submitted, is bookkeeping and may be renewed) (the owner is not bound: it runs
-- repairs and retention, as an event). The WHEN clauses are evaluated without calling the
-- function, so the shipper's updates (set from NULL) cost no PL/pgSQL call per row.
-- +goose StatementBegin
CREATE FUNCTION audit_write_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'USAGE') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '%: % may be set once (from NULL), and a logged event cannot be refused', TG_TABLE_NAME, TG_ARGV[0]
        USING ERRCODE = 'insufficient_privilege';
END
$$;
-- +goose StatementEnd
CREATE TRIGGER audit_events_write_once BEFORE UPDATE ON audit_events FOR EACH ROW
    WHEN ((OLD.auth_mac IS NOT NULL AND NEW.auth_mac IS DISTINCT FROM OLD.auth_mac)
       OR (OLD.batch_id IS NOT NULL AND NEW.batch_id IS DISTINCT FROM OLD.batch_id)
       OR (OLD.batch_index IS NOT NULL AND NEW.batch_index IS DISTINCT FROM OLD.batch_index)
       OR (OLD.refused_at IS NOT NULL AND NEW.refused_at IS DISTINCT FROM OLD.refused_at)
       OR (NEW.refused_at IS NOT NULL AND NEW.batch_id IS NOT NULL))
    EXECUTE FUNCTION audit_write_once('auth_mac, batch_id, batch_index, refused_at');
CREATE TRIGGER audit_batches_write_once BEFORE UPDATE ON audit_batches FOR EACH ROW
    WHEN ((OLD.leaf_index IS NOT NULL AND NEW.leaf_index IS DISTINCT FROM OLD.leaf_index)
       OR (OLD.integrated_at IS NOT NULL AND NEW.integrated_at IS DISTINCT FROM OLD.integrated_at)
       OR (OLD.tree_size IS NOT NULL AND NEW.tree_size IS DISTINCT FROM OLD.tree_size)
       OR (OLD.tree_root IS NOT NULL AND NEW.tree_root IS DISTINCT FROM OLD.tree_root))
    EXECUTE FUNCTION audit_write_once('leaf_index, integrated_at, tree_size, tree_root');
CREATE TRIGGER audit_incidents_write_once BEFORE UPDATE ON audit_incidents FOR EACH ROW
    WHEN (OLD.resolved_at IS NOT NULL AND NEW.resolved_at IS DISTINCT FROM OLD.resolved_at)
    EXECUTE FUNCTION audit_write_once('resolved_at');

-- +goose Down
DROP TRIGGER audit_incidents_write_once ON audit_incidents;
DROP TRIGGER audit_batches_write_once ON audit_batches;
DROP TRIGGER audit_events_write_once ON audit_events;
DROP FUNCTION audit_write_once();
-- +goose StatementBegin
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vigil_app') THEN
        ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM vigil_app;
        ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM vigil_app;
        REVOKE ALL ON ALL TABLES IN SCHEMA public FROM vigil_app;
        REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM vigil_app;
        REVOKE ALL ON ALL TABLES IN SCHEMA trillian FROM vigil_app;
        REVOKE ALL ON ALL SEQUENCES IN SCHEMA trillian FROM vigil_app;
        REVOKE ALL ON SCHEMA trillian FROM vigil_app;
        REVOKE ALL ON SCHEMA public FROM vigil_app;
    END IF;
END
$$;
-- +goose StatementEnd
