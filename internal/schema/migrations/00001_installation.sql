-- +goose Up
-- One row that identifies this Vigil installation. Its id names the installation in audit
-- checkpoints (the log origin) and in evidence packs, so it is made once and never changes.
CREATE TABLE installation (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    id         uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO installation DEFAULT VALUES;

-- +goose Down
DROP TABLE installation;
