//! `POST /api/webhooks/stripe`: Stripe's events, verified, stored once each, and
//! `payment_intent.succeeded` turned into the same paid-order flow as `POST /api/orders`
//! (the intent id is the shared idempotency key). Other event types are acknowledged and
//! ignored. An event whose order cannot be placed yet (unknown plan, bad metadata) is kept
//! with its error and answered 4xx, so Stripe delivers it again after the catalog is fixed.

use axum::{Json, body::Bytes, extract::State, http::HeaderMap};
use mpanel_protocol::{Currency, DomainName};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    routes::{JobRef, amount, job_refs},
    stripe,
};
use crate::http::{
    openapi::Errors,
    validate::{self, check_email, optional_line},
};
use crate::{
    app::AppState,
    http::{
        client::ClientMeta,
        error::{ApiError, ApiResult},
        extract::parse_json,
    },
    orders::place::{PaidOrder, place_paid_order},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stripe_event))
}

/// The fields of a Stripe event the panel reads; the whole event is stored as sent.
#[derive(Deserialize, ToSchema)]
struct StripeEvent {
    /// Stripe's event id (`evt_…`), stored once.
    id: String,
    /// Only `payment_intent.succeeded` places an order; other types are acknowledged.
    #[serde(rename = "type")]
    kind: String,
    data: StripeEventData,
}

#[derive(Deserialize, ToSchema)]
struct StripeEventData {
    /// The PaymentIntent (for `payment_intent.succeeded`).
    #[schema(value_type = Object)]
    object: Value,
}

/// The acknowledgement Stripe gets: `{received, duplicate, orderId}` for an event processed
/// before, `{received, ignored}` for other event types, `{received, orderId, jobs}` for a
/// payment that placed (or found) its order.
#[derive(Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct StripeAck {
    /// Always true.
    received: bool,
    /// True when the event was processed before.
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
    /// True for event types other than `payment_intent.succeeded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    ignored: Option<bool>,
    /// The event's order (null for a duplicate of an event that placed none).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Uuid>)]
    order_id: Option<Option<Uuid>>,
    /// The order's provisioning jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    jobs: Option<Vec<JobRef>>,
}

/// Stripe's events (no token: verified by the Stripe-Signature header).
#[utoipa::path(post, path = "/stripe", tag = "webhooks", operation_id = "stripeWebhook",
    params(("Stripe-Signature" = String, Header, description = "Stripe's signature of the raw body (`t=…,v1=…`), checked against the webhook secret")),
    request_body(content = StripeEvent, content_type = "application/json",
        description = "The event exactly as Stripe sent it (the signature covers the raw bytes)"),
    responses(
        (status = 200, description = "Received (processed, a duplicate, or ignored)", body = StripeAck),
        Errors,
    ))]
