//! The panel–agent messages as both sides see them: the exact wire shape, a round trip of
//! every variant, and a table of inputs that must be refused with an error (never a panic).

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use mpanel_protocol::messages::{
    AgentCommand, AgentMessage, Command, CommandEnvelope, DiskUsage, EnrollRequest,
    EnrollmentToken, Hello, Hostname, Label, MAX_MESSAGE_BYTES, MetricsReport, Outcome,
    PROTOCOL_VERSION, PanelMessage, Percent, Ping, Pong, ProtocolError, Role, ServiceState, Text,
    Welcome,
};
use mpanel_protocol::{DomainName, web::CertificateStatus};
use serde_json::{Value, json};
use uuid::Uuid;

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 12, 30, 5).unwrap()
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn hello() -> AgentMessage {
    AgentMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: Label::parse("0.1.0").unwrap(),
        hostname: Hostname::parse("srv1-web").unwrap(),
        roles: vec![Role::Web, Role::Backup],
    })
}

fn metrics() -> MetricsReport {
    MetricsReport {
        collected_at: at(),
        cpu_percent: 12.5,
        memory_used_bytes: 1 << 30,
        memory_total_bytes: 4 << 30,
        load1: 0.25,
        load5: 0.5,
        load15: 1.0,
        uptime_secs: 86_400,
        disks: vec![DiskUsage {
            mount: Text::parse("/").unwrap(),
            used_bytes: 10 << 30,
            total_bytes: 40 << 30,
        }],
        services: BTreeMap::from([
            ("nginx".to_owned(), ServiceState::Active),
            ("php8.3-fpm".to_owned(), ServiceState::Failed),
        ]),
    }
}

fn every_agent_message() -> Vec<AgentMessage> {
    vec![
        hello(),
        AgentMessage::Accepted { command_id: id(1) },
        AgentMessage::Progress {
            command_id: id(1),
            message: Text::parse("reloading nginx\nstill going").unwrap(),
            percent: Some(Percent::new(40).unwrap()),
        },
        AgentMessage::Progress {
            command_id: id(1),
            message: Text::parse("").unwrap(),
            percent: None,
        },
        AgentMessage::Result {
            command_id: id(1),
            outcome: Outcome::ok(&json!({"echo": "hi", "nested": [1, 2.5, null, {"a": true}]}))
                .unwrap(),
        },
        AgentMessage::Result {
            command_id: id(2),
            outcome: Outcome::error("role_missing", "this agent does not serve dns", false),
        },
        AgentMessage::Metrics(metrics()),
        AgentMessage::Heartbeat { sent_at: at() },
        AgentMessage::RenewCertificate {
            csr_pem: Text::parse(
                "-----BEGIN CERTIFICATE REQUEST-----\nMII…\n-----END CERTIFICATE REQUEST-----\n",
            )
            .unwrap(),
        },
        AgentMessage::CertificateStatus(certificate_status()),
    ]
}

fn certificate_status() -> CertificateStatus {
    CertificateStatus {
        domain: DomainName::parse("shop.example").unwrap(),
        issuer: Text::parse("CN=Pebble Intermediate CA 2f1b3c").unwrap(),
        serial: Label::parse("4f2a9c").unwrap(),
        not_before: at(),
        not_after: at() + chrono::TimeDelta::days(90),
        renew_at: at() + chrono::TimeDelta::days(60),
        failures: 2,
        last_error: Some(
            Text::parse("acme_challenge_failed: www.shop.example: connection refused").unwrap(),
        ),
        next_attempt_at: at() + chrono::TimeDelta::days(61),
        recorded_at: at() + chrono::TimeDelta::days(60),
    }
}

#[test]
fn a_certificate_status_has_its_wire_shape_and_bounds() {
    let v: Value = serde_json::from_str(
        &AgentMessage::CertificateStatus(certificate_status())
            .encode()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["type"], "certificate_status");
    assert_eq!(v["domain"], "shop.example");
    assert_eq!(v["serial"], "4f2a9c");
    assert_eq!(v["failures"], 2);
    assert_eq!(v["notAfter"], "2027-02-22T12:30:05Z");
    assert_eq!(v["nextAttemptAt"], "2027-01-24T12:30:05Z");
    // What an agent may make the panel store is bounded, and the domain is a domain.
    for (field, bad) in [
        ("domain", json!("../etc")),
        ("serial", json!("x".repeat(65))),
        ("issuer", json!("x".repeat(1025))),
        ("lastError", json!("x".repeat(2049))),
        ("failures", json!(-1)),
    ] {
        let mut wrong = v.clone();
        wrong[field] = bad;
        assert!(
            AgentMessage::decode(&wrong.to_string()).is_err(),
            "{field} refused"
        );
    }
}

