-- +goose Up
-- Sessions, API tokens, sign-in throttling and pending OIDC sign-ins. Only the SHA-256 of a
-- session token or API token is stored: the database alone cannot be used to sign in.
CREATE TABLE auth_sessions (
    id           uuid PRIMARY KEY,
    token_hash   bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    user_id      uuid NOT NULL REFERENCES auth_users (id) ON DELETE CASCADE,
    auth_method  text NOT NULL,
    source_addr  text NOT NULL,
    created_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,          -- idle timeout counts from here
    expires_at   timestamptz NOT NULL,          -- absolute lifetime
    ended_at     timestamptz,
    end_reason   text
);
CREATE INDEX auth_sessions_user ON auth_sessions (user_id) WHERE ended_at IS NULL;

-- API tokens of service accounts: role-scoped (roles ⊆ the account's roles when issued),
-- expiring, revocable.
CREATE TABLE auth_api_tokens (
    id                 uuid PRIMARY KEY,
    service_account_id uuid NOT NULL REFERENCES auth_service_accounts (id) ON DELETE CASCADE,
    token_hash         bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    name               text NOT NULL,
    roles              text[] NOT NULL,
    created_at         timestamptz NOT NULL,
    expires_at         timestamptz NOT NULL,
    revoked_at         timestamptz,
    last_used_at       timestamptz
);
CREATE INDEX auth_api_tokens_account ON auth_api_tokens (service_account_id);

-- Failed sign-in counters with exponential back-off, per account ("account:<blind index>",
-- also for names that match no account, so the answer does not reveal which exist) and per
-- source address ("source:<address>").
CREATE TABLE auth_throttle (
    key             text PRIMARY KEY,
    failures        integer NOT NULL,
    last_failure_at timestamptz NOT NULL,
    locked_until    timestamptz
);

-- OIDC sign-ins in progress: keyed by the SHA-256 of the state, single use, short-lived.
CREATE TABLE auth_oidc_flows (
    state_hash  bytea PRIMARY KEY CHECK (length(state_hash) = 32),
    nonce       text NOT NULL,
    verifier    text NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- WebAuthn ceremonies in progress (registration of a passkey, passkey sign-in): go-webauthn's
-- session data (the challenge), keyed by the SHA-256 of the ceremony id, single use.
CREATE TABLE auth_webauthn_ceremonies (
    id_hash     bytea PRIMARY KEY CHECK (length(id_hash) = 32),
    kind        text NOT NULL CHECK (kind IN ('register','login')),
    user_id     uuid REFERENCES auth_users (id) ON DELETE CASCADE,
    session     jsonb NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- +goose Down
DROP TABLE auth_webauthn_ceremonies;
DROP TABLE auth_oidc_flows;
DROP TABLE auth_throttle;
DROP TABLE auth_api_tokens;
DROP TABLE auth_sessions;
