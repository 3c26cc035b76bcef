//! The API modules, one router each, mounted under `/api` (spec §6). Every handler takes a
//! `Require<perm::…>` (or is public/internal by design) and scopes its queries to the
//! caller's tenant.

pub mod audit;
pub mod auth;
pub mod enrollment;
pub mod servers;
pub mod tenants;
pub mod users;

use axum::Router;

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .nest("/auth", auth::router())
        .nest("/tenants", tenants::router())
        .nest("/users", users::router())
        .nest("/servers", servers::router())
        .nest("/audit", audit::router())
        .merge(enrollment::router())
}
