-- vigil:phase expand
-- +goose Up
-- A policy change ties each line it writes to its audit event (audit/rowdigest): it finds the
-- line by its row key, ptype|v0|v1|v2|v3. Without an index on that key, every change read the
-- whole table, so that granting roles to n people cost O(n²).
CREATE INDEX auth_policy_rules_row_key ON auth_policy_rules ((ptype || '|' || v0 || '|' || v1 || '|' || v2 || '|' || v3));

-- +goose Down
DROP INDEX auth_policy_rules_row_key;
