-- A tenant's live servers have distinct names (operators address them by name); a deleted
-- server's name can be reused.
CREATE UNIQUE INDEX servers_tenant_id_name_key ON servers (tenant_id, name) WHERE deleted_at IS NULL;
