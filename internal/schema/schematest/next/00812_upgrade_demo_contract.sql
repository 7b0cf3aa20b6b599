-- vigil:phase contract compat=00811
-- +goose Up
-- The contract that follows 00811: it drops the column only binaries before 00811 wrote, so
-- from now on those binaries are refused; binaries with 00811 run on.
ALTER TABLE vigil_upgrade_demo DROP COLUMN old_label;

-- +goose Down
ALTER TABLE vigil_upgrade_demo ADD COLUMN old_label text;
