-- vigil:phase expand
-- +goose Up
-- Several `vigil serve` replicas on one database (issue #18). Each patient's rule evaluation
-- is owned by one replica at a time: patients are hashed into 64 buckets (core/rules
-- BucketOf), and a replica evaluates the patients of the buckets it holds a lease on.
-- core/rules/lease.go and docs/clinical.md describe the protocol.

-- Replicas alive: each renews seen_at every few seconds; a replica not seen for a lease's
-- time to live is gone, and the buckets are shared among the others.
CREATE TABLE rules_replicas (
    replica    text        PRIMARY KEY,
    started_at timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL
);

-- One lease per bucket. token is the fencing token: it grows by one each time the bucket
-- changes hands, and every write of the engine checks, under a share lock on this row, that
-- the bucket is still held with the token its state was loaded under.
CREATE TABLE rules_leases (
    bucket     integer     PRIMARY KEY CHECK (bucket >= 0 AND bucket < 64),
    owner      text        NOT NULL DEFAULT '',
    token      bigint      NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO rules_leases (bucket) SELECT generate_series(0, 63);

-- Work for the owner of a patient's bucket, written by another replica: the observations
-- of an upload it committed (kind 'observations', in the upload's own transaction), the
-- release of a discharged patient (kind 'release'), or a change of the patient's rule
-- settings (kind 'settings', in the change's transaction). The owner evaluates and deletes them.
CREATE TABLE rules_inbox (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bucket     integer     NOT NULL,
    patient_id uuid        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('observations', 'release', 'settings')),
    body       jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rules_inbox_bucket ON rules_inbox (bucket, id);

-- +goose Down
DROP TABLE rules_inbox;
DROP TABLE rules_leases;
DROP TABLE rules_replicas;
