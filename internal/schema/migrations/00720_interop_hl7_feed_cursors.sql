-- vigil:phase expand
-- +goose Up
-- The ORU feed's cursor per destination (interop/hl7/outbound.Feed): the position, in commit
-- order (core_uploads.txid, alarms.feed_txid, migration 00371), up to which every stored
-- upload and alarm change has been sent and finished (acknowledged or dead-lettered). kind 0
-- is an alarm, 1 an upload, -1 "before both" (a new cursor). The feed resumes here after a
-- restart or on the replica that takes the leadership over; it never moves back.
CREATE TABLE interop_hl7_feed_cursors (
    destination text        PRIMARY KEY,
    txid        xid8        NOT NULL,
    kind        smallint    NOT NULL CHECK (kind BETWEEN -1 AND 1),
    source_id   uuid        NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- +goose Down
DROP TABLE interop_hl7_feed_cursors;
