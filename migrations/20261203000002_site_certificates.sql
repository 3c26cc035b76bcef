-- The HTTPS certificate of each hosting account, as its web agent last reported it. The
-- certificate and its key stay on the web server; the panel keeps only what an operator
-- needs to see (issuer, serial, names, validity, the last error).
CREATE TABLE site_certificates (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id          uuid        NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    hosting_account_id uuid        NOT NULL UNIQUE REFERENCES hosting_accounts (id) ON DELETE CASCADE,
    status             text        NOT NULL DEFAULT 'PENDING'
                                   CHECK (status IN ('PENDING', 'ISSUING', 'ACTIVE', 'FAILED')),
    issuer             text,
    serial             text,
    names              text[]      NOT NULL DEFAULT '{}',
    not_before         timestamptz,
    not_after          timestamptz,
    renew_at           timestamptz,
    last_error         text,
    -- The job that last issued (or tried to issue) it.
    job_id             uuid        REFERENCES jobs (id) ON DELETE SET NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX site_certificates_tenant_id_idx ON site_certificates (tenant_id);
CREATE INDEX site_certificates_job_id_idx ON site_certificates (job_id);
CREATE TRIGGER site_certificates_set_updated_at BEFORE UPDATE ON site_certificates
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
