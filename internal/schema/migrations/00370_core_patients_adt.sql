-- vigil:phase expand
-- +goose Up
-- Admission changes from the EHR (core/patients.go: re-admission, demographics update,
-- cancelled admission, cancelled discharge). Each patient row names the audit event of its
-- last change (last_event_id; NULL for rows last changed before this migration) and the
-- request id that made it (last_request_id: "hl7:<facility>:<control id>" for ADT), so that a
-- message re-sent after a lost ACK is recognised as applied and the row is tied to the event
-- that explains it (audit/chain cross-checks patients against their events).
ALTER TABLE core_patients ADD COLUMN last_event_id uuid;
ALTER TABLE core_patients ADD COLUMN last_request_id text NOT NULL DEFAULT '';
-- The patient's current admission was cancelled (A11): discharged at its own start.
ALTER TABLE core_patients ADD COLUMN admission_cancelled boolean NOT NULL DEFAULT false;

-- +goose Down
ALTER TABLE core_patients DROP COLUMN admission_cancelled;
ALTER TABLE core_patients DROP COLUMN last_request_id;
ALTER TABLE core_patients DROP COLUMN last_event_id;
