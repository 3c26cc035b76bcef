//! Agent enrollment over HTTP:
//!
//! - `POST /api/servers/{id}/enrollment-token` (operators, `AgentsEnroll`): a one-time token
//!   for one of the tenant's live servers, and the command to run on it.
//! - `POST /api/agents/enroll` (no JWT: the token is the credential): the agent trades the
//!   token and a CSR for its certificate.
//!
//! The logic and its invariants are in [`crate::fleet::enroll`]; this module maps HTTP to it.
//! Failed redemptions are throttled per IP (429 + Retry-After past the limit): tokens carry
//! 256 random bits, so guessing is hopeless, but each attempt verifies a CSR signature.

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode, header},
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use mpanel_protocol::messages::{EnrollRequest, EnrollResponse};
use serde::{Deserialize, Serialize};
use tracing::instrument;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::http::openapi::Errors;
use crate::{
    app::AppState,
    auth::{
        permissions::{Require, perm},
        throttle::enrollment_throttle,
    },
    fleet::enroll::{self, DEFAULT_TOKEN_TTL, EnrollError},
    http::{
        client::ClientMeta,
        error::{ApiError, ApiResult},
        extract::{ApiJson, IdPath, parse_json},
    },
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_token))
        .routes(routes!(enroll_agent))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(as = CreateEnrollmentToken)]
struct CreateToken {
    /// 1 to 1440; 60 when absent.
    #[schema(minimum = 1, maximum = 1440)]
    ttl_minutes: Option<u32>,
}

/// A one-time enrollment token and the command that uses it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = EnrollmentToken)]
struct TokenCreated {
    token: String,
    expires_at: DateTime<Utc>,
    server_id: Uuid,
    ca_fingerprint: String,
    /// What to run on the server, token included:
    /// `MPANEL_ENROLL_TOKEN=<token> mpanel-agent enroll --panel <APP_URL>`. The token travels
    /// in the environment, not in the agent's arguments, where every user of the server could
    /// read it (`ps`).
    command: String,
}

/// The body is optional: none (or an empty one) means the defaults.
fn optional_body(headers: &HeaderMap, body: &Bytes) -> ApiResult<CreateToken> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(CreateToken::default());
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let mime = ct.split(';').next().unwrap_or("").trim();
            mime == "application/json" || mime.ends_with("+json")
        });
    if !is_json {
        return Err(ApiError::bad_request(
            "expected a JSON body with Content-Type: application/json",
        ));
    }
    parse_json(body)
}

/// A one-time enrollment token for one of the tenant's live servers, and the command to run
/// on it. The body is optional.
#[utoipa::path(post, path = "/servers/{id}/enrollment-token", tag = "enrollment", operation_id = "createEnrollmentToken", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The server's id")),
    request_body(content = Option<CreateToken>, description = "Optional; none (or an empty body) means the defaults", content_type = "application/json"),
    responses((status = 201, description = "The token", body = TokenCreated), Errors))]
#[instrument(skip_all, fields(server_id = %id))]
async fn create_token(
    State(state): State<AppState>,
    user: Require<perm::AgentsEnroll>,
    client: ClientMeta,
    IdPath(id): IdPath,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    let body = optional_body(&headers, &body)?;
    let ttl = match body.ttl_minutes {
        None => DEFAULT_TOKEN_TTL,
        Some(m @ 1..=1440) => Duration::from_secs(u64::from(m) * 60),
        Some(_) => return Err(ApiError::field("ttlMinutes", "must be between 1 and 1440")),
    };
    let ca = state.ca.clone();

    let mut tx = state.db.begin().await?;
    let issued = enroll::issue_token(
        &mut tx,
        &ca,
        user.tenant_id,
        id,
        Some(user.id),
        Some(&client),
        ttl,
    )
    .await?
    .ok_or(ApiError::NotFound("server"))?;
    tx.commit().await?;

    let panel = state.config.app_url.as_str().trim_end_matches('/');
    let token = issued.token.expose().to_owned();
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            command: format!("MPANEL_ENROLL_TOKEN={token} mpanel-agent enroll --panel {panel}"),
            token,
            expires_at: issued.expires_at,
            server_id: id,
            ca_fingerprint: ca.fingerprint_sha256().to_owned(),
        }),
    ))
}

