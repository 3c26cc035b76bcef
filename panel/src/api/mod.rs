//! The API modules, one router each, mounted under `/api` (spec §6). Every handler takes a
//! `Require<perm::…>` (or is public/internal by design) and scopes its queries to the
//! caller's tenant.

pub mod audit;
pub mod auth;
pub mod catalog;
pub mod customers;
pub mod enrollment;
pub mod fleet;
pub mod jobs;
pub mod orders;
pub mod public;
pub mod servers;
pub mod subscriptions;
pub mod tenants;
pub mod users;
pub mod webhooks;

use axum::Router;

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .nest("/auth", auth::router())
        .nest("/tenants", tenants::router())
        .nest("/users", users::router())
        .nest("/products", catalog::products_router())
        .nest("/plans", catalog::plans_router())
        .route("/public/products", axum::routing::get(public::products))
        .route("/public/plans", axum::routing::get(public::plans))
        .nest("/servers", servers::router())
        .nest("/orders", orders::router())
        .nest("/subscriptions", subscriptions::router())
        .nest("/customers", customers::router())
        .nest("/jobs", jobs::router())
        .nest("/webhooks", webhooks::router())
        .nest("/audit", audit::router())
        .merge(enrollment::router())
        .merge(fleet::router())
}
