//! The only writer of `customers`. A customer is unique per tenant by e-mail address.

use mpanel_protocol::EmailAddress;
use sqlx::PgConnection;
use uuid::Uuid;

/// The tenant's customer with this address, created by its first order; a later order fills
/// in a name or phone the customer did not have, and never overwrites one.
pub async fn upsert_for_order(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    email: &EmailAddress,
    full_name: Option<&str>,
    phone: Option<&str>,
) -> sqlx::Result<Uuid> {
    sqlx::query_scalar(
        "INSERT INTO customers (tenant_id, email, full_name, phone) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, email) DO UPDATE
            SET full_name = COALESCE(customers.full_name, EXCLUDED.full_name),
                phone = COALESCE(customers.phone, EXCLUDED.phone)
         RETURNING id",
    )
    .bind(tenant_id)
    .bind(email.as_str())
    .bind(full_name)
    .bind(phone)
    .fetch_one(conn)
    .await
}
