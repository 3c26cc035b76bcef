-- A plan bills per month or per year; a paid order's subscription period follows it.
CREATE TYPE billing_interval AS ENUM ('MONTHLY', 'YEARLY');
ALTER TABLE plans ADD COLUMN billing_interval billing_interval NOT NULL DEFAULT 'MONTHLY';
