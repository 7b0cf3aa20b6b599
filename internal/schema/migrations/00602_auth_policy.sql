-- +goose Up
-- The authorization policy as data (Casbin rules, read by auth's pgx adapter). The model
-- (auth/model.conf) is code; these rows are the policy:
--   p, <role>, <object>, <action>, <scope>      what a role may do, and where
--   g, <subject>, <role>, <domain>              who holds a role, and where ("*" or "ward:<id>")
-- Every change bumps auth_policy_versions in the same transaction as the change and its audit
-- event, so each running enforcer can tell that it must reload and an auditor can replay the
-- policy's history.
CREATE TABLE auth_policy_rules (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ptype   text NOT NULL CHECK (ptype IN ('p','g')),
    v0      text NOT NULL,
    v1      text NOT NULL,
    v2      text NOT NULL DEFAULT '',
    v3      text NOT NULL DEFAULT '',
    source  text NOT NULL,       -- "default", "admin", "oidc", "token:<id>"
    version bigint NOT NULL,     -- policy version that added the rule
    UNIQUE (ptype, v0, v1, v2, v3)
);

CREATE TABLE auth_policy_versions (
    version    bigint PRIMARY KEY,
    changed_at timestamptz NOT NULL,
    actor_kind text NOT NULL,
    actor_id   text NOT NULL,
    change     text NOT NULL,    -- e.g. "rule.added", "rule.removed", "default.installed"
    detail     jsonb NOT NULL
);

-- Break-glass grants: a clinician opens an out-of-team patient for a bounded time with a stated
-- reason (sealed: free text may hold PHI; "auth/break-glass/<id>/reason"). Listed for review
-- until reviewed.
CREATE TABLE auth_break_glass (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES auth_users (id),
    patient_id    uuid NOT NULL,
    reason_sealed bytea NOT NULL,
    opened_at     timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    closed_at     timestamptz,
    reviewed_at   timestamptz,
    reviewed_by   text,
    CHECK (expires_at > opened_at)
);
CREATE INDEX auth_break_glass_active ON auth_break_glass (user_id, patient_id) WHERE closed_at IS NULL;
CREATE INDEX auth_break_glass_unreviewed ON auth_break_glass (opened_at) WHERE reviewed_at IS NULL;

-- +goose Down
DROP TABLE auth_break_glass;
DROP TABLE auth_policy_versions;
DROP TABLE auth_policy_rules;
