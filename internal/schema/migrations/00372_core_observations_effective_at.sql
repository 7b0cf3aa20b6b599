-- vigil:phase expand
-- +goose Up
-- Observation searches without a patient (FHIR `Observation?_sort=-date` by a user who sees
-- many patients, interop/fhir/api) are ordered by effective time alone. Without this index
-- every matching row of every partition in the date range is read and sorted to return the
-- newest page; with it, each partition's index is walked from the newest end and merged
-- (docs/benchmarks.md, "Observation searches without a patient"). It costs one more index
-- entry per stored observation (docs/benchmarks.md gives the ingest figures).
CREATE INDEX core_observations_effective_at ON core_observations (effective_at);

-- +goose Down
DROP INDEX core_observations_effective_at;
