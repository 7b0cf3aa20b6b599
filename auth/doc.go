// Package auth knows who is calling and decides what they may do: principals (users with
// sealed personal data, service accounts), sign-in (OpenID Connect as a relying party with
// PKCE; local accounts with argon2id passwords, TOTP, recovery codes and optional WebAuthn
// passkeys), lockout with back-off, server-side sessions with CSRF tokens, API tokens for
// service accounts, and the one authorization decision point: a Casbin enforcer (RBAC with
// care-unit domains plus care-team and break-glass attributes) over a policy stored as data in
// PostgreSQL, versioned and audited. A policy change is applied incrementally and takes
// effect in every process on the database as it commits (PostgreSQL NOTIFY, applied by
// [Enforcer.Follow]).
//
// Every sign-in attempt, session end, token use refusal, policy change and break-glass grant is
// an audit event recorded through the [Recorder] given in [Config]. Failures are returned as
// [*Error] sentinels with stable codes (ErrUnauthenticated, ErrInvalidCredentials, …) that say
// nothing that helps an attacker; the exact reason goes to the audit trail ([ReasonOf]).
//
// The HTTP layer lives in server; this package gives it plain functions: [Service.Authenticate]
// (cookie or bearer token → [Principal]), [Service.CheckCSRF], [Enforcer.Allow] and
// [Enforcer.Visibility] (the filter domain queries apply in SQL, a [visibility.Filter]).
// Domain packages never import auth. It imports only audit and keys of Vigil's packages.
// docs/access.md describes the model, roles, sessions and OIDC configuration.
package auth
