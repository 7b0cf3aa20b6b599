-- +goose Up
-- Witness cosignatures (C2SP tlog-cosignature) of the audit checkpoints: one note signature
-- line per checkpoint and witness, as the witness returned it from add-checkpoint.
CREATE TABLE audit_cosignatures (
    checkpoint_id bigint NOT NULL REFERENCES audit_checkpoints(id),
    witness       text NOT NULL,        -- the witness's key name
    signature     text NOT NULL,        -- "— <name> <base64>\n"
    cosigned_at   timestamptz NOT NULL,
    PRIMARY KEY (checkpoint_id, witness)
);

-- +goose Down
DROP TABLE audit_cosignatures;
