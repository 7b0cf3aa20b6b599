-- +goose Up
-- NEWS2 version 3: scored at each moment, a score wavering across a band limit (e.g. 4/5 with
-- physiological noise) opened and resolved alarms every few seconds in the demo. Version 3
-- de-escalates or resolves only after the lower response has held for 5 minutes; a worse
-- response still escalates at once.
INSERT INTO rules_versions (rule_id, version, name, kind, enabled, definition, created_at, created_by, reason) VALUES
('news2', 3, 'NEWS2 (RCP 2017)', 'news2', true,
 '{"max_age":"1h0m0s","assume_air":true,"assume_alert":false,"alarm_on_low":false,"hold":"5m0s"}',
 now(), 'system', 'hold a lower response 5 minutes before de-escalating or resolving: no flapping at band limits');

-- +goose Down
-- Rule versions are immutable; only a schema downgrade may remove this one.
ALTER TABLE rules_versions DISABLE TRIGGER rules_versions_no_update;
DELETE FROM rules_versions WHERE rule_id = 'news2' AND version = 3 AND created_by = 'system';
ALTER TABLE rules_versions ENABLE TRIGGER rules_versions_no_update;
