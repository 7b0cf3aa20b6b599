-- +goose Up
-- Waveform blocks of an accepted upload, kept as sent: the canonical CBOR array of its
-- "waveforms" field (docs/upload-envelope.md). NULL when the upload had none.
ALTER TABLE devices_uploads ADD COLUMN waveforms bytea;

-- +goose Down
ALTER TABLE devices_uploads DROP COLUMN waveforms;
