-- vigil:phase expand
-- +goose Up
-- What a durable feed of the stored uploads and alarms needs (interop/hl7/outbound: the ORU
-- feed reads them in commit order, resuming where it stopped):
--  * txid, the id of the transaction that wrote the row (pg_current_xact_id(), by default),
--    so that a reader that takes only rows whose transaction is older than every transaction
--    still running (pg_snapshot_xmin) never skips a row that commits late. Rows written
--    before this migration have none (NULL) and are not fed. Adding the column without a
--    default and then setting one rewrites nothing.
--  * first/last_effective_at, the effective times of the observations stored from an upload,
--    so they are found by (patient, time range) through the primary key.
--  * alarms.feed_txid, set by a trigger to the writing transaction whenever an alarm is
--    opened or its state or severity changes (not on reminders, re-triggers or escalation
--    tiers, which are Vigil's own paging).
ALTER TABLE core_uploads ADD COLUMN txid xid8;
ALTER TABLE core_uploads ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
ALTER TABLE core_uploads ADD COLUMN first_effective_at timestamptz;
ALTER TABLE core_uploads ADD COLUMN last_effective_at timestamptz;
CREATE INDEX core_uploads_txid ON core_uploads (txid, id) WHERE txid IS NOT NULL;

ALTER TABLE alarms ADD COLUMN feed_txid xid8;
CREATE INDEX alarms_feed_txid ON alarms (feed_txid, id) WHERE feed_txid IS NOT NULL;

-- +goose StatementBegin
CREATE FUNCTION alarms_set_feed_txid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state OR NEW.severity IS DISTINCT FROM OLD.severity THEN
        NEW.feed_txid := pg_current_xact_id();
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER alarms_feed_txid BEFORE INSERT OR UPDATE ON alarms
    FOR EACH ROW EXECUTE FUNCTION alarms_set_feed_txid();

-- +goose Down
DROP TRIGGER alarms_feed_txid ON alarms;
DROP FUNCTION alarms_set_feed_txid();
DROP INDEX alarms_feed_txid;
ALTER TABLE alarms DROP COLUMN feed_txid;
DROP INDEX core_uploads_txid;
ALTER TABLE core_uploads DROP COLUMN last_effective_at;
ALTER TABLE core_uploads DROP COLUMN first_effective_at;
ALTER TABLE core_uploads DROP COLUMN txid;