fn every_panel_message() -> Vec<PanelMessage> {
    vec![
        PanelMessage::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            agent_id: id(7),
            server_id: id(8),
            heartbeat_secs: 15,
            metrics_secs: 60,
        }),
        PanelMessage::Command(CommandEnvelope {
            command_id: id(9),
            issued_at: at(),
            deadline_secs: 30,
            command: Ping {
                echo: Text::parse("héllo").unwrap(),
            }
            .into(),
        }),
        PanelMessage::Heartbeat { sent_at: at() },
        PanelMessage::CertificateRenewed {
            certificate_pem: Text::parse("-----BEGIN CERTIFICATE-----\n…").unwrap(),
        },
        PanelMessage::Goodbye {
            reason: Text::parse("replaced by a newer connection").unwrap(),
        },
    ]
}

#[test]
fn every_agent_message_round_trips() {
    for message in every_agent_message() {
        let text = message.encode().unwrap();
        assert_eq!(AgentMessage::decode(&text).unwrap(), message, "{text}");
    }
}

#[test]
fn every_panel_message_round_trips() {
    for message in every_panel_message() {
        let text = message.encode().unwrap();
        assert_eq!(PanelMessage::decode(&text).unwrap(), message, "{text}");
    }
}

#[test]
fn wire_shape_is_tagged_by_type_with_camel_case_fields() {
    let v: Value = serde_json::from_str(&hello().encode().unwrap()).unwrap();
    assert_eq!(
        v,
        json!({
            "type": "hello",
            "protocolVersion": 2,
            "agentVersion": "0.1.0",
            "hostname": "srv1-web",
            "roles": ["web", "backup"],
        })
    );

    let command = &every_panel_message()[1];
    let v: Value = serde_json::from_str(&command.encode().unwrap()).unwrap();
    assert_eq!(
        v,
        json!({
            "type": "command",
            "commandId": id(9),
            "issuedAt": "2026-11-24T12:30:05Z",
            "deadlineSecs": 30,
            "command": {"kind": "ping", "echo": "héllo"},
        })
    );

    let result = AgentMessage::Result {
        command_id: id(3),
        outcome: Outcome::error("busy", "apt is locked", true),
    };
    let v: Value = serde_json::from_str(&result.encode().unwrap()).unwrap();
    assert_eq!(
        v,
        json!({
            "type": "result",
            "commandId": id(3),
            "outcome": {"status": "error", "code": "busy", "message": "apt is locked", "retryable": true},
        })
    );

    let v: Value =
        serde_json::from_str(&AgentMessage::Metrics(metrics()).encode().unwrap()).unwrap();
    assert_eq!(v["type"], "metrics");
    assert_eq!(v["memoryTotalBytes"], 4u64 << 30);
    assert_eq!(v["disks"][0]["usedBytes"], 10u64 << 30);
    assert_eq!(v["services"]["php8.3-fpm"], "failed");
}

