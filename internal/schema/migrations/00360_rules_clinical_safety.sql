-- +goose Up
-- Clinical safety (issue #12).
--
-- A patient documented as on supplemental oxygen is scored as on oxygen by NEWS2 when no
-- oxygen observation is fresh (NULL: not documented).
ALTER TABLE rules_patient_settings ADD COLUMN on_oxygen boolean;

-- Per-ward NEWS2 settings: the parameters the ward's devices do not provide and staff chart
-- by hand (e.g. consciousness), and how long such a charted value stays current.
CREATE TABLE rules_ward_settings (
    ward_id                 uuid PRIMARY KEY,
    charted                 text[] NOT NULL,
    charted_max_age_seconds bigint NOT NULL CHECK (charted_max_age_seconds > 0),
    updated_at              timestamptz NOT NULL,
    updated_by              text NOT NULL
);

-- Extreme values that can be physiological alarm at the highest priority (critical), and the
-- parameters without a low limit get one.
INSERT INTO rules_versions (rule_id, version, name, kind, enabled, definition, created_at, created_by, reason) VALUES
('hr-low', 2, 'Heart rate low', 'threshold', true,
 '{"code":"8867-4","direction":"below","levels":[{"limit":50,"severity":"medium"},{"limit":40,"severity":"high"},{"limit":30,"severity":"critical"}],"hysteresis":3,"min_duration":"30s"}',
 now(), 'system', 'issue #12: an extreme bradycardia (HR 15) is critical'),
('hr-high', 2, 'Heart rate high', 'threshold', true,
 '{"code":"8867-4","direction":"above","levels":[{"limit":120,"severity":"medium"},{"limit":140,"severity":"high"},{"limit":180,"severity":"critical"}],"hysteresis":5,"min_duration":"30s"}',
 now(), 'system', 'issue #12: an extreme tachycardia is critical'),
('sbp-low', 2, 'Systolic blood pressure low', 'threshold', true,
 '{"code":"8480-6","direction":"below","levels":[{"limit":100,"severity":"medium"},{"limit":90,"severity":"high"},{"limit":70,"severity":"critical"}],"hysteresis":3,"min_duration":"1m0s"}',
 now(), 'system', 'issue #12: a systolic pressure below 70 mmHg is critical'),
('rr-low', 1, 'Respiratory rate low', 'threshold', true,
 '{"code":"9279-1","direction":"below","levels":[{"limit":9,"severity":"high"},{"limit":6,"severity":"critical"}],"hysteresis":1,"min_duration":"30s"}',
 now(), 'system', 'issue #12: bradypnoea had no rule (RR 2 /min raised nothing)'),
('temp-low', 1, 'Temperature low', 'threshold', true,
 '{"code":"8310-5","direction":"below","levels":[{"limit":35,"severity":"medium"},{"limit":32,"severity":"high"},{"limit":28,"severity":"critical"}],"hysteresis":0.2,"min_duration":"1m0s"}',
 now(), 'system', 'issue #12: hypothermia had no rule (24 °C raised nothing)'),
('news2', 4, 'NEWS2 (RCP 2017)', 'news2', true,
 '{"max_age":"1h0m0s","assume_air":true,"assume_alert":false,"alarm_on_low":false,"hold":"5m0s","incomplete_after":"10m0s","worsen_by":2}',
 now(), 'system', 'issue #12: a missing parameter gives a partial score (a lower bound that alarms by its band) and, after 10 minutes, a "news2-incomplete" condition; +2 points re-alert an acknowledged alarm');

-- +goose Down
ALTER TABLE rules_versions DISABLE TRIGGER rules_versions_no_update;
DELETE FROM rules_versions WHERE created_by = 'system' AND (rule_id, version) IN
    (('hr-low', 2), ('hr-high', 2), ('sbp-low', 2), ('rr-low', 1), ('temp-low', 1), ('news2', 4));
ALTER TABLE rules_versions ENABLE TRIGGER rules_versions_no_update;
DROP TABLE rules_ward_settings;
ALTER TABLE rules_patient_settings DROP COLUMN on_oxygen;
