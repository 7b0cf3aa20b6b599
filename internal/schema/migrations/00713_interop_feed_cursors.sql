-- vigil:phase expand
-- +goose Up
-- Durable readers of the stored rows in commit order (interop/storedfeed): the FHIR
-- Subscriptions' dispatcher reads the uploads (core_uploads.txid, migration 00371) and the
-- alarms' openings in the order their transactions committed, and resumes after a restart.
--  * alarms.opened_txid: the transaction that opened (inserted) the alarm, set by a trigger;
--    an alarm changed after its opening keeps it (feed_txid moves, this does not). Alarms
--    opened before this migration have none (NULL) and are not read by it.
--  * interop_feed_cursors: one row per reader (name): the position up to which every row is
--    handled. kind 0 is an alarm, 1 an upload, -1 "before both" (a new cursor). It never
--    moves back.
ALTER TABLE alarms ADD COLUMN opened_txid xid8;
CREATE INDEX alarms_opened_txid ON alarms (opened_txid, id) WHERE opened_txid IS NOT NULL;

-- +goose StatementBegin
CREATE FUNCTION alarms_set_opened_txid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.opened_txid := pg_current_xact_id();
    RETURN NEW;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER alarms_opened_txid BEFORE INSERT ON alarms
    FOR EACH ROW EXECUTE FUNCTION alarms_set_opened_txid();

CREATE TABLE interop_feed_cursors (
    name       text        PRIMARY KEY,
    txid       xid8        NOT NULL,
    kind       smallint    NOT NULL CHECK (kind BETWEEN -1 AND 1),
    source_id  uuid        NOT NULL,
    updated_at timestamptz NOT NULL
);

-- +goose Down
DROP TABLE interop_feed_cursors;
DROP TRIGGER alarms_opened_txid ON alarms;
DROP FUNCTION alarms_set_opened_txid();
DROP INDEX alarms_opened_txid;
ALTER TABLE alarms DROP COLUMN opened_txid;
