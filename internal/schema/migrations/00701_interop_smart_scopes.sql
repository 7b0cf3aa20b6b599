-- vigil:phase expand
-- +goose Up
-- SMART on FHIR scopes of API tokens (interop/fhir/api, server/fhir_smart.go): a token with a
-- row here reads through /fhir/R4 only the resource types its scopes name ("patient/*.read",
-- "user/Observation.read", …), and with patient-context scopes only the patient named here;
-- always within what its roles allow by the policy. Written with its audit event
-- ("fhir.smart_scopes.set") in one transaction; removed when the scopes are cleared.
CREATE TABLE interop_smart_scopes (
    token_id   uuid        PRIMARY KEY,
    scopes     text        NOT NULL,      -- space-separated, as granted
    patient_id uuid,                      -- the launch patient of patient/ scopes
    granted_at timestamptz NOT NULL,
    granted_by text        NOT NULL       -- the administrator's audit actor id
);

-- +goose Down
DROP TABLE interop_smart_scopes;
