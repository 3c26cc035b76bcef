//! Each tenant's lifecycle policy — grace period, warning, retention, whether zones outlive
//! termination, and its own wording of the customer e-mails — and the only writer of
//! `subscription_policies`. A tenant without a row has the defaults of [`Policy`].

use axum::{Json, extract::State};
use chrono::Duration;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::lifecycle::Policy;
use crate::{
    app::AppState,
    audit::{self, Entry},
    auth::permissions::{Require, perm},
    http::{
        client::ClientMeta,
        error::{ApiError, ApiResult},
        extract::parse_json,
        openapi::Errors,
    },
    notify::Notice,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show, replace))
}

/// The longest grace period or retention a tenant may set (a year).
const MAX_SECS: i64 = 366 * 86_400;
/// Bounds of a template's subject and body.
const MAX_SUBJECT: usize = 200;
const MAX_BODY: usize = 20_000;

#[derive(sqlx::FromRow)]
struct Row {
    grace_period_secs: i32,
    warning_secs: i32,
    retention_secs: i32,
    keep_zone_on_termination: bool,
    templates: Value,
}

async fn row(db: impl sqlx::PgExecutor<'_>, tenant: Uuid) -> sqlx::Result<Option<Row>> {
    sqlx::query_as(
        "SELECT grace_period_secs, warning_secs, retention_secs, keep_zone_on_termination,
                templates
           FROM subscription_policies WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_optional(db)
    .await
}

impl From<&Row> for Policy {
    fn from(r: &Row) -> Policy {
        Policy {
            grace_period: Duration::seconds(r.grace_period_secs.into()),
            warning: Duration::seconds(r.warning_secs.into()),
            retention: Duration::seconds(r.retention_secs.into()),
            keep_zone_on_termination: r.keep_zone_on_termination,
        }
    }
}

/// The tenant's policy (the defaults when it set none).
pub async fn of_tenant(db: impl sqlx::PgExecutor<'_>, tenant: Uuid) -> sqlx::Result<Policy> {
    Ok(row(db, tenant)
        .await?
        .as_ref()
        .map(Policy::from)
        .unwrap_or_default())
}

/// The tenant's wording of one notice, when it has one.
pub async fn template(
    db: impl sqlx::PgExecutor<'_>,
    tenant: Uuid,
    notice: Notice,
) -> sqlx::Result<Option<Template>> {
    let templates: Option<Value> =
        sqlx::query_scalar("SELECT templates FROM subscription_policies WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(db)
            .await?;
    Ok(templates
        .and_then(|t| t.get(notice.key()).cloned())
        .and_then(|t| serde_json::from_value(t).ok()))
}

/// A tenant's own subject and body of a notice. Placeholders in braces are filled in:
/// `{customerName}`, `{domain}`, `{planName}`, `{tenantName}`, `{suspendAt}`,
/// `{terminateAt}`, `{appUrl}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub subject: String,
    pub body: String,
}

/// The lifecycle policy of the caller's tenant.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyBody {
    /// Seconds from a failed payment to the suspension (default 604800, 7 days).
    grace_period_secs: i64,
    /// Seconds before the suspension that the "suspension coming" e-mail goes out (default
    /// 172800, 2 days); none when the grace period is not longer than this.
    warning_secs: i64,
    /// Seconds from a cancellation to the termination of the resources (default 2592000,
    /// 30 days).
    retention_secs: i64,
    /// Keep a terminated subscription's zone on the DNS servers (default false: deleted).
    keep_zone_on_termination: bool,
    /// The tenant's own wording, by notice: `paymentFailed`, `suspensionComing`,
    /// `suspended`, `terminated`. A notice without one uses the built-in text.
    #[serde(default)]
    #[schema(value_type = Object)]
    templates: serde_json::Map<String, Value>,
}

impl PolicyBody {
    fn of(row: Option<&Row>) -> PolicyBody {
        let policy = row.map(Policy::from).unwrap_or_default();
        PolicyBody {
            grace_period_secs: policy.grace_period.num_seconds(),
            warning_secs: policy.warning.num_seconds(),
            retention_secs: policy.retention.num_seconds(),
            keep_zone_on_termination: policy.keep_zone_on_termination,
            templates: row
                .and_then(|r| r.templates.as_object().cloned())
                .unwrap_or_default(),
        }
    }