/// Rejected agent messages: (what, input).
fn agent_rejections() -> Vec<(&'static str, String)> {
    vec![
        ("empty input", String::new()),
        ("not JSON", "hello".into()),
        ("truncated JSON", r#"{"type":"heartbeat","sentAt":"#.into()),
        ("JSON array", "[1,2]".into()),
        ("JSON null", "null".into()),
        ("no type", r#"{"commandId":"00000000-0000-0000-0000-000000000001"}"#.into()),
        ("unknown type", r#"{"type":"format_disk"}"#.into()),
        ("type of the other direction", r#"{"type":"goodbye","reason":"x"}"#.into()),
        ("type in the wrong case", r#"{"type":"Heartbeat","sentAt":"2026-11-24T12:30:05Z"}"#.into()),
        (
            "hello without protocolVersion",
            r#"{"type":"hello","agentVersion":"0.1.0","hostname":"a","roles":[]}"#.into(),
        ),
        (
            "hello with a protocolVersion that is not a number",
            r#"{"type":"hello","protocolVersion":"1","agentVersion":"0.1.0","hostname":"a","roles":[]}"#.into(),
        ),
        (
            "hello with an extra field",
            r#"{"type":"hello","protocolVersion":1,"agentVersion":"0.1.0","hostname":"a","roles":[],"admin":true}"#.into(),
        ),
        (
            "hello with an unknown role",
            r#"{"type":"hello","protocolVersion":1,"agentVersion":"0.1.0","hostname":"a","roles":["root"]}"#.into(),
        ),
        (
            "hello with a hostname that is not one",
            r#"{"type":"hello","protocolVersion":1,"agentVersion":"0.1.0","hostname":"a b;rm","roles":[]}"#.into(),
        ),
        (
            "hello with an empty agent version",
            r#"{"type":"hello","protocolVersion":1,"agentVersion":"","hostname":"a","roles":[]}"#.into(),
        ),
        (
            "struct variant with an extra field",
            r#"{"type":"accepted","commandId":"00000000-0000-0000-0000-000000000001","extra":1}"#.into(),
        ),
        ("struct variant missing a field", r#"{"type":"accepted"}"#.into()),
        (
            "command id that is not a uuid",
            r#"{"type":"accepted","commandId":"42"}"#.into(),
        ),
        (
            "percent above 100",
            r#"{"type":"progress","commandId":"00000000-0000-0000-0000-000000000001","message":"","percent":101}"#.into(),
        ),
        (
            "outcome without status",
            r#"{"type":"result","commandId":"00000000-0000-0000-0000-000000000001","outcome":{"data":1}}"#.into(),
        ),
        (
            "outcome error without retryable",
            r#"{"type":"result","commandId":"00000000-0000-0000-0000-000000000001","outcome":{"status":"error","code":"x","message":"y"}}"#.into(),
        ),
        (
            "outcome with an extra field",
            r#"{"type":"result","commandId":"00000000-0000-0000-0000-000000000001","outcome":{"status":"ok","data":1,"x":2}}"#.into(),
        ),
        (
            "metrics with a negative byte count",
            r#"{"type":"metrics","collectedAt":"2026-11-24T12:30:05Z","cpuPercent":1,"memoryUsedBytes":-1,"memoryTotalBytes":1,"load1":0,"load5":0,"load15":0,"uptimeSecs":1,"disks":[],"services":{}}"#.into(),
        ),
        (
            "heartbeat with a bad timestamp",
            r#"{"type":"heartbeat","sentAt":"yesterday"}"#.into(),
        ),
        (
            "a value nested beyond the parser's depth limit",
            format!(
                r#"{{"type":"result","commandId":"00000000-0000-0000-0000-000000000001","outcome":{{"status":"ok","data":{}1{}}}}}"#,
                "[".repeat(100_000),
                "]".repeat(100_000)
            ),
        ),
        (
            "a panel command sent as an agent message",
            r#"{"type":"command","commandId":"00000000-0000-0000-0000-000000000001","issuedAt":"2026-11-24T12:30:05Z","deadlineSecs":1,"command":{"kind":"ping","echo":"x"}}"#.into(),
        ),
    ]
}

fn panel_rejections() -> Vec<(&'static str, String)> {
    let envelope = |command: &str| {
        format!(
            r#"{{"type":"command","commandId":"00000000-0000-0000-0000-000000000001","issuedAt":"2026-11-24T12:30:05Z","deadlineSecs":30,"command":{command}}}"#
        )
    };
    vec![
        ("unknown type", r#"{"type":"hello","protocolVersion":1}"#.into()),
        (
            "welcome without protocolVersion",
            r#"{"type":"welcome","agentId":"00000000-0000-0000-0000-000000000001","serverId":"00000000-0000-0000-0000-000000000001","heartbeatSecs":15,"metricsSecs":60}"#.into(),
        ),
        ("unknown command kind", envelope(r#"{"kind":"rm_rf","path":"/"}"#)),
        ("command without kind", envelope(r#"{"echo":"x"}"#)),
        ("command with an extra field", envelope(r#"{"kind":"ping","echo":"x","sudo":true}"#)),
        ("ping without echo", envelope(r#"{"kind":"ping"}"#)),
        (
            "ping echo of 1025 characters",
            envelope(&format!(r#"{{"kind":"ping","echo":"{}"}}"#, "é".repeat(1025))),
        ),
        (
            "envelope with an extra field",
            r#"{"type":"command","commandId":"00000000-0000-0000-0000-000000000001","issuedAt":"2026-11-24T12:30:05Z","deadlineSecs":30,"command":{"kind":"ping","echo":""},"priority":1}"#.into(),
        ),
        (
            "negative deadline",
            r#"{"type":"command","commandId":"00000000-0000-0000-0000-000000000001","issuedAt":"2026-11-24T12:30:05Z","deadlineSecs":-1,"command":{"kind":"ping","echo":""}}"#.into(),
        ),
        (
            "goodbye reason too long",
            format!(r#"{{"type":"goodbye","reason":"{}"}}"#, "r".repeat(1025)),
        ),
    ]
}

#[test]
fn malformed_or_unknown_agent_messages_are_errors() {
    for (what, input) in agent_rejections() {
        match AgentMessage::decode(&input) {
            Ok(m) => panic!("{what}: accepted as {m:?}"),
            Err(e) => {
                let text = e.to_string();
                assert!(text.len() < 400, "{what}: error message too long: {text}");
                assert!(!text.contains('\n'), "{what}: multi-line error: {text}");
            }
        }
    }
}

#[test]
fn malformed_or_unknown_panel_messages_are_errors() {
    for (what, input) in panel_rejections() {
        if let Ok(m) = PanelMessage::decode(&input) {
            panic!("{what}: accepted as {m:?}");
        }
    }
}

#[test]
fn errors_say_what_kind_of_problem_it_was() {
    assert!(matches!(
        AgentMessage::decode("{"),
        Err(ProtocolError::Malformed { .. })
    ));
    let e = AgentMessage::decode(r#"{"type":"format_disk"}"#).unwrap_err();
    assert!(matches!(e, ProtocolError::Invalid { .. }), "{e:?}");
    assert!(e.to_string().contains("format_disk"), "{e}");
    let e = AgentMessage::decode(
        r#"{"type":"hello","agentVersion":"0.1.0","hostname":"a","roles":[]}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("protocolVersion"), "{e}");
    let e = AgentMessage::decode(
        r#"{"type":"accepted","commandId":"00000000-0000-0000-0000-000000000001","sneaky":1}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("sneaky"), "{e}");
}

#[test]
fn an_unknown_type_name_is_quoted_only_in_part() {
    let input = format!(r#"{{"type":"{}"}}"#, "x".repeat(100_000));
    let e = AgentMessage::decode(&input).unwrap_err();
    assert!(e.to_string().len() < 400, "{}", e.to_string().len());
}

#[test]
fn oversized_messages_are_refused_before_parsing() {
    // Valid JSON of the right shape, just too big: the limit alone refuses it.
    let padding = " ".repeat(MAX_MESSAGE_BYTES);
    let input = format!(r#"{{"type":"heartbeat","sentAt":"2026-11-24T12:30:05Z"}}{padding}"#);
    assert!(matches!(
        AgentMessage::decode(&input),
        Err(ProtocolError::TooLarge {
            max: MAX_MESSAGE_BYTES,
            ..
        })
    ));
    assert!(matches!(
        PanelMessage::decode(&input),
        Err(ProtocolError::TooLarge { .. })
    ));
    // Exactly at the limit is fine.
    let exact = r#"{"type":"heartbeat","sentAt":"2026-11-24T12:30:05Z"}"#;
    let input = format!("{exact}{}", " ".repeat(MAX_MESSAGE_BYTES - exact.len()));
    assert!(AgentMessage::decode(&input).is_ok());
}

#[test]
fn the_sender_refuses_to_encode_an_oversized_message() {
    let big = AgentMessage::Result {
        command_id: id(1),
        outcome: Outcome::ok(&"x".repeat(MAX_MESSAGE_BYTES)).unwrap(),
    };
    assert!(matches!(big.encode(), Err(ProtocolError::TooLarge { .. })));
}

#[test]
fn unknown_service_states_do_not_break_a_report() {
    let mut v: Value =
        serde_json::from_str(&AgentMessage::Metrics(metrics()).encode().unwrap()).unwrap();
    v["services"]["nginx"] = json!("maintenance");
    match AgentMessage::decode(&v.to_string()).unwrap() {
        AgentMessage::Metrics(m) => assert_eq!(m.services["nginx"], ServiceState::Unknown),
        other => panic!("{other:?}"),
    }
}

#[test]
fn commands_declare_their_kind_role_and_output() {
    let ping = Ping {
        echo: Text::parse("abc").unwrap(),
    };
    assert_eq!(ping.required_role(), None);
    let command: Command = ping.clone().into();
    assert_eq!(command.kind(), "ping");
    assert_eq!(command.required_role(), None);
    // kind() is the wire tag.
    let v = serde_json::to_value(&command).unwrap();
    assert_eq!(v["kind"], command.kind());

    let outcome = Outcome::ok(&Pong {
        echo: ping.echo.clone(),
    })
    .unwrap();
    let pong = outcome.output::<Ping>().unwrap().unwrap();
    assert_eq!(pong.echo.as_str(), "abc");
    assert!(Outcome::error("x", "y", false).output::<Ping>().is_none());
}

#[test]
fn outcome_error_cuts_instead_of_failing() {
    match Outcome::error("bad\ncode", &"m".repeat(20_000), false) {
        Outcome::Error { code, message, .. } => {
            assert_eq!(code.as_str(), "badcode");
            assert_eq!(message.as_str().chars().count(), 16_384);
        }
        other => panic!("{other:?}"),
    }
    match Outcome::error("", "", true) {
        Outcome::Error { code, .. } => assert_eq!(code.as_str(), "error"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn roles_are_lowercase_words() {
    let all = serde_json::to_value(Role::ALL).unwrap();
    assert_eq!(all, json!(["web", "dns", "mail", "db", "backup"]));
    for role in Role::ALL {
        assert_eq!(serde_json::to_value(role).unwrap(), role.as_str());
    }
}

#[test]
fn host_names() {
    for (input, stored) in [
        ("srv1-web", "srv1-web"),
        ("SRV1.Example.COM.", "srv1.example.com"),
        ("localhost", "localhost"),
        ("10-0-0-1", "10-0-0-1"),
        ("a.b.123", "a.b.123"),
    ] {
        assert_eq!(Hostname::parse(input).unwrap().as_str(), stored, "{input}");
    }
    for bad in [
        "",
        ".",
        "a..b",
        "-a",
        "a-",
        "a_b",
        "a b",
        "a;b",
        "a/b",
        "é.com",
        "a\n",
        &"a".repeat(64),
        &format!("{}.b", "a.".repeat(127)),
    ] {
        assert!(Hostname::parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn enrollment_tokens() {
    let secret = "ab".repeat(32);
    let fingerprint = "0f".repeat(32);
    let token = EnrollmentToken::new(&secret, &fingerprint).unwrap();
    assert_eq!(token.ca_fingerprint(), fingerprint);
    assert_eq!(token.expose(), format!("mpe1_{secret}_{fingerprint}"));
    assert_eq!(EnrollmentToken::parse(token.expose()).unwrap(), token);
    let debug = format!("{token:?}");
    assert!(!debug.contains(&secret), "{debug}");

    for bad in [
        String::new(),
        format!("mpe2_{secret}_{fingerprint}"),
        format!("mpe1_{secret}{fingerprint}"),
        format!("mpe1_{}_{fingerprint}", &secret[1..]),
        format!("mpe1_{secret}_{}", fingerprint.to_uppercase()),
        format!("mpe1_{secret}_{fingerprint}0"),
        format!("mpe1_{secret}_{fingerprint}_x"),
        format!("mpe1_{}_{fingerprint}", "g".repeat(64)),
    ] {
        assert!(EnrollmentToken::parse(&bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn enroll_request_hides_its_token_and_checks_its_fields() {
    let token = format!("mpe1_{}_{}", "ab".repeat(32), "0f".repeat(32));
    let body = json!({"token": token, "csrPem": "pem", "hostname": "Srv1", "version": "0.1.0"});
    let req: EnrollRequest = serde_json::from_value(body).unwrap();
    assert_eq!(req.hostname.as_str(), "srv1");
    assert!(!format!("{req:?}").contains(&token));

    for (field, value) in [
        ("hostname", json!("not a host")),
        ("version", json!("v".repeat(65))),
        ("csrPem", json!("p".repeat(16_385))),
    ] {
        let mut body =
            json!({"token": token, "csrPem": "pem", "hostname": "srv1", "version": "0.1.0"});
        body[field] = value;
        assert!(
            serde_json::from_value::<EnrollRequest>(body).is_err(),
            "{field}"
        );
    }
}

#[test]
fn floats_survive_a_round_trip_exactly() {
    // Found by the fuzz target: without exact float parsing, a long mantissa decoded to a
    // value that re-encoded and re-decoded to a neighbouring one.
    let input = r#"{"type":"metrics","collectedAt":"2026-11-24T12:30:05Z","cpuPercent":12.5,"memoryUsedBytes":1,"memoryTotalBytes":4,"load1":0.25,"load5":0.5,"load15":1.07777777777777770777777700000000000000000000000000000000,"uptimeSecs":86400,"disks":[],"services":{}}"#;
    let decoded = AgentMessage::decode(input).unwrap();
    let again = AgentMessage::decode(&decoded.encode().unwrap()).unwrap();
    assert_eq!(again, decoded);
}
