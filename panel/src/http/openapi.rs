//! The OpenAPI 3.1 document, generated from the code: every route is registered through
//! `utoipa_axum`'s `routes!`, so a handler cannot be mounted without being documented. This
//! module holds what the handlers share: the document's header and security schemes, the
//! error envelope, the standard error responses, and the list conventions' parameters.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::{
    IntoResponses, Modify, OpenApi, ToSchema,
    openapi::{
        self, RefOr, Response, ResponseBuilder,
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mPanel API",
        description = "The admin API of mPanel, a hosting company's control panel: tenants, \
            operators, the catalog, paid orders, provisioning jobs, the server fleet and its \
            agents, hosting, DNS, mail, VPS and backups. Every error has the shape \
            `{\"error\":{\"code\",\"message\",\"details\"}}`. Collections take `page`, \
            `pageSize`, `sort` and `order`, and answer `{items,total,page,pageSize}`.",
        license(name = "Proprietary")
    ),
    modifiers(&SecuritySchemes),
    components(schemas(ErrorBody, ErrorDetail))
)]
pub struct ApiDoc;

/// `bearer` (an operator's access token from `/api/auth/login`) and `internalKey` (the
/// marketing backend's and scripts' `x-internal-key`).
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "internalKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-internal-key"))),
        );
    }
}

/// Every 4xx and 5xx answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable: `validation_failed`, `unauthorized`, `forbidden`,
    /// `not_found`, `conflict`, `unprocessable_entity`, `rate_limited`, `service_unavailable`,
    /// `database_unavailable` (503 with `Retry-After`: the database is down; retry), …
    pub code: String,
    /// For people; names the field or the rule that was broken.
    pub message: String,
    /// Extra facts, such as `{"field": "domain"}`; `null` when there are none.
    #[schema(value_type = Option<Object>)]
    pub details: serde_json::Value,
}

fn error(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            openapi::ContentBuilder::new()
                .schema(Some(openapi::Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}

/// A cacheable answer (the public catalog): 200 with a `T` body and its ETag, or 304 when
/// the request's If-None-Match holds that ETag; both with Cache-Control.
pub struct Cached<T>(std::marker::PhantomData<T>);

impl<T: ToSchema> IntoResponses for Cached<T> {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let with_headers = |builder: ResponseBuilder| {
            let header = |description: &str| {
                openapi::header::HeaderBuilder::new()
                    .schema(Some(
                        openapi::ObjectBuilder::new().schema_type(openapi::schema::Type::String),
                    ))
                    .description(Some(description))
                    .build()
            };
            builder
                .header("ETag", header("A strong validator of the body"))
                .header("Cache-Control", header("`public, max-age=60`"))
                .build()
        };
        let ok = ResponseBuilder::new()
            .description("The answer, with its validator")
            .content(
                "application/json",
                openapi::ContentBuilder::new()
                    .schema(Some(openapi::Ref::from_schema_name(T::name())))
                    .build(),
            );
        let unchanged = ResponseBuilder::new()
            .description("Unchanged since the ETag sent in If-None-Match; no body");
        BTreeMap::from([
            ("200".to_owned(), with_headers(ok).into()),
            ("304".to_owned(), with_headers(unchanged).into()),
        ])
    }
}

/// The errors any authenticated route can answer, documented once.
pub struct Errors;

impl IntoResponses for Errors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        [
            (
                "400",
                "The request is malformed; the message names the field.",
            ),
            ("401", "No valid access token."),
            ("403", "The caller's role may not do this."),
            (
                "404",
                "No such row in the caller's tenant (or no such route).",
            ),
            ("405", "Method not allowed."),
            ("409", "The change conflicts with the current state."),
            ("413", "The body is too large."),
            ("415", "The body is not JSON."),
            ("422", "Well-formed, but refers to something unusable."),
            ("429", "Too many attempts; see Retry-After."),
            (
                "503",
                "A dependency (database, Redis, an agent) is unavailable.",
            ),
        ]
        .into_iter()
        .map(|(status, text)| (status.to_owned(), error(text)))
        .collect()
    }
}

/// `page`, `pageSize`, `sort`, `order` of every collection (filters are documented per
/// route).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[allow(dead_code)]
pub struct ListParams {
    /// 1-based page number (default 1).
    #[param(minimum = 1)]
    page: Option<u32>,
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    page_size: Option<u32>,
    /// A sortable field of the collection (each route lists them).
    sort: Option<String>,
    /// `asc` or `desc` (default `desc`).
    order: Option<String>,
}

/// The answer of every route that queues work: the job to follow on `/api/jobs/{id}`, plus
/// the ids of what it works on.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub job_id: uuid::Uuid,
    /// `PENDING`.
    pub status: String,
}

/// `GET /api/docs`: the API reference, one self-contained page that renders
/// `/api/openapi.json`. Its Content-Security-Policy forbids loading anything from elsewhere,
/// so it works on a panel with no internet access (and leaks nothing to a CDN).
pub async fn reference_page() -> impl axum::response::IntoResponse {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'",
            ),
        ],
        include_str!("docs.html"),
    )
}
