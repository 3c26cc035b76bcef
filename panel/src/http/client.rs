//! Who is calling, read off the request for the audit log and login throttling: the client
//! IP (through trusted proxies only) and the user agent. The value itself,
//! [`ClientMeta`], belongs to `audit` so that layers below the routes need nothing of `http`.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{header, request::Parts},
};

use crate::app::AppState;
pub use crate::audit::ClientMeta;

impl FromRequestParts<AppState> for ClientMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| ci.0.ip());
        let forwarded = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let ip = client_ip(peer, forwarded, &state.config.http.trusted_proxies);
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(512).collect());
        Ok(ClientMeta { ip, user_agent })
    }
}

/// The peer, unless it is a trusted proxy: then the right-most `X-Forwarded-For` entry that
/// is not itself a trusted proxy (entries further left are whatever the client claimed).
pub fn client_ip(
    peer: Option<IpAddr>,
    forwarded: Option<&str>,
    trusted: &[IpAddr],
) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let Some(forwarded) = forwarded else {
        return Some(peer);
    };
    let mut last = peer;
    for hop in forwarded.rsplit(',').map(str::trim) {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => last = ip,
            Ok(ip) => return Some(ip),
            Err(_) => break,
        }
    }
    Some(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_counts_only_through_trusted_proxies() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let spoofed = "198.51.100.1";
        let trusted = [lo];
        assert_eq!(
            client_ip(Some(lo), Some(&format!("{spoofed}, {client}")), &trusted),
            Some(client)
        );
        assert_eq!(
            client_ip(Some(client), Some(spoofed), &trusted),
            Some(client)
        );
        assert_eq!(client_ip(Some(lo), None, &trusted), Some(lo));
        assert_eq!(client_ip(Some(lo), Some("not-an-ip"), &trusted), Some(lo));
    }
}
