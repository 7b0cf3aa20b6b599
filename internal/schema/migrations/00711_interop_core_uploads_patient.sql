-- vigil:phase expand
-- +goose Up
-- A patient's uploads by time. The HL7 ADT^A11 (cancel admit) check asks whether anything was
-- stored for the patient since the admission (core.Service.CancelAdmission, called by
-- interop/hl7/inbound); without this index it read every upload of every patient in each
-- partition since the admission (1,152,000 uploads of 200 patients: ≈ 280 ms, 11,000
-- buffers; with it ≈ 0.06 ms, 3 buffers: docs/benchmarks.md, "HL7 A11 check"). It also serves
-- FHIR `Provenance?patient=` (interop/fhir/api), newest first. One more index entry per
-- upload. Additive only.
CREATE INDEX core_uploads_patient ON core_uploads (patient_id, received_at);

-- +goose Down
DROP INDEX core_uploads_patient;
