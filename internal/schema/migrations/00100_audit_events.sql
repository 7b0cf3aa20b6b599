-- +goose Up
-- The audit outbox: one row per audited action, written in the action's own transaction.
-- Plaintext identifiers (actor_id, object_id, request_id, source_addr), the payload (which may
-- hold PHI) and the salt can be erased together under a retention policy; the commitments
-- (HMAC-SHA256 keyed by the salt, see docs/audit.md) stay, and they are what the log holds,
-- so every proof stays valid after erasure.
CREATE TABLE audit_events (
    id                 uuid PRIMARY KEY,
    seq                bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    occurred_at        timestamptz NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now(),
    actor_kind         text NOT NULL CHECK (actor_kind IN ('user','device','service')),
    actor_id           text,
    actor_auth         text NOT NULL,
    action             text NOT NULL,
    object_type        text NOT NULL,
    object_id          text,
    outcome            text NOT NULL CHECK (outcome IN ('success','rejected','failure')),
    reason             text NOT NULL,
    request_id         text,
    source_addr        text,
    payload            json,  -- json, not jsonb: the exact text is what the commitment covers
    salt               bytea CHECK (length(salt) = 32),
    actor_id_c         bytea NOT NULL CHECK (length(actor_id_c) = 32),
    object_id_c        bytea NOT NULL CHECK (length(object_id_c) = 32),
    request_id_c       bytea NOT NULL CHECK (length(request_id_c) = 32),
    source_addr_c      bytea NOT NULL CHECK (length(source_addr_c) = 32),
    payload_commitment bytea NOT NULL CHECK (length(payload_commitment) = 32),
    -- Set by the shipper when the event is sealed into a batch (NULL = pending).
    batch_id           uuid,
    batch_index        integer
);
CREATE INDEX audit_events_occurred_at ON audit_events (occurred_at);
CREATE INDEX audit_events_action ON audit_events (action, occurred_at);
CREATE INDEX audit_events_pending ON audit_events (seq) WHERE batch_id IS NULL;

-- One row per sealed batch: the Trillian leaf is (version, id, count, root). event_ids and
-- event_hashes (16 and 32 bytes per event, in batch order) let verify name every event of a
-- batch, even one whose row was deleted.
CREATE TABLE audit_batches (
    id            uuid PRIMARY KEY,
    seq           bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    sealed_at     timestamptz NOT NULL,
    count         integer NOT NULL CHECK (count > 0),
    root          bytea NOT NULL CHECK (length(root) = 32),
    event_ids     bytea NOT NULL,
    event_hashes  bytea NOT NULL,
    leaf_value    bytea NOT NULL,
    queued_at     timestamptz,
    leaf_index    bigint UNIQUE,
    integrated_at timestamptz,
    tree_size     bigint,
    tree_root     bytea
);
CREATE INDEX audit_batches_unintegrated ON audit_batches (seq) WHERE leaf_index IS NULL;

-- The Trillian tree this installation logs to (created on first start).
CREATE TABLE audit_log_state (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    tree_id    bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Signed checkpoints (C2SP tlog-checkpoint signed notes), each stored only after it was
-- proven consistent with the previous one; the proof is kept so packs verify offline.
CREATE TABLE audit_checkpoints (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at        timestamptz NOT NULL,
    tree_size         bigint NOT NULL,
    root_hash         bytea NOT NULL CHECK (length(root_hash) = 32),
    note              text NOT NULL,
    key_id            text NOT NULL,
    prev_size         bigint,
    consistency_proof bytea NOT NULL DEFAULT ''::bytea
);

-- Loud incidents of the audit chain (an inconsistent log): readiness stays red while any
-- incident is unresolved.
CREATE TABLE audit_incidents (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL,
    kind        text NOT NULL,
    detail      text NOT NULL,
    resolved_at timestamptz
);

-- +goose Down
DROP TABLE audit_incidents;
DROP TABLE audit_checkpoints;
DROP TABLE audit_log_state;
DROP TABLE audit_batches;
DROP TABLE audit_events;
