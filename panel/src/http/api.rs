//! Every resource's router, mounted under `/api` (spec §6). Every handler takes a
//! `Require<perm::…>` (or is public/internal by design) and scopes its queries to the
//! caller's tenant.

use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;

/// Every API route, relative to `/api`, with the OpenAPI document built from the same
/// registrations.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .nest("/auth", crate::auth::routes::router())
        .nest("/tenants", crate::tenants::routes::router())
        .nest("/users", crate::users::routes::router())
        .nest("/products", crate::catalog::routes::products_router())
        .nest("/plans", crate::catalog::routes::plans_router())
        .nest("/public", crate::catalog::public::router())
        .nest("/servers", crate::servers::routes::router())
        .nest("/orders", crate::orders::routes::router())
        .nest("/subscriptions", crate::subscriptions::routes::router())
        .nest("/domains", crate::domains::routes::router())
        .nest("/customers", crate::customers::routes::router())
        .nest("/jobs", crate::jobs::routes::router())
        .nest("/backups", crate::backups::routes::router())
        .nest("/hosting", crate::hosting::routes::router())
        .nest("/dns", crate::dns::routes::router())
        .nest("/mail", crate::mail::routes::router())
        .nest("/vps", crate::vps::routes::router())
        .nest("/webhooks", crate::orders::webhooks::router())
        .nest("/audit", crate::audit::routes::router())
        .merge(crate::servers::enrollment::router())
        .merge(crate::servers::agent_routes::router())
}