/// The body of `POST /api/agents/enroll` (documents `mpanel_protocol`'s `EnrollRequest`).
#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = EnrollRequest)]
#[allow(dead_code)]
struct EnrollRequestView {
    /// The one-time enrollment token.
    token: String,
    /// A PKCS#10 request for the key the agent generated (ECDSA P-256), in PEM.
    #[schema(max_length = 16384)]
    csr_pem: String,
    /// The machine's host name.
    hostname: String,
    /// The agent's version (`0.1.0`).
    #[schema(max_length = 64)]
    version: String,
}

/// The answer of `POST /api/agents/enroll` (documents `mpanel_protocol`'s `EnrollResponse`).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase", as = EnrollResponse)]
#[allow(dead_code)]
struct EnrollResponseView {
    agent_id: Uuid,
    server_id: Uuid,
    /// The agent's client certificate, in PEM.
    certificate_pem: String,
    /// The panel's CA certificate, in PEM.
    ca_pem: String,
    ca_fingerprint: String,
    /// Hex serial of the certificate.
    serial: String,
    not_after: DateTime<Utc>,
    /// The `wss://` address of the fleet hub.
    hub_url: String,
}

/// The agent trades an enrollment token and a CSR for its certificate (no JWT: the token is
/// the credential). Failed attempts are throttled per IP.
#[utoipa::path(post, path = "/agents/enroll", tag = "enrollment", operation_id = "enrollAgent",
    request_body = EnrollRequestView,
    responses((status = 201, description = "Enrolled: the agent's certificate", body = EnrollResponseView), Errors))]
#[instrument(skip_all)]
async fn enroll_agent(
    State(state): State<AppState>,
    client: ClientMeta,
    ApiJson(request): ApiJson<EnrollRequest>,
) -> ApiResult<(StatusCode, Json<EnrollResponse>)> {
    let throttle = enrollment_throttle(&state.redis, client.ip);
    if let Some(retry_after_secs) = throttle.retry_after().await {
        return Err(ApiError::TooManyRequests { retry_after_secs });
    }
    let ca = state.ca.clone();
    let mut tx = state.db.begin().await?;
    let redeemed = enroll::redeem(&mut tx, &ca, &request, Some(&client)).await;
    if matches!(redeemed, Err(EnrollError::Refused | EnrollError::Csr(_))) {
        throttle.record_failure().await;
    }
    let enrollment = redeemed.map_err(|e| match e {
        EnrollError::Refused => ApiError::Unauthorized(e.to_string()),
        EnrollError::Csr(csr) => ApiError::field("csrPem", csr.to_string()),
        EnrollError::Internal(cause) => ApiError::Internal(cause),
    })?;
    tx.commit().await?;
    // The certificates this enrollment replaced are refused from now on, and whoever holds
    // one is cut off.
    if !enrollment.revoked_serials.is_empty() {
        state
            .fleet
            .revoked
            .insert_all(enrollment.revoked_serials.iter().cloned());
        state
            .fleet
            .disconnect(None, &enrollment.revoked_serials, "re-enrolled");
    }
    tracing::info!(
        agent_id = %enrollment.agent_id,
        server_id = %enrollment.server_id,
        serial = %enrollment.certificate.serial_hex,
        "agent enrolled"
    );

    let cert = enrollment.certificate;
    Ok((
        StatusCode::CREATED,
        Json(EnrollResponse {
            agent_id: enrollment.agent_id,
            server_id: enrollment.server_id,
            certificate_pem: cert.pem,
            ca_pem: ca.ca_pem().to_owned(),
            ca_fingerprint: ca.fingerprint_sha256().to_owned(),
            serial: cert.serial_hex,
            not_after: cert.not_after,
            hub_url: state.config.fleet.public_url.to_string(),
        }),
    ))
}
