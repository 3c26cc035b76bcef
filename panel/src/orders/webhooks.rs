//! `POST /api/webhooks/stripe`: Stripe's events, verified, stored once each, and
//! `payment_intent.succeeded` turned into the same paid-order flow as `POST /api/orders`
//! (the intent id is the shared idempotency key); `invoice.paid`, `invoice.payment_failed`
//! and `customer.subscription.deleted` drive the subscription's lifecycle
//! (`subscriptions::billing`), as `POST /api/webhooks/billing` does for a marketing site
//! that bills elsewhere. Other event types are acknowledged and ignored. An event whose order cannot be placed yet (unknown plan, bad metadata) is kept
//! with its error and answered 4xx, so Stripe delivers it again after the catalog is fixed.
//!
//! **Invariant:** of all deliveries of one event, concurrent ones included, exactly one
//! answers `duplicate: false`: the one whose conditional `UPDATE … WHERE processed_at IS
//! NULL` marks the stored event processed. The others, having found the same order (placing
//! is idempotent), answer `duplicate: true` with the order the event recorded.

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
        internal::InternalCaller,
    },
    orders::place::{PaidOrder, place_paid_order},
    subscriptions::{
        billing::{self, Applied, Lookup},
        lifecycle::{BillingEvent, EventKind},
    },
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(stripe_event))
        .routes(routes!(billing_event))
}

/// The event types that drive a subscription's lifecycle.
const LIFECYCLE_EVENTS: &[&str] = &[
    "invoice.paid",
    "invoice.payment_failed",
    "customer.subscription.deleted",
];

/// The fields of a Stripe event the panel reads; the whole event is stored as sent.
#[derive(Deserialize, ToSchema)]
struct StripeEvent {
    /// Stripe's event id (`evt_…`), stored once.
    id: String,
    /// Only `payment_intent.succeeded` places an order; other types are acknowledged.
    #[serde(rename = "type")]
    kind: String,
    /// When the event happened (unix seconds): of two events about one subscription, the
    /// newer wins whatever order they arrive in.
    #[serde(default)]
    created: Option<i64>,
    data: StripeEventData,
}

#[derive(Deserialize, ToSchema)]
struct StripeEventData {
    /// The PaymentIntent (for `payment_intent.succeeded`).
    #[schema(value_type = Object)]
    object: Value,
}

/// The acknowledgement Stripe gets: `{received, duplicate: false, orderId, jobs}` from the
/// delivery that recorded a payment's event, `{received, duplicate: false, ignored}` from the
/// one that recorded another event type, and `{received, duplicate: true, orderId}` from
/// every other delivery of the same event, concurrent or later.
#[derive(Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct StripeAck {
    /// Always true.
    received: bool,
    /// False for the one delivery that recorded the event; true for every other delivery of
    /// it (Stripe's retries, or copies arriving at the same time).
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
    /// True for event types the panel does not act on.
    #[serde(skip_serializing_if = "Option::is_none")]
    ignored: Option<bool>,
    /// The event's order (null for a duplicate of an event that placed none).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Uuid>)]
    order_id: Option<Option<Uuid>>,
    /// The order's provisioning jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    jobs: Option<Vec<JobRef>>,
    /// What a lifecycle event did to its subscription.
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription: Option<Applied>,
}

