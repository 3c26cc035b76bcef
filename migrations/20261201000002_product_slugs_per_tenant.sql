-- A product's slug is unique within its tenant, as a plan's is, not across the whole panel:
-- one tenant's 409 must neither reveal another tenant's slug nor let it squat names.
ALTER TABLE products DROP CONSTRAINT products_slug_key;
ALTER TABLE products ADD CONSTRAINT products_tenant_id_slug_key UNIQUE (tenant_id, slug);
