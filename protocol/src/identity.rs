//! Who an agent certificate names: the `urn:mpanel:agent:` URI and the one rule both sides
//! apply to a certificate (the panel's hub to a peer, the agent to what enrollment and
//! renewal hand it).
//!
//! The rule is pure, over names already read from the certificate
//! ([`agent_id_from_names`]); with the `x509` feature, [`agent_id_of`] reads them from a
//! certificate parsed by x509-parser, for both binaries.

use uuid::Uuid;

/// The URI SAN prefix that names an agent: `urn:mpanel:agent:<uuid>`.
pub const AGENT_URI_PREFIX: &str = "urn:mpanel:agent:";
/// The URI SAN prefix that names the agent's server: `urn:mpanel:server:<uuid>`.
pub const SERVER_URI_PREFIX: &str = "urn:mpanel:server:";

/// The URI SAN that names an agent in its certificate.
pub fn agent_uri(agent_id: Uuid) -> String {
    format!("{AGENT_URI_PREFIX}{agent_id}")
}

/// The URI SAN that names the agent's server (informational: the hub looks the server up by
/// agent id, in the database).
pub fn server_uri(server_id: Uuid) -> String {
    format!("{SERVER_URI_PREFIX}{server_id}")
}

/// The agent a certificate names, from its subject's common names and its URI SANs.
///
/// An identity exists only when there is exactly one common name, it is a UUID, and the
/// `urn:mpanel:agent:` URIs that hold a UUID name exactly that one UUID (once). Other URIs
/// (the server's, anything else) are ignored.
pub fn agent_id_from_names<'a>(
    common_names: impl IntoIterator<Item = &'a str>,
    uris: impl IntoIterator<Item = &'a str>,
) -> Option<Uuid> {
    let mut cns = common_names.into_iter();
    let cn = cns.next()?;
    if cns.next().is_some() {
        return None;
    }
    let from_cn = Uuid::parse_str(cn).ok()?;
    let from_san: Vec<Uuid> = uris
        .into_iter()
        .filter_map(|uri| uri.strip_prefix(AGENT_URI_PREFIX))
        .filter_map(|id| Uuid::parse_str(id).ok())
        .collect();
    (from_san == [from_cn]).then_some(from_cn)
}

/// [`agent_id_from_names`] over a parsed certificate's subject common names and URI SANs.
#[cfg(feature = "x509")]
pub fn agent_id_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<Uuid> {
    use x509_parser::extensions::GeneralName;
    let common_names = cert
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().ok())
        .collect::<Option<Vec<_>>>()?;
    let san = cert.subject_alternative_name().ok()??;
    let uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    agent_id_from_names(common_names, uris)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_name_agent_and_server() {
        let id = Uuid::parse_str("6f1c3c2e-0d5b-4c39-9a43-2f6f0f9e8b11").unwrap();
        assert_eq!(
            agent_uri(id),
            "urn:mpanel:agent:6f1c3c2e-0d5b-4c39-9a43-2f6f0f9e8b11"
        );
        assert_eq!(
            server_uri(id),
            "urn:mpanel:server:6f1c3c2e-0d5b-4c39-9a43-2f6f0f9e8b11"
        );
    }

    #[test]
    fn one_uuid_cn_and_the_same_agent_uri_is_an_identity() {
        let (agent, server) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let cn = agent.to_string();
        let (a, s) = (agent_uri(agent), server_uri(server));
        assert_eq!(
            agent_id_from_names([cn.as_str()], [a.as_str()]),
            Some(agent)
        );
        // The server URI and other URIs are not part of the rule.
        assert_eq!(
            agent_id_from_names([cn.as_str()], [a.as_str(), s.as_str(), "https://x/"]),
            Some(agent)
        );
        // A URI with the prefix but no UUID after it is not an agent URI either.
        assert_eq!(
            agent_id_from_names([cn.as_str()], ["urn:mpanel:agent:nope", a.as_str()]),
            Some(agent)
        );
    }

    #[test]
    fn anything_else_names_no_agent() {
        let (agent, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let (cn, other_cn) = (agent.to_string(), other.to_string());
        let (a, b, s) = (agent_uri(agent), agent_uri(other), server_uri(agent));
        let none: [&str; 0] = [];
        for (cns, uris) in [
            // No CN, two CNs (even equal ones), a CN that is not a UUID.
            (vec![], vec![a.as_str()]),
            (vec![cn.as_str(), cn.as_str()], vec![a.as_str()]),
            (vec![cn.as_str(), other_cn.as_str()], vec![a.as_str()]),
            (vec!["srv1-web"], vec![a.as_str()]),
            // No agent URI, another agent's, two (different or repeated).
            (vec![cn.as_str()], none.to_vec()),
            (vec![cn.as_str()], vec![b.as_str()]),
            (vec![cn.as_str()], vec![a.as_str(), b.as_str()]),
            (vec![cn.as_str()], vec![a.as_str(), a.as_str()]),
            // The server URI is not an agent URI.
            (vec![cn.as_str()], vec![s.as_str()]),
        ] {
            assert_eq!(
                agent_id_from_names(cns.iter().copied(), uris.iter().copied()),
                None,
                "{cns:?} {uris:?}"
            );
        }
    }
}
