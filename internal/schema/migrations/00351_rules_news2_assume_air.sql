-- +goose Up
-- NEWS2 version 2: most bedside monitors do not report oxygen delivery, so with version 1 no
-- NEWS2 was ever computed for their patients. Version 2 scores "air" when no oxygen
-- observation is fresh; the score records it (assumed_air) and the alarm message says so.
-- Consciousness is still required (assume_alert false).
INSERT INTO rules_versions (rule_id, version, name, kind, enabled, definition, created_at, created_by, reason) VALUES
('news2', 2, 'NEWS2 (RCP 2017)', 'news2', true,
 '{"max_age":"1h0m0s","assume_air":true,"assume_alert":false,"alarm_on_low":false}',
 now(), 'system', 'monitors rarely report oxygen delivery: score air when unknown, flagged in the score');

-- +goose Down
-- Rule versions are immutable; only a schema downgrade may remove this one.
ALTER TABLE rules_versions DISABLE TRIGGER rules_versions_no_update;
DELETE FROM rules_versions WHERE rule_id = 'news2' AND version = 2 AND created_by = 'system';
ALTER TABLE rules_versions ENABLE TRIGGER rules_versions_no_update;
