-- +goose Up
-- sbp-fall version 2: a fall wavering around 30 mm[Hg] within the window opened and resolved
-- the alarm repeatedly in the demo. Version 2 clears only after the change has stayed within
-- the limit for 5 minutes.
INSERT INTO rules_versions (rule_id, version, name, kind, enabled, definition, created_at, created_by, reason) VALUES
('sbp-fall', 2, 'Systolic blood pressure falling fast', 'rate', true,
 '{"code":"8480-6","direction":"below","max_change":30,"window":"15m0s","severity":"high","hold":"5m0s"}',
 now(), 'system', 'hold 5 minutes within the limit before clearing: no flapping around the limit');

-- +goose Down
-- Rule versions are immutable; only a schema downgrade may remove this one.
ALTER TABLE rules_versions DISABLE TRIGGER rules_versions_no_update;
DELETE FROM rules_versions WHERE rule_id = 'sbp-fall' AND version = 2 AND created_by = 'system';
ALTER TABLE rules_versions ENABLE TRIGGER rules_versions_no_update;