async fn stripe_event(
    State(state): State<AppState>,
    client: ClientMeta,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<StripeAck>> {
    let header = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("missing Stripe-Signature header"))?;
    let secret = state.config.stripe_webhook_secret.expose_secret();
    stripe::verify(header, &body, secret, chrono::Utc::now().timestamp()).map_err(|e| {
        tracing::warn!(ip = ?client.ip, reason = %e, "Stripe webhook refused");
        ApiError::bad_request(format!("invalid Stripe signature: {e}"))
    })?;
    let event: StripeEvent = parse_json(&body)?;
    let payload: Value = parse_json(&body)?;

    sqlx::query(
        "INSERT INTO webhook_events (provider, event_id, event_type, payload)
         VALUES ('stripe', $1, $2, $3) ON CONFLICT (provider, event_id) DO NOTHING",
    )
    .bind(&event.id)
    .bind(&event.kind)
    .bind(&payload)
    .execute(&state.db)
    .await?;
    let (processed, order_id): (bool, Option<Uuid>) = sqlx::query_as(
        "SELECT processed_at IS NOT NULL, order_id FROM webhook_events
          WHERE provider = 'stripe' AND event_id = $1",
    )
    .bind(&event.id)
    .fetch_one(&state.db)
    .await?;
    if processed {
        return Ok(Json(StripeAck {
            received: true,
            duplicate: Some(true),
            order_id: Some(order_id),
            ..StripeAck::default()
        }));
    }
    if event.kind != "payment_intent.succeeded" {
        mark(&state, &event.id, None, None).await?;
        return Ok(Json(StripeAck {
            received: true,
            ignored: Some(true),
            ..StripeAck::default()
        }));
    }

    let placed = match paid_order_from_intent(&event.data.object) {
        Ok(order) => place_paid_order(&state, order, Some(&client))
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match placed {
        Ok(placed) => {
            mark(&state, &event.id, Some(placed.order_id), None).await?;
            Ok(Json(StripeAck {
                received: true,
                order_id: Some(Some(placed.order_id)),
                jobs: Some(job_refs(placed.jobs)),
                ..StripeAck::default()
            }))
        }
        Err(e) => {
            if !matches!(e, ApiError::Internal(_)) {
                tracing::warn!(event = %event.id, error = %e, "Stripe payment could not become an order yet");
            }
            mark_error(&state, &event.id, &e.to_string()).await?;
            Err(e)
        }
    }
}

async fn mark(
    state: &AppState,
    event_id: &str,
    order: Option<Uuid>,
    error: Option<&str>,
) -> ApiResult<()> {
    sqlx::query(
        "UPDATE webhook_events SET processed_at = now(), order_id = $2, error = $3
          WHERE provider = 'stripe' AND event_id = $1",
    )
    .bind(event_id)
    .bind(order)
    .bind(error)
    .execute(&state.db)
    .await?;
    Ok(())
}

async fn mark_error(state: &AppState, event_id: &str, error: &str) -> ApiResult<()> {
    sqlx::query("UPDATE webhook_events SET error = $2 WHERE provider = 'stripe' AND event_id = $1")
        .bind(event_id)
        .bind(error)
        .execute(&state.db)
        .await?;
    Ok(())
}

/// The marketing site puts tenantSlug, planSlug, domain, customerEmail and customerName in
/// the PaymentIntent's metadata; receipt_email is the fallback e-mail.
fn paid_order_from_intent(intent: &Value) -> ApiResult<PaidOrder> {
    let text = |v: &Value| {
        v.as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let meta = &intent["metadata"];
    let required = |field: &str| {
        let value = text(&meta[field]).ok_or_else(|| {
            ApiError::field(
                format!("metadata.{field}"),
                "missing from the PaymentIntent",
            )
        })?;
        validate::name::<200>(&format!("metadata.{field}"), &value)
    };
    let intent_id =
        text(&intent["id"]).ok_or_else(|| ApiError::field("data.object.id", "missing"))?;
    let email = text(&meta["customerEmail"])
        .or_else(|| text(&intent["receipt_email"]))
        .ok_or_else(|| {
            ApiError::field("metadata.customerEmail", "missing (and no receipt_email)")
        })?;
    let cents = intent["amount_received"]
        .as_i64()
        .or_else(|| intent["amount"].as_i64())
        .ok_or_else(|| ApiError::field("data.object.amount", "missing"))?;
    let currency = text(&intent["currency"])
        .ok_or_else(|| ApiError::field("data.object.currency", "missing"))?;
    Ok(PaidOrder {
        tenant_slug: required("tenantSlug")?,
        plan_slug: required("planSlug")?,
        customer_email: check_email("metadata.customerEmail", &email)?,
        customer_name: optional_line::<200>(
            "metadata.customerName",
            meta["customerName"].as_str(),
        )?,
        customer_phone: None,
        total_amount_cents: amount("data.object.amount", cents)?,
        currency: Currency::parse(&currency)
            .map_err(|e| ApiError::field("data.object.currency", e.to_string()))?,
        domain: text(&meta["domain"])
            .map(|d| DomainName::parse(&d))
            .transpose()
            .map_err(|e| ApiError::field("metadata.domain", e.to_string()))?,
        stripe_payment_intent_id: Some(intent_id),
        external_order_id: None,
        notes: Some("Stripe payment_intent.succeeded".to_owned()),
        source: "stripe",
    })
}
