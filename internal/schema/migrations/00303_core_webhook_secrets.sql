-- +goose Up
-- Webhook secrets derived from the key ring's webhook-hmac key (HMAC of the webhook id): the
-- database then holds only the key version that derived the secret, never the secret itself.
-- secret stays for installations without a key ring (a random secret stored as is).
ALTER TABLE core_webhooks ALTER COLUMN secret DROP NOT NULL;
ALTER TABLE core_webhooks ADD COLUMN secret_version integer;
ALTER TABLE core_webhooks ADD CONSTRAINT core_webhooks_secret_source
    CHECK ((secret IS NULL) <> (secret_version IS NULL));

-- +goose Down
ALTER TABLE core_webhooks DROP CONSTRAINT core_webhooks_secret_source;
ALTER TABLE core_webhooks DROP COLUMN secret_version;
ALTER TABLE core_webhooks ALTER COLUMN secret SET NOT NULL;
