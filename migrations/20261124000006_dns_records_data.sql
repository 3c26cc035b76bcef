-- DNS records are edited through the API and pushed to PowerDNS whole: each row keeps the
-- typed record (the protocol's RecordData, e.g. {"type":"MX","priority":10,"exchange":…})
-- beside its presentation `content`, so the panel never parses zone-file text back.
ALTER TABLE dns_records ADD COLUMN data jsonb;

-- One zone per domain: the sync job and the API find a domain's zone by domain_id.
CREATE UNIQUE INDEX dns_zones_domain_id_key ON dns_zones (domain_id);
