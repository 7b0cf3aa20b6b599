-- +goose Up
-- Principals of the auth area: users (people) and service accounts (CI, integrations).
-- A user's e-mail address and display name are PHI-grade personal data: they are stored only
-- sealed (keys PHI sealer, associated data "auth/user/<id>/profile"), and the e-mail address,
-- which is the login name, is found through an HMAC blind index of its normalized form. An OIDC
-- user is found through the blind index of "<issuer> NUL <subject>". Passwords are argon2id
-- hashes (PHC string); TOTP secrets are sealed ("auth/user/<id>/totp"). Roles are not stored
-- here: they are policy (auth_policy_rules).
CREATE TABLE auth_users (
    id              uuid PRIMARY KEY,
    email_index     bytea NOT NULL UNIQUE,
    profile_sealed  bytea NOT NULL,
    oidc_index      bytea UNIQUE,
    password_hash   text,
    totp_sealed     bytea,
    totp_last_step  bigint NOT NULL DEFAULT 0,   -- highest TOTP time step accepted (replay)
    status          text NOT NULL CHECK (status IN ('active','disabled')),
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    disabled_at     timestamptz
);

-- Recovery codes: SHA-256 of each one-time code (high-entropy, so a fast hash is enough).
CREATE TABLE auth_recovery_codes (
    user_id    uuid NOT NULL REFERENCES auth_users (id) ON DELETE CASCADE,
    code_hash  bytea NOT NULL CHECK (length(code_hash) = 32),
    created_at timestamptz NOT NULL,
    used_at    timestamptz,
    PRIMARY KEY (user_id, code_hash)
);

-- One-time enrollment links (vigil user add): only the SHA-256 of the token is stored. The TOTP
-- secret offered during enrollment is kept sealed here until the user confirms a code.
CREATE TABLE auth_enrollments (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    user_id     uuid NOT NULL REFERENCES auth_users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    totp_sealed bytea
);
CREATE INDEX auth_enrollments_user ON auth_enrollments (user_id);

-- WebAuthn credentials (passkeys) of a user, as go-webauthn's Credential JSON (public key,
-- sign count, flags); nothing in them is secret.
CREATE TABLE auth_webauthn_credentials (
    id           bytea PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES auth_users (id) ON DELETE CASCADE,
    credential   jsonb NOT NULL,
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz
);
CREATE INDEX auth_webauthn_credentials_user ON auth_webauthn_credentials (user_id);

-- Service accounts: named machine principals that authenticate with API tokens only.
CREATE TABLE auth_service_accounts (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    status      text NOT NULL CHECK (status IN ('active','disabled')),
    created_at  timestamptz NOT NULL,
    disabled_at timestamptz
);

-- +goose Down
DROP TABLE auth_service_accounts;
DROP TABLE auth_webauthn_credentials;
DROP TABLE auth_enrollments;
DROP TABLE auth_recovery_codes;
DROP TABLE auth_users;
