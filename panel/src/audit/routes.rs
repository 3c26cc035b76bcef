//! `GET /api/audit`: the tenant's audit log, newest first, filterable by action, user and
//! time range.

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::http::openapi::{Errors, ListParams};
use crate::{
    app::AppState,
    auth::permissions::{Require, perm},
    http::{
        error::{ApiError, ApiResult},
        list::{ListQuery, Page, fetch_page},
    },
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub user_id: Option<Uuid>,
    pub action: String,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    /// What the action concerned (ids, changes); its shape depends on the action.
    #[schema(value_type = Option<Value>)]
    pub details: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct Filter {
    /// Exact action (`auth.login`), or a prefix ending in `.*` (`auth.*`).
    action: Option<String>,
    user_id: Option<Uuid>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

/// The tenant's audit log, newest first. Sortable by createdAt, action.
#[utoipa::path(get, path = "", tag = "audit", operation_id = "listAuditLog", security(("bearer" = [])),
    params(ListParams, Filter),
    responses((status = 200, description = "A page of audit entries", body = Page<AuditEntry>), Errors))]
async fn list(
    State(state): State<AppState>,
    user: Require<perm::AuditRead>,
    query: ListQuery<Filter>,
) -> ApiResult<Json<Page<AuditEntry>>> {
    let f = &query.filter;
    if let (Some(from), Some(to)) = (f.from, f.to)
        && from > to
    {
        return Err(ApiError::field("from", "must not be after 'to'"));
    }
    let order = query.sorting.order_by(
        &[("createdAt", "created_at"), ("action", "action")],
        "created_at",
    )?;
    let (exact, prefix) = match f.action.as_deref() {
        Some(a) if a.ends_with(".*") => (None, Some(format!("{}.%", a.trim_end_matches(".*")))),
        Some(a) => (Some(a.to_owned()), None),
        None => (None, None),
    };
    const WHERE: &str = "tenant_id = $1 AND ($2::text IS NULL OR action = $2)
        AND ($3::text IS NULL OR action LIKE $3) AND ($4::uuid IS NULL OR user_id = $4)
        AND ($5::timestamptz IS NULL OR created_at >= $5)
        AND ($6::timestamptz IS NULL OR created_at <= $6)";
    let args = crate::pg_args![user.tenant_id, exact, prefix, f.user_id, f.from, f.to];
    let from_where = format!("FROM audit_logs WHERE {WHERE}");
    let page = fetch_page(
        &state.db,
        "id, tenant_id, user_id, action, ip_address, user_agent, details, created_at",
        &from_where,
        &order,
        query.window,
        args,
    )
    .await?;
    Ok(Json(page))
}
