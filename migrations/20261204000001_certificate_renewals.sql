-- An order's job whose failure does not hold the order back: its certificate. A site whose
-- certificate cannot be had (yet) is live on HTTP, and its customer hears of it.
ALTER TABLE jobs ADD COLUMN optional boolean NOT NULL DEFAULT false;

-- What each web agent reports of its own renewals (it renews without the panel): how many
-- failed in a row, when it tries again, and the agent's time of the report (an older report
-- never overwrites a newer one). `expiry_warned_serial` is the certificate whose coming
-- expiry the tenant's admins were told of, so they are told once per certificate.
ALTER TABLE site_certificates
    ADD COLUMN renewal_failures     integer NOT NULL DEFAULT 0 CHECK (renewal_failures >= 0),
    ADD COLUMN next_attempt_at      timestamptz,
    ADD COLUMN reported_at          timestamptz,
    ADD COLUMN expiry_warned_serial text;

-- The expiry duty looks for active certificates by end of validity.
CREATE INDEX site_certificates_not_after_idx ON site_certificates (not_after)
    WHERE status = 'ACTIVE';

-- The tenant's admins hear of a certificate about to expire that its agent could not renew.
ALTER TABLE outbound_emails DROP CONSTRAINT outbound_emails_kind_check;
ALTER TABLE outbound_emails ADD CONSTRAINT outbound_emails_kind_check
    CHECK (kind IN ('WELCOME', 'JOB_FAILED', 'PAYMENT_FAILED', 'SUSPENSION_COMING', 'SUSPENDED',
                    'TERMINATED', 'CERTIFICATE_EXPIRING'));
