-- Typed jobs: every payload carries its kind (the `kind` tag of the panel's JobPayload), and
-- what queries look up inside payloads becomes typed, indexed columns written from the
-- payload at insert. Existing rows are moved here; nothing reads `payload->>'…'` any more.

ALTER TABLE jobs
    ADD COLUMN domain_id          uuid REFERENCES domains (id) ON DELETE SET NULL,
    ADD COLUMN subscription_id    uuid REFERENCES subscriptions (id) ON DELETE SET NULL,
    ADD COLUMN hosting_account_id uuid REFERENCES hosting_accounts (id) ON DELETE SET NULL,
    ADD COLUMN mail_account_id    uuid REFERENCES mail_accounts (id) ON DELETE SET NULL,
    ADD COLUMN dns_zone_id        uuid REFERENCES dns_zones (id) ON DELETE SET NULL,
    ADD COLUMN backup_job_id      uuid REFERENCES backup_jobs (id) ON DELETE SET NULL,
    ADD COLUMN vps_id             uuid REFERENCES vps_instances (id) ON DELETE SET NULL;

-- The kind of each existing row, from its type and the keys the first wave wrote.
UPDATE jobs SET payload = payload || jsonb_build_object('kind', CASE
        WHEN type = 'PROVISION_DNS' AND payload ? 'zoneId' THEN 'syncZone'
        WHEN type = 'PROVISION_DNS' THEN 'orderZone'
        WHEN type = 'PROVISION_HOSTING' AND payload ? 'orderId' THEN 'orderSite'
        WHEN type = 'PROVISION_HOSTING' THEN 'createHostingAccount'
        WHEN type = 'PROVISION_MAIL' AND payload ? 'orderId' THEN 'orderMailbox'
        WHEN type = 'PROVISION_MAIL' AND payload->>'reset' = 'true' THEN 'resetMailPassword'
        WHEN type = 'PROVISION_MAIL' THEN 'createMailAccount'
        WHEN type = 'PROVISION_VPS' AND payload ? 'orderId' THEN 'orderVps'
        WHEN type = 'PROVISION_VPS' THEN 'vpsAction'
        WHEN type = 'SUSPEND_ACCOUNT' AND payload ? 'mailAccountId' THEN 'disableMailbox'
        WHEN type = 'SUSPEND_ACCOUNT' THEN 'suspendSite'
        WHEN type = 'UNSUSPEND_ACCOUNT' AND payload ? 'mailAccountId' THEN 'enableMailbox'
        WHEN type = 'UNSUSPEND_ACCOUNT' THEN 'unsuspendSite'
        WHEN type = 'TERMINATE_ACCOUNT' THEN 'terminateSite'
        WHEN type = 'RUN_BACKUP' THEN 'runBackup'
    END)
 WHERE NOT payload ? 'kind';

-- An operator's hosting account named its PHP version under `limits`; it is its own field now.
UPDATE jobs SET payload = (payload - 'limits' - 'productType')
        || jsonb_build_object('phpVersion', payload->'limits'->'phpVersion')
 WHERE payload->>'kind' = 'createHostingAccount' AND payload ? 'limits';

-- The typed columns of existing rows; ids that no longer exist stay NULL.
CREATE FUNCTION pg_temp.uuid_or_null(v text) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN v ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                THEN v::uuid END
$$;
UPDATE jobs SET
    domain_id = (SELECT id FROM domains
                  WHERE id = pg_temp.uuid_or_null(payload->>'domainId')),
    subscription_id = (SELECT id FROM subscriptions
                        WHERE id = pg_temp.uuid_or_null(payload->>'subscriptionId')),
    hosting_account_id = (SELECT id FROM hosting_accounts
                           WHERE id = pg_temp.uuid_or_null(payload->>'hostingAccountId')),
    mail_account_id = (SELECT id FROM mail_accounts
                        WHERE id = pg_temp.uuid_or_null(payload->>'mailAccountId')),
    dns_zone_id = (SELECT id FROM dns_zones WHERE id = pg_temp.uuid_or_null(payload->>'zoneId')),
    backup_job_id = (SELECT id FROM backup_jobs
                      WHERE id = pg_temp.uuid_or_null(payload->>'backupJobId')),
    vps_id = (SELECT id FROM vps_instances WHERE id = pg_temp.uuid_or_null(payload->>'vpsId'));

CREATE INDEX jobs_domain_id_idx ON jobs (domain_id);
CREATE INDEX jobs_subscription_id_idx ON jobs (subscription_id);
CREATE INDEX jobs_hosting_account_id_idx ON jobs (hosting_account_id);
CREATE INDEX jobs_mail_account_id_idx ON jobs (mail_account_id);
CREATE INDEX jobs_dns_zone_id_idx ON jobs (dns_zone_id);
CREATE INDEX jobs_backup_job_id_idx ON jobs (backup_job_id);
CREATE INDEX jobs_vps_id_idx ON jobs (vps_id);
