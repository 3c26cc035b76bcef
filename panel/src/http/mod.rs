//! The HTTP API under `/api`: one router per module, merged here, behind the shared layers
//! (request ids, tracing, the error envelope, body limit, panic catching).

pub mod api;
pub mod client;
pub mod error;
pub mod extract;
mod health;
pub mod internal;
pub mod job_action;
pub mod list;
pub mod openapi;
pub mod patch;
pub mod validate;

use std::time::Duration;

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderName, Response},
    middleware::{self, Next, map_response},
    routing::get,
};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};
use tracing::Span;

use crate::app::AppState;
use error::{ApiError, normalize_error_body};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    let max_body = state.config.http.max_body_bytes;
    let (api, doc) = utoipa_axum::router::OpenApiRouter::with_openapi(
        <crate::http::openapi::ApiDoc as utoipa::OpenApi>::openapi(),
    )
    .nest("/api", crate::http::api::router())
    .routes(utoipa_axum::routes!(health::health))
    .split_for_parts();
    let doc = std::sync::Arc::new(doc);

    Router::new()
        .merge(api)
        .route(
            "/api/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc) }
            }),
        )
        .route("/api/docs", get(crate::http::openapi::reference_page))
        .route("/metrics", get(crate::metrics::scrape))
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_request,
        ))
        .with_state(state)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(map_response(normalize_error_body))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(make_span)
                        .on_request(())
                        .on_response(on_response)
                        .on_failure(()),
                )
                .layer(CatchPanicLayer::custom(panic_response)),
        )
}

/// A handler panic is a bug: log it, answer the envelope, keep serving.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "handler panicked");
    error::envelope(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "internal error",
        serde_json::Value::Null,
    )
}

/// Each request's latency by route template (not the path: ids would make a series each).
async fn record_request(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    state
        .metrics
        .http
        .get_or_create(&crate::metrics::RouteLabels {
            method,
            route,
            status: res.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    res
}

/// The path only: query strings may carry tokens.
fn make_span(req: &Request) -> Span {
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "http",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %request_id,
        user_id = tracing::field::Empty,
    )
}

fn on_response<B>(res: &Response<B>, latency: Duration, _span: &Span) {
    tracing::info!(
        status = res.status().as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        "request"
    );
}
