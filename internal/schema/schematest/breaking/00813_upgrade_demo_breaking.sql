-- +goose Up
-- A migration that declares no phase: breaking, applied with every replica stopped.
CREATE TABLE vigil_upgrade_breaking (id bigint PRIMARY KEY);

-- +goose Down
DROP TABLE vigil_upgrade_breaking;
