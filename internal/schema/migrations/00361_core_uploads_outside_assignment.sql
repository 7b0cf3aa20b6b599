-- vigil:phase expand
-- +goose Up
-- Clinical safety (issue #12, review of outside_assignment): an upload's samples taken when
-- its device was not the patient's are refused one by one (never stored for the patient)
-- while the rest of the upload is stored; this counts them (samples = stored + duplicates +
-- outside_assignment).
ALTER TABLE core_uploads ADD COLUMN outside_assignment integer NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE core_uploads DROP COLUMN outside_assignment;
