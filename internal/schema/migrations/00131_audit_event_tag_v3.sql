-- vigil:phase expand
-- +goose Up
-- Event tags of form v3 (docs/audit.md "Event authentication"): HMAC-SHA256 truncated to 16
-- bytes, written from now on; rows tagged before keep their 32-byte tags of form v2, and
-- verifiers accept both. A binary of the previous version still writes v2 tags, which stay
-- allowed. NOT VALID: the rows already there were checked by the old constraint.
ALTER TABLE audit_events DROP CONSTRAINT audit_events_auth_mac_check,
    ADD CONSTRAINT audit_events_auth_mac_check CHECK (length(auth_mac) IN (16, 32)) NOT VALID;

-- +goose Down
ALTER TABLE audit_events DROP CONSTRAINT audit_events_auth_mac_check,
    ADD CONSTRAINT audit_events_auth_mac_check CHECK (length(auth_mac) = 32) NOT VALID;