    /// Every problem at once, each naming its field.
    fn check(&self) -> ApiResult<()> {
        let mut problems = Vec::new();
        for (field, value) in [
            ("gracePeriodSecs", self.grace_period_secs),
            ("warningSecs", self.warning_secs),
            ("retentionSecs", self.retention_secs),
        ] {
            if !(0..=MAX_SECS).contains(&value) {
                problems.push((field.to_owned(), format!("must be 0 to {MAX_SECS} seconds")));
            }
        }
        for (key, value) in &self.templates {
            let field = format!("templates.{key}");
            if Notice::from_key(key).is_none() {
                problems.push((
                    field,
                    "is not a notice (paymentFailed, suspensionComing, suspended, terminated)"
                        .into(),
                ));
                continue;
            }
            match serde_json::from_value::<Template>(value.clone()) {
                Err(e) => problems.push((field, format!("must be {{subject, body}}: {e}"))),
                Ok(t) => {
                    let subject = t.subject.trim();
                    if subject.is_empty() || subject.chars().count() > MAX_SUBJECT {
                        problems.push((
                            format!("{field}.subject"),
                            format!("must be 1 to {MAX_SUBJECT} characters"),
                        ));
                    } else if subject.contains(['\r', '\n']) {
                        problems.push((format!("{field}.subject"), "must be one line".into()));
                    }
                    if t.body.trim().is_empty() || t.body.len() > MAX_BODY {
                        problems.push((
                            format!("{field}.body"),
                            format!("must be 1 to {MAX_BODY} bytes"),
                        ));
                    }
                }
            }
        }
        match problems.first() {
            None => Ok(()),
            Some((field, _)) => Err(ApiError::Validation {
                field: Some(field.clone()),
                message: problems
                    .iter()
                    .map(|(f, m)| format!("{f}: {m}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }
}

/// The caller's tenant's lifecycle policy (the defaults until one is set).
#[utoipa::path(get, path = "/policy", tag = "subscriptions", operation_id = "getSubscriptionPolicy", security(("bearer" = [])),
    responses((status = 200, description = "The policy", body = PolicyBody), Errors))]
async fn show(
    State(state): State<AppState>,
    user: Require<perm::SubscriptionsRead>,
) -> ApiResult<Json<PolicyBody>> {
    let row = row(&state.db, user.tenant_id).await?;
    Ok(Json(PolicyBody::of(row.as_ref())))
}

/// Replaces the caller's tenant's lifecycle policy. Dates already set (a suspension or
/// termination scheduled) keep their time; the policy applies from the next event on.
#[utoipa::path(put, path = "/policy", tag = "subscriptions", operation_id = "putSubscriptionPolicy", security(("bearer" = [])),
    request_body = PolicyBody,
    responses((status = 200, description = "The policy, as stored", body = PolicyBody), Errors))]
async fn replace(
    State(state): State<AppState>,
    user: Require<perm::SubscriptionsLifecycle>,
    client: ClientMeta,
    body: axum::body::Bytes,
) -> ApiResult<Json<PolicyBody>> {
    let body: PolicyBody = parse_json(&body)?;
    body.check()?;
    let secs = |v: i64| i32::try_from(v).expect("checked above");
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "INSERT INTO subscription_policies (tenant_id, grace_period_secs, warning_secs,
                                            retention_secs, keep_zone_on_termination, templates)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant_id) DO UPDATE
            SET grace_period_secs = EXCLUDED.grace_period_secs,
                warning_secs = EXCLUDED.warning_secs,
                retention_secs = EXCLUDED.retention_secs,
                keep_zone_on_termination = EXCLUDED.keep_zone_on_termination,
                templates = EXCLUDED.templates",
    )
    .bind(user.tenant_id)
    .bind(secs(body.grace_period_secs))
    .bind(secs(body.warning_secs))
    .bind(secs(body.retention_secs))
    .bind(body.keep_zone_on_termination)
    .bind(Value::Object(body.templates.clone()))
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        Entry::by(
            &user,
            &client,
            "subscription.policy",
            json!({ "gracePeriodSecs": body.grace_period_secs, "warningSecs": body.warning_secs,
                    "retentionSecs": body.retention_secs,
                    "keepZoneOnTermination": body.keep_zone_on_termination,
                    "templates": body.templates.keys().collect::<Vec<_>>() }),
        ),
    )
    .await?;
    let stored = row(&mut *tx, user.tenant_id).await?;
    tx.commit().await?;
    Ok(Json(PolicyBody::of(stored.as_ref())))
}
