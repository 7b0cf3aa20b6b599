-- +goose Up
-- Retention of accepted uploads' rows (devices.Service.EnforceRetention) finds the oldest
-- rows by receive time. Rows arrive in receive-time order, so a BRIN index serves that scan
-- at almost no cost to inserts (a few pages for the whole table, summarized by autovacuum).
CREATE INDEX devices_uploads_received_at ON devices_uploads USING brin (received_at) WITH (autosummarize = on);

-- +goose Down
DROP INDEX devices_uploads_received_at;