/// Stripe's events (no token: verified by the Stripe-Signature header).
///
/// Signed with `STRIPE_WEBHOOK_SECRET` (`whsec_…`):
/// `Stripe-Signature: t=<unix seconds>,v1=<hex>`, each `v1` the HMAC-SHA256 of
/// `"<t>." + raw body`, `t` within 5 minutes of the panel's clock. Each event is stored once
/// by its `id`. `payment_intent.succeeded` places an order; `invoice.paid`,
/// `invoice.payment_failed` and `customer.subscription.deleted` drive the subscription's
/// lifecycle (answered with `subscription: {subscriptionId, outcome, status, serviceState,
/// jobId}`; the subscription is found by `metadata.mpanelSubscriptionId`, the Stripe
/// subscription id linked earlier, or `metadata.tenantSlug` with `metadata.domain`, else the
/// event is kept and answered 422 for Stripe to deliver again); other types are
/// acknowledged with `ignored: true`.
///
/// The PaymentIntent (`data.object`) must carry the order in its `metadata`, set by the
/// marketing site when it creates the intent:
///
/// | key | |
/// |---|---|
/// | `tenantSlug` | required: the selling tenant's slug |
/// | `planSlug` | required: an active plan of that tenant |
/// | `domain` | the domain to provision; required for hosting, e-mail and DNS plans |
/// | `customerEmail` | the buyer's address; else the intent's `receipt_email` (one is required) |
/// | `customerName` | optional, at most 200 characters on one line |
///
/// The amount is `amount_received` (else `amount`) in cents, with the intent's `currency`,
/// which must be the plan's; `id` (`pi_…`) is the idempotency key shared with
/// `POST /api/orders`. For example:
///
/// ```json
/// {"id": "evt_3PabcXYZ", "object": "event", "type": "payment_intent.succeeded",
///  "data": {"object": {"id": "pi_3PabcXYZ", "object": "payment_intent",
///    "amount": 1499, "amount_received": 1499, "currency": "usd", "status": "succeeded",
///    "receipt_email": "grace@example.com",
///    "metadata": {"tenantSlug": "migrahosting", "planSlug": "starter",
///      "domain": "grace-hopper.example", "customerEmail": "grace@example.com",
///      "customerName": "Grace Hopper"}}}}
/// ```
///
/// An event that cannot be placed yet (unknown tenant or plan, missing metadata) is kept
/// with its error and answered 4xx, so Stripe delivers it again once the catalog is fixed.
/// Of several deliveries of one event, concurrent or not, exactly one answers
/// `duplicate: false`; the others answer `duplicate: true` with the same `orderId`.
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
    let (processed, order_id) = recorded(&state, &event.id).await?;
    if processed {
        return Ok(Json(duplicate(order_id)));
    }
    if LIFECYCLE_EVENTS.contains(&event.kind.as_str()) {
        let applied = match stripe_billing_event(&event) {
            Ok((lookup, billing_event)) => {
                billing::apply(&state, &lookup, billing_event, "stripe").await
            }
            Err(e) => Err(e),
        };
        return match applied {
            Ok(applied) => {
                if !record(&state, &event.id, None).await? {
                    let (_, order_id) = recorded(&state, &event.id).await?;
                    return Ok(Json(duplicate(order_id)));
                }
                Ok(Json(StripeAck {
                    received: true,
                    duplicate: Some(false),
                    subscription: Some(applied),
                    ..StripeAck::default()
                }))
            }
            Err(e) => {
                if !matches!(e, ApiError::Internal(_)) {
                    tracing::warn!(event = %event.id, error = %e, "Stripe billing event could not be applied yet");
                }
                mark_error(&state, &event.id, &e.to_string()).await?;
                Err(e)
            }
        };
    }
    if event.kind != "payment_intent.succeeded" {
        if !record(&state, &event.id, None).await? {
            let (_, order_id) = recorded(&state, &event.id).await?;
            return Ok(Json(duplicate(order_id)));
        }
        return Ok(Json(StripeAck {
            received: true,
            duplicate: Some(false),
            ignored: Some(true),
            ..StripeAck::default()
        }));
    }

    // Concurrent deliveries of one event all get here; placing is idempotent (the intent id
    // is a unique key), so they all find the same order, and the one whose `record` marks
    // the event processed is the first: the others answer as duplicates of it.
    let placed = match paid_order_from_intent(&event.data.object) {
        Ok(order) => place_paid_order(&state, order, Some(&client))
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match placed {
        Ok(placed) => {
            if !record(&state, &event.id, Some(placed.order_id)).await? {
                let (_, order_id) = recorded(&state, &event.id).await?;
                return Ok(Json(duplicate(order_id)));
            }
            Ok(Json(StripeAck {
                received: true,
                duplicate: Some(false),
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

fn duplicate(order_id: Option<Uuid>) -> StripeAck {
    StripeAck {
        received: true,
        duplicate: Some(true),
        order_id: Some(order_id),
        ..StripeAck::default()
    }
}

/// Whether the stored event was processed, and the order it placed.
async fn recorded(state: &AppState, event_id: &str) -> ApiResult<(bool, Option<Uuid>)> {
    Ok(sqlx::query_as(
        "SELECT processed_at IS NOT NULL, order_id FROM webhook_events
          WHERE provider = 'stripe' AND event_id = $1",
    )
    .bind(event_id)
    .fetch_one(&state.db)
    .await?)
}

/// Marks the event processed with its order, unless a concurrent delivery did first: true
/// when this delivery is the one that recorded it. The row lock of the `UPDATE` decides.
async fn record(state: &AppState, event_id: &str, order: Option<Uuid>) -> ApiResult<bool> {
    let updated = sqlx::query(
        "UPDATE webhook_events SET processed_at = now(), order_id = $2, error = NULL
          WHERE provider = 'stripe' AND event_id = $1 AND processed_at IS NULL",
    )
    .bind(event_id)
    .bind(order)
    .execute(&state.db)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Keeps why the event could not be placed yet (a processed event keeps its outcome).
async fn mark_error(state: &AppState, event_id: &str, error: &str) -> ApiResult<()> {
    sqlx::query(
        "UPDATE webhook_events SET error = $2
          WHERE provider = 'stripe' AND event_id = $1 AND processed_at IS NULL",
    )
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

/// The lifecycle event in a Stripe `invoice.*` or `customer.subscription.deleted` event, and
/// how it names its subscription. Both the older API shape (`invoice.subscription`,
/// `invoice.subscription_details.metadata`) and the newer one (`invoice.parent.
/// subscription_details`) are read.
fn stripe_billing_event(event: &StripeEvent) -> ApiResult<(Lookup, BillingEvent)> {
    let object = &event.data.object;
    let at = event
        .created
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        .ok_or_else(|| ApiError::field("created", "missing or not a unix time"))?;
    let text = |v: &Value| {
        v.as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let (external_id, metadata) = if event.kind == "customer.subscription.deleted" {
        (text(&object["id"]), object["metadata"].clone())
    } else {
        let details = &object["parent"]["subscription_details"];
        let external = text(&object["subscription"]).or_else(|| text(&details["subscription"]));
        let metadata = [
            &details["metadata"],
            &object["subscription_details"]["metadata"],
            &object["metadata"],
        ]
        .into_iter()
        .find(|m| m.as_object().is_some_and(|m| !m.is_empty()))
        .cloned()
        .unwrap_or(Value::Null);
        (external, metadata)
    };
    let id = text(&metadata["mpanelSubscriptionId"])
        .map(|v| Uuid::parse_str(&v))
        .transpose()
        .map_err(|_| ApiError::field("metadata.mpanelSubscriptionId", "not a UUID"))?;
    let kind = match event.kind.as_str() {
        "invoice.paid" => {
            let period_end = object["lines"]["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|line| line["period"]["end"].as_i64())
                .max()
                .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0));
            EventKind::Paid { period_end }
        }
        "invoice.payment_failed" => EventKind::PaymentFailed,
        _ => EventKind::Cancelled,
    };
    let lookup = Lookup {
        id,
        external_id,
        tenant_slug: text(&metadata["tenantSlug"]),
        domain: text(&metadata["domain"]),
    };
    Ok((lookup, BillingEvent { kind, at }))
}

/// A billing event from a marketing site that bills elsewhere.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BillingEventBody {
    /// The caller's id of the event (1 to 200 characters), stored once: a second delivery
    /// changes nothing.
    event_id: String,
    #[serde(rename = "type")]
    kind: BillingEventType,
    /// When it happened: of two events about one subscription, the newer wins.
    occurred_at: chrono::DateTime<chrono::Utc>,
    /// The subscription (from the order's answer or `GET /api/subscriptions`).
    subscription_id: Uuid,
    /// For `invoice.paid`: the end of the period paid for.
    #[serde(default)]
    period_end: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Deserialize, Serialize, Clone, Copy, ToSchema)]
enum BillingEventType {
    #[serde(rename = "invoice.paid")]
    InvoicePaid,
    #[serde(rename = "invoice.payment_failed")]
    InvoicePaymentFailed,
    #[serde(rename = "subscription.cancelled")]
    SubscriptionCancelled,
}

#[derive(Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct BillingAck {
    received: bool,
    /// True for a second delivery of the same `eventId`.
    duplicate: bool,
    /// What the event did (absent for a duplicate).
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription: Option<Applied>,
}

/// A billing event of a marketing site that bills elsewhere (`x-internal-key:
/// $MARKETING_WEBHOOK_SECRET`, or `Authorization: Bearer` with it): the same lifecycle as
/// Stripe's events. `invoice.paid` renews the period and lifts a suspension for
/// non-payment; `invoice.payment_failed` makes the subscription PAST_DUE and suspends its
/// resources after the tenant's grace period; `subscription.cancelled` ends it (suspended
/// now, terminated after the tenant's retention). Events may arrive twice or out of
/// order: each `eventId` counts once, and an event older than the newest applied changes
/// nothing (`outcome: stale`).
#[utoipa::path(post, path = "/billing", tag = "webhooks", operation_id = "billingEvent",
    security(("internalKey" = [])),
    request_body = BillingEventBody,
    responses((status = 200, description = "Received (applied, unchanged, stale, or a duplicate)", body = BillingAck), Errors))]
async fn billing_event(
    State(state): State<AppState>,
    _caller: InternalCaller,
    body: Bytes,
) -> ApiResult<Json<BillingAck>> {
    let event: BillingEventBody = parse_json(&body)?;
    let event_id = event.event_id.trim();
    if event_id.is_empty() || event_id.len() > 200 || event_id.chars().any(char::is_control) {
        return Err(ApiError::field(
            "eventId",
            "must be 1 to 200 characters on one line",
        ));
    }
    if event.period_end.is_some() && !matches!(event.kind, BillingEventType::InvoicePaid) {
        return Err(ApiError::field(
            "periodEnd",
            "only an invoice.paid event has a period end",
        ));
    }
    let payload: Value = parse_json(&body)?;
    let kind_text = serde_json::to_value(event.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    sqlx::query(
        "INSERT INTO webhook_events (provider, event_id, event_type, payload)
         VALUES ('internal', $1, $2, $3) ON CONFLICT (provider, event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(&kind_text)
    .bind(&payload)
    .execute(&state.db)
    .await?;
    let processed: bool = sqlx::query_scalar(
        "SELECT processed_at IS NOT NULL FROM webhook_events
          WHERE provider = 'internal' AND event_id = $1",
    )
    .bind(event_id)
    .fetch_one(&state.db)
    .await?;
    let dup = BillingAck {
        received: true,
        duplicate: true,
        subscription: None,
    };
    if processed {
        return Ok(Json(dup));
    }
    let kind = match event.kind {
        BillingEventType::InvoicePaid => EventKind::Paid {
            period_end: event.period_end,
        },
        BillingEventType::InvoicePaymentFailed => EventKind::PaymentFailed,
        BillingEventType::SubscriptionCancelled => EventKind::Cancelled,
    };
    let lookup = Lookup {
        id: Some(event.subscription_id),
        ..Lookup::default()
    };
    let billing_event = BillingEvent {
        kind,
        at: event.occurred_at,
    };
    let applied = billing::apply(&state, &lookup, billing_event, "internal").await?;
    let marked = sqlx::query(
        "UPDATE webhook_events SET processed_at = now(), error = NULL
          WHERE provider = 'internal' AND event_id = $1 AND processed_at IS NULL",
    )
    .bind(event_id)
    .execute(&state.db)
    .await?;
    if marked.rows_affected() == 0 {
        return Ok(Json(dup));
    }
    Ok(Json(BillingAck {
        received: true,
        duplicate: false,
        subscription: Some(applied),
    }))
}
