-- vigil:phase expand
-- +goose Up
-- The live stream's events (alarm transitions and the like, not the high-volume live
-- observation events) shared by every replica on the database (core/hub_replicas.go): each
-- replica appends the events it publishes, one writer at a time (an advisory lock held to
-- commit, so ids commit in increasing order), and NOTIFY vigil_hub wakes the others, which
-- read what follows the last id they have and deliver it to their SSE streams. The id is the
-- SSE event id, the same on every replica, so that a stream resumes on any of them
-- (Last-Event-ID). Data may hold PHI (alarm messages), as the alarms table does. Rows older
-- than a day are deleted (the replay window is the last few thousand events).
CREATE TABLE core_hub_events (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type       text        NOT NULL,
    patient_id uuid        NOT NULL,
    at         timestamptz NOT NULL,
    data       jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX core_hub_events_created ON core_hub_events (created_at);

-- +goose Down
DROP TABLE core_hub_events;
