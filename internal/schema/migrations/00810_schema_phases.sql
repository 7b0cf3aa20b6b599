-- vigil:phase expand
-- +goose Up
-- The phase of every applied migration (internal/schema, docs/operations.md#rolling-upgrades),
-- written by `vigil migrate` as it applies each one. A binary reads it to decide whether it
-- may run on a schema migrated by a newer binary: an expand migration (additive) leaves older
-- binaries running; a contract migration (it removes what older binaries need) refuses every
-- binary whose latest migration is below compat; a breaking one (no phase declared) refuses
-- every binary that does not know it.
CREATE TABLE vigil_schema_phases (
    version    bigint      PRIMARY KEY,
    phase      text        NOT NULL CHECK (phase IN ('expand', 'contract', 'breaking')),
    compat     bigint      NOT NULL,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- The replicas of `vigil serve` running on this database, with the latest migration each
-- binary knows: `vigil migrate --phase contract` refuses to apply a contract migration while a
-- live replica (heartbeat within 30 s) would be refused by it. Rows are removed at an orderly
-- stop; a crashed replica's row goes stale.
CREATE TABLE vigil_replicas (
    id            uuid        PRIMARY KEY,
    host          text        NOT NULL,
    listen        text        NOT NULL,
    version       text        NOT NULL,
    schema_latest bigint      NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    seen_at       timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE vigil_replicas;
DROP TABLE vigil_schema_phases;
