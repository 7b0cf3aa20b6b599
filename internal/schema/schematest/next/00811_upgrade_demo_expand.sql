-- vigil:phase expand
-- +goose Up
-- A simulated next version's expand migration: additive only, so the previous binary runs on.
CREATE TABLE vigil_upgrade_demo (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    old_label text,
    new_label text
);

-- +goose Down
DROP TABLE vigil_upgrade_demo;
