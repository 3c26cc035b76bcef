-- A job may wait for another (an order's DNS job for its hosting job: the apex points at the
-- web server chosen there). It is not runnable until that job succeeded, spends no attempts
-- while it waits, and is pushed the moment the other succeeds.
ALTER TABLE jobs ADD COLUMN after_job_id uuid REFERENCES jobs (id) ON DELETE SET NULL;
CREATE INDEX jobs_after_job ON jobs (after_job_id);
