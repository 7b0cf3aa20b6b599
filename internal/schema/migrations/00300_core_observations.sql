-- +goose Up
-- Clinical core time series. Every table here is partitioned by time (native declarative
-- range partitioning, one partition per UTC day, named <table>_pYYYYMMDD). Partitions are
-- created ahead of time by core.Service.MaintainPartitions and on demand by ingest; retention
-- drops whole partitions (audited). No default partition: a row outside every partition is an
-- error, never silently parked.

-- One row per accepted upload: the provenance every observation points back to.
CREATE TABLE core_uploads (
    id             uuid        NOT NULL,          -- = the upload's audit event id (UUIDv7)
    received_at    timestamptz NOT NULL,
    patient_id     uuid        NOT NULL,
    device_id      text        NOT NULL,
    key_id         text        NOT NULL,
    upload_hash    bytea       NOT NULL CHECK (length(upload_hash) = 32),
    sequence       bigint      NOT NULL,
    transport      text        NOT NULL,
    samples        integer     NOT NULL,          -- samples in the upload
    stored         integer     NOT NULL,          -- observations stored from it
    flagged        integer     NOT NULL,          -- of which flagged as artifacts
    duplicates     integer     NOT NULL,          -- samples not stored: already stored
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);

-- Device observations, normalized to the canonical UCUM unit of their LOINC code (the unit
-- is not stored per row: it is a function of the code, see core/codes.go and /api/v1/codes).
-- flags: bit 0 (1) = artifact (outside the physiological plausibility range, kept but flagged).
-- Deduplication key: (patient_id, code, effective_at); the first stored sample wins. The code
-- is compared bytewise (COLLATE "C"): cheaper index maintenance than a locale collation.
CREATE TABLE core_observations (
    patient_id   uuid             NOT NULL,
    code         text COLLATE "C" NOT NULL,
    effective_at timestamptz      NOT NULL,
    value        double precision NOT NULL,
    flags        smallint         NOT NULL DEFAULT 0,
    upload_id    uuid             NOT NULL,
    PRIMARY KEY (patient_id, code, effective_at)
) PARTITION BY RANGE (effective_at);

-- +goose Down
DROP TABLE core_observations;
DROP TABLE core_uploads;
