//! Agent enrollment routes (being written with the fleet).

use axum::Router;

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
}
