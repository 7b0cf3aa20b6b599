-- +goose Up
-- Outbound HL7 messages that could not be delivered (interop/hl7/outbound): refused with AE,
-- still failing after the last retry, or not yet sent when the sender was closed. Each row is
-- written in the same transaction as its audit event ("hl7.oru.dead_lettered"). The message
-- holds PHI (names, MRN, vital signs), so it is stored sealed (keys' PHI envelope, associated
-- data "hl7-dead-letter/<destination>/<control id>"); its SHA-256 is the one audited.
CREATE TABLE interop_hl7_dead_letters (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination    text        NOT NULL,
    patient_key    text        NOT NULL,
    control_id     text        NOT NULL,
    message_sealed bytea       NOT NULL,
    message_sha256 bytea       NOT NULL CHECK (length(message_sha256) = 32),
    reason         text        NOT NULL,
    last_ack       text        NOT NULL DEFAULT '',
    last_error     text        NOT NULL DEFAULT '',
    attempts       integer     NOT NULL,
    created_at     timestamptz NOT NULL
);
CREATE INDEX interop_hl7_dead_letters_destination ON interop_hl7_dead_letters (destination, id);

-- +goose Down
DROP TABLE interop_hl7_dead_letters;
