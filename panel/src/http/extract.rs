//! Request extractors that fail with the API's error model and name the offending field.

use axum::{
    extract::{FromRequest, FromRequestParts, Path, Request, rejection::BytesRejection},
    http::{StatusCode, header, request::Parts},
};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::ApiError;

/// A JSON body. Unlike `axum::Json`, a missing or mistyped field answers 400 with the field's
/// path (`customer.email`) in `details.field`, and an oversized body 413.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
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
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&bytes).map(ApiJson)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    refuse_nul_in_json(bytes)?;
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad_request(format!("malformed JSON: {inner}"));
        }
        let message = inner.to_string();
        // A missing field is reported at its parent's path; an unknown one at its own.
        let named = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let field = match named {
            Some(name) if path == "." => name.to_owned(),
            Some(name) => format!("{path}.{name}"),
            None if path == "." => "body".to_owned(),
            None => path,
        };
        // Drop serde's " at line 1 column 42" suffix: the field path says more.
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_owned();
        ApiError::field(field, message)
    })
}

const NUL_REFUSED: &str = "must not contain NUL characters";

/// No text the API takes may hold a NUL character (PostgreSQL stores none, and no name,
/// address or note needs one): a body with one is refused naming the field. JSON can only
/// spell NUL as the escape `\u0000`, so bodies without that sequence are not looked at again.
fn refuse_nul_in_json(bytes: &[u8]) -> Result<(), ApiError> {
    if !bytes.windows(6).any(|w| w == b"\\u0000") {
        return Ok(());
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Ok(()); // malformed: the deserializer says so
    };
    match nul_path(&value, String::new()) {
        Some(path) => Err(ApiError::field(
            if path.is_empty() {
                "body".to_owned()
            } else {
                path
            },
            NUL_REFUSED,
        )),
        None => Ok(()),
    }
}

/// The path (`customer.fullName`, `items[2]`) of the first key or string holding NUL.
fn nul_path(value: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Some(at),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_path(v, format!("{at}[{i}]"))),
        Value::Object(fields) => fields.iter().find_map(|(k, v)| {
            let path = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            if k.contains('\0') {
                Some(path)
            } else {
                nul_path(v, path)
            }
        }),
        _ => None,
    }
}

/// A query string. Unknown or mistyped parameters answer 400 naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        ApiQuery::parse(parts.uri.query().unwrap_or(""))
    }
}

impl<T: DeserializeOwned> ApiQuery<T> {
    pub fn parse(query: &str) -> Result<ApiQuery<T>, ApiError> {
        let pairs = form_urlencoded::parse(query.as_bytes());
        if let Some((name, _)) = pairs
            .clone()
            .find(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return Err(ApiError::field(name.replace('\0', ""), NUL_REFUSED));
        }
        let de = serde_urlencoded::Deserializer::new(pairs);
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|err| {
                let path = err.path().to_string();
                let message = err.into_inner().to_string();
                let field = match message
                    .strip_prefix("missing field `")
                    .or_else(|| message.strip_prefix("unknown field `"))
                    .and_then(|rest| rest.split('`').next())
                {
                    Some(name) => name.to_owned(),
                    None if path == "." => "query".to_owned(),
                    None => path,
                };
                ApiError::field(field, message)
            })
    }
}

/// The `:id` of a resource route. An id that is not a UUID names no resource: 404, exactly
/// like an id of another tenant, so nothing about ids leaks.
pub struct IdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<Uuid>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(IdPath(id)),
            Err(_) => Err(ApiError::NotFound("resource")),
        }
    }
}

fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge
    } else {
        ApiError::bad_request(format!("cannot read request body: {rejection}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn nul_is_refused_naming_the_field() {
        let err = parse_json::<serde_json::Value>(br#"{"customer":{"fullName":"a\u0000b"}}"#)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "customer.fullName: must not contain NUL characters"
        );
        let err = parse_json::<serde_json::Value>(br#"{"items":["ok","\u0000"]}"#).unwrap_err();
        assert_eq!(err.to_string(), "items[1]: must not contain NUL characters");
        let ok: serde_json::Value = parse_json(br#"{"escaped":"\\u0000"}"#).unwrap();
        assert_eq!(ok["escaped"], "\\u0000");
        let err = ApiQuery::<serde_json::Value>::parse("tenant=a%00b")
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "tenant: must not contain NUL characters");
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Order {
        customer: Customer,
        amount: u32,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Customer {
        email: String,
    }

    fn field_of(body: &str) -> Option<String> {
        match parse_json::<Order>(body.as_bytes()) {
            Err(ApiError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn names_missing_and_mistyped_fields() {
        assert_eq!(
            field_of(r#"{"customer":{"email":"a@b.c"}}"#).as_deref(),
            Some("amount")
        );
        assert_eq!(
            field_of(r#"{"customer":{},"amount":1}"#).as_deref(),
            Some("customer.email")
        );
        assert_eq!(
            field_of(r#"{"customer":{"email":"a@b.c"},"amount":-1}"#).as_deref(),
            Some("amount")
        );
        assert_eq!(field_of("{").as_deref(), None);
        assert_eq!(
            field_of(r#"{"customer":{"email":"a@b.c","x":1},"amount":1}"#).as_deref(),
            Some("customer.x")
        );
    }
}
