-- +goose Up
-- The device registry: devices, their public keys (versioned), their patient assignments
-- (with history), one-time enrollment tokens, and the accepted uploads (for idempotent
-- re-sends and receipts). Status changes and key rotations take effect at once: the upload
-- path re-checks status, key version and sequence number in the same UPDATE that advances
-- the sequence, inside the ingest transaction.
CREATE TABLE devices_devices (
    id          uuid PRIMARY KEY,
    serial      text NOT NULL UNIQUE,
    model       text NOT NULL,
    firmware    text NOT NULL,
    status      text NOT NULL CHECK (status IN ('active','suspended','decommissioned')),
    key_version bigint NOT NULL DEFAULT 0,   -- current key version; 0 = not enrolled yet
    last_seq    bigint NOT NULL DEFAULT 0,   -- highest accepted upload sequence number
    patient_id  uuid,                        -- current assignment (history in devices_assignments)
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE devices_keys (
    device_id   uuid NOT NULL REFERENCES devices_devices(id),
    version     bigint NOT NULL CHECK (version >= 1),
    public_key  bytea NOT NULL UNIQUE CHECK (length(public_key) = 32),
    created_at  timestamptz NOT NULL,
    retired_at  timestamptz,
    PRIMARY KEY (device_id, version)
);

CREATE TABLE devices_assignments (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   uuid NOT NULL REFERENCES devices_devices(id),
    patient_id  uuid,                        -- NULL: the device was unassigned
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz,
    actor_id    text NOT NULL
);
CREATE INDEX devices_assignments_device ON devices_assignments (device_id, started_at);

-- Only the SHA-256 of a token is stored; the token itself is shown once to the administrator.
CREATE TABLE devices_enrollment_tokens (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    device_id   uuid NOT NULL REFERENCES devices_devices(id),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);

CREATE TABLE devices_uploads (
    hash           bytea PRIMARY KEY CHECK (length(hash) = 32),
    device_id      uuid NOT NULL,
    seq            bigint NOT NULL,
    key_version    bigint NOT NULL,
    received_at    timestamptz NOT NULL,
    audit_event_id uuid NOT NULL,
    transport      text NOT NULL,
    receipt        bytea NOT NULL,            -- canonical receipt body (CBOR), re-signed on re-send
    UNIQUE (device_id, seq)
);

-- +goose Down
DROP TABLE devices_uploads;
DROP TABLE devices_enrollment_tokens;
DROP TABLE devices_assignments;
DROP TABLE devices_keys;
DROP TABLE devices_devices;
