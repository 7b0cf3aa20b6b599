-- +goose Up
-- Retention of accepted uploads' rows (devices.Service.EnforceRetention) finds the oldest
-- rows by receive time. Rows arrive in receive-time order, so a BRIN index serves that scan
-- at almost no cost to inserts (a few pages for the whole table, summarized by autovacuum).
CREATE INDEX devices_uploads_received_at ON devices_uploads USING brin (received_at) WITH (autosummarize = on);
-- Waveforms are removed long before their rows (90 against 365 days by default): this
-- partial index holds only the rows that still have waveforms, so the hourly pass does not
-- rescan the months of rows whose waveforms are already gone, and uploads without waveforms
-- never touch it.
CREATE INDEX devices_uploads_waveforms_received_at ON devices_uploads (received_at) WHERE waveforms IS NOT NULL;

-- +goose Down
DROP INDEX devices_uploads_waveforms_received_at;
DROP INDEX devices_uploads_received_at;
