-- +goose Up
-- Clinical rules (core/rules). A rule version is immutable: a change is a new row, never an
-- UPDATE (the trigger below refuses updates and deletes). The current version of a rule is the
-- one with the highest version number.
CREATE TABLE rules_versions (
    rule_id     text NOT NULL CHECK (rule_id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    version     integer NOT NULL CHECK (version >= 1),
    name        text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('threshold','rate','news2','anomaly','nodata')),
    enabled     boolean NOT NULL,
    definition  jsonb NOT NULL,
    created_at  timestamptz NOT NULL,
    created_by  text NOT NULL,
    reason      text NOT NULL CHECK (reason <> ''),
    PRIMARY KEY (rule_id, version)
);

-- +goose StatementBegin
CREATE FUNCTION rules_versions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'rule versions are immutable: create a new version instead';
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER rules_versions_no_update BEFORE UPDATE OR DELETE ON rules_versions
    FOR EACH ROW EXECUTE FUNCTION rules_versions_immutable();

-- Per-patient rule settings (NEWS2 SpO2 scale 2 is a clinician's decision per patient).
CREATE TABLE rules_patient_settings (
    patient_id  uuid PRIMARY KEY,
    spo2_scale  integer NOT NULL CHECK (spo2_scale IN (1, 2)),
    updated_at  timestamptz NOT NULL,
    updated_by  text NOT NULL
);

-- Checkpoint of each patient's in-memory rule state, written with every alarm transition of
-- the patient and periodically; evaluated_through is the time of the newest observation the
-- state includes (a restart replays newer ones).
CREATE TABLE rules_patient_state (
    patient_id        uuid PRIMARY KEY,
    evaluated_through timestamptz NOT NULL,
    state             jsonb NOT NULL,
    updated_at        timestamptz NOT NULL
);

-- NEWS2 scores: derived observations with their components.
CREATE TABLE rules_news2 (
    id            uuid PRIMARY KEY,
    patient_id    uuid NOT NULL,
    effective_at  timestamptz NOT NULL,
    total         integer NOT NULL CHECK (total BETWEEN 0 AND 20),
    band          text NOT NULL CHECK (band IN ('low','low_medium','medium','high')),
    components    jsonb NOT NULL,
    rule_id       text NOT NULL,
    rule_version  integer NOT NULL,
    recorded_at   timestamptz NOT NULL
);
CREATE INDEX rules_news2_patient ON rules_news2 (patient_id, effective_at);

-- Alarms (core/alarms). At most one open (not resolved) alarm per patient and rule.
CREATE TABLE alarms (
    id                   uuid PRIMARY KEY,
    patient_id           uuid NOT NULL,
    rule_id              text NOT NULL,
    rule_version         integer NOT NULL,
    state                text NOT NULL CHECK (state IN ('active','acknowledged','resolved')),
    severity             integer NOT NULL CHECK (severity BETWEEN 1 AND 4),
    peak_severity        integer NOT NULL CHECK (peak_severity BETWEEN 1 AND 4),
    message              text NOT NULL,
    detail               jsonb,
    opened_at            timestamptz NOT NULL,
    last_triggered_at    timestamptz NOT NULL,
    trigger_count        integer NOT NULL,
    tier                 integer NOT NULL DEFAULT 0,
    acked_by             text NOT NULL DEFAULT '',
    acked_at             timestamptz,
    silenced_by          text NOT NULL DEFAULT '',
    silenced_until       timestamptz,
    silence_reason       text NOT NULL DEFAULT '',
    next_escalation_at   timestamptz,
    next_reminder_at     timestamptz,
    reminder_count       integer NOT NULL DEFAULT 0,
    reminder_interval_ms bigint NOT NULL DEFAULT 0,
    resolved_at          timestamptz,
    resolved_by          text NOT NULL DEFAULT '',
    resolve_reason       text NOT NULL DEFAULT '',
    updated_at           timestamptz NOT NULL,
    revision             bigint NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX alarms_one_open ON alarms (patient_id, rule_id) WHERE state <> 'resolved';
CREATE INDEX alarms_opened ON alarms (opened_at DESC);
CREATE INDEX alarms_patient ON alarms (patient_id, opened_at DESC);
CREATE INDEX alarms_due_escalation ON alarms (next_escalation_at) WHERE state = 'active';
CREATE INDEX alarms_due_reminder ON alarms (next_reminder_at) WHERE state = 'active';
CREATE INDEX alarms_due_silence ON alarms (silenced_until) WHERE state <> 'resolved' AND silenced_until IS NOT NULL;

-- The default rule set, version 1 of each rule.
INSERT INTO rules_versions (rule_id, version, name, kind, enabled, definition, created_at, created_by, reason) VALUES
('hr-high', 1, 'Heart rate high', 'threshold', true,
 '{"code":"8867-4","direction":"above","levels":[{"limit":120,"severity":"medium"},{"limit":140,"severity":"high"}],"hysteresis":5,"min_duration":"30s"}',
 now(), 'system', 'initial default rule set'),
('hr-low', 1, 'Heart rate low', 'threshold', true,
 '{"code":"8867-4","direction":"below","levels":[{"limit":50,"severity":"medium"},{"limit":40,"severity":"high"}],"hysteresis":3,"min_duration":"30s"}',
 now(), 'system', 'initial default rule set'),
('spo2-low', 1, 'SpO2 low', 'threshold', true,
 '{"code":"59408-5","direction":"below","levels":[{"limit":92,"severity":"medium"},{"limit":88,"severity":"high"},{"limit":85,"severity":"critical"}],"hysteresis":1,"min_duration":"30s"}',
 now(), 'system', 'initial default rule set'),
('sbp-low', 1, 'Systolic blood pressure low', 'threshold', true,
 '{"code":"8480-6","direction":"below","levels":[{"limit":100,"severity":"medium"},{"limit":90,"severity":"high"}],"hysteresis":3,"min_duration":"1m0s"}',
 now(), 'system', 'initial default rule set'),
('temp-high', 1, 'Temperature high', 'threshold', true,
 '{"code":"8310-5","direction":"above","levels":[{"limit":38,"severity":"low"},{"limit":39,"severity":"medium"}],"hysteresis":0.2,"min_duration":"0s"}',
 now(), 'system', 'initial default rule set'),
('rr-high', 1, 'Respiratory rate high', 'threshold', true,
 '{"code":"9279-1","direction":"above","levels":[{"limit":24,"severity":"medium"},{"limit":30,"severity":"high"}],"hysteresis":2,"min_duration":"30s"}',
 now(), 'system', 'initial default rule set'),
('sbp-fall', 1, 'Systolic blood pressure falling fast', 'rate', true,
 '{"code":"8480-6","direction":"below","max_change":30,"window":"15m0s","severity":"high"}',
 now(), 'system', 'initial default rule set'),
('hr-anomaly', 1, 'Heart rate unusual for this patient', 'anomaly', true,
 '{"code":"8867-4","alpha":0.05,"z":4,"warmup":30,"clear_after":5,"min_stddev":2,"severity":"low"}',
 now(), 'system', 'initial default rule set'),
('news2', 1, 'NEWS2 (RCP 2017)', 'news2', true,
 '{"max_age":"1h0m0s","assume_air":false,"assume_alert":false,"alarm_on_low":false}',
 now(), 'system', 'initial default rule set'),
('nodata', 1, 'No data from patient devices', 'nodata', true,
 '{"silence":"10m0s","severity":"medium"}',
 now(), 'system', 'initial default rule set');

-- +goose Down
DROP TABLE alarms;
DROP TABLE rules_news2;
DROP TABLE rules_patient_state;
DROP TABLE rules_patient_settings;
DROP TABLE rules_versions;
DROP FUNCTION rules_versions_immutable();

