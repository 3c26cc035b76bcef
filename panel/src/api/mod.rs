//! The API modules, one router each, mounted under `/api` (spec §6). Every handler takes a
//! `Require<perm::…>` (or is public/internal by design) and scopes its queries to the
//! caller's tenant.

pub mod actions;
pub mod audit;
pub mod auth;
pub mod backups;
pub mod catalog;
pub mod customers;
pub mod dns;
pub mod enrollment;
pub mod fleet;
pub mod hosting;
pub mod jobs;
pub mod mail;
pub mod openapi;
pub mod orders;
pub mod public;
pub mod servers;
pub mod subscriptions;
pub mod tenants;
pub mod users;
pub mod vps;
pub mod webhooks;

use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;

/// Every API route, relative to `/api`, with the OpenAPI document built from the same
/// registrations.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .nest("/auth", auth::router())
        .nest("/tenants", tenants::router())
        .nest("/users", users::router())
        .nest("/products", catalog::products_router())
        .nest("/plans", catalog::plans_router())
        .nest("/public", public::router())
        .nest("/servers", servers::router())
        .nest("/orders", orders::router())
        .nest("/subscriptions", subscriptions::router())
        .nest("/customers", customers::router())
        .nest("/jobs", jobs::router())
        .nest("/backups", backups::router())
        .nest("/hosting", hosting::router())
        .nest("/dns", dns::router())
        .nest("/mail", mail::router())
        .nest("/vps", vps::router())
        .nest("/webhooks", webhooks::router())
        .nest("/audit", audit::router())
        .merge(enrollment::router())
        .merge(fleet::router())
}
