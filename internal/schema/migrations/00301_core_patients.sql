-- +goose Up
-- Sites, wards, patients and care teams. Identifying data (PHI: MRN, name, birth date, …) is
-- never stored in clear: phi_sealed holds it envelope-encrypted (keys PHI sealer, associated
-- data = "patient/<id>/phi"; the ciphertext names the key version that sealed it, so keys can
-- be rotated and rows rewrapped), and mrn_index is an
-- HMAC blind index of the normalized MRN so that a patient can be found by MRN without
-- decrypting anything. Everything else here is operational, not identifying.
CREATE TABLE core_sites (
    id         uuid PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL
);

CREATE TABLE core_wards (
    id         uuid PRIMARY KEY,
    site_id    uuid NOT NULL REFERENCES core_sites (id),
    name       text NOT NULL,
    created_at timestamptz NOT NULL,
    UNIQUE (site_id, name)
);

CREATE TABLE core_patients (
    id            uuid PRIMARY KEY,
    ward_id       uuid REFERENCES core_wards (id),
    mrn_index     bytea NOT NULL UNIQUE,
    phi_sealed    bytea NOT NULL,
    admitted_at   timestamptz NOT NULL,
    discharged_at timestamptz,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX core_patients_ward ON core_patients (ward_id) WHERE discharged_at IS NULL;

-- Care team: which clinicians look after which patient (the portal's authorization uses it).
CREATE TABLE core_care_team (
    patient_id   uuid NOT NULL REFERENCES core_patients (id) ON DELETE CASCADE,
    clinician_id text NOT NULL,
    role         text NOT NULL,
    added_at     timestamptz NOT NULL,
    PRIMARY KEY (patient_id, clinician_id)
);
CREATE INDEX core_care_team_clinician ON core_care_team (clinician_id);

-- +goose Down
DROP TABLE core_care_team;
DROP TABLE core_patients;
DROP TABLE core_wards;
DROP TABLE core_sites;
