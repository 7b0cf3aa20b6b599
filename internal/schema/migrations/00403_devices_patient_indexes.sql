-- vigil:phase expand
-- +goose Up
-- The portal's patient view and ward overview read a patient's device assignments and the
-- devices now on a patient (devices.Service.PatientAssignments, AssignedTo): without these
-- indexes each read scanned both tables. Additive only.
CREATE INDEX devices_assignments_patient ON devices_assignments (patient_id, started_at);
CREATE INDEX devices_devices_patient ON devices_devices (patient_id) WHERE patient_id IS NOT NULL;

-- +goose Down
DROP INDEX devices_devices_patient;
DROP INDEX devices_assignments_patient;
