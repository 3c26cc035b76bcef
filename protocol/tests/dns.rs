//! The DNS command types: what they accept, what they refuse, and that they round-trip.

use mpanel_protocol::{
    DomainName, EmailAddress,
    dns::{
        DefaultRecords, DeleteDnsZone, DnsRecord, RecordData, RecordName, RecordType, SoaSpec,
        SyncDnsZone, Ttl, TxtData,
    },
    messages::{AgentCommand, Command, CommandEnvelope, PanelMessage, Role},
};
use serde_json::{Value, json};

fn d(s: &str) -> DomainName {
    DomainName::parse(s).unwrap()
}

fn soa() -> SoaSpec {
    SoaSpec::with_defaults(
        d("ns1.mpanel.test"),
        EmailAddress::parse("hostmaster@mpanel.test").unwrap(),
    )
    .unwrap()
}

fn sync_json(records: Value) -> Value {
    json!({
        "zone": "example.com",
        "nameservers": ["ns1.mpanel.test", "ns2.mpanel.test"],
        "soa": {"primaryNs": "ns1.mpanel.test", "hostmaster": "hostmaster@mpanel.test",
                "refresh": 10800, "retry": 3600, "expire": 1209600, "minimum": 3600, "ttl": 3600},
        "records": records,
    })
}

#[test]
fn record_names() {
    for (input, want) in [
        ("@", Some("@")),
        ("www", Some("www")),
        ("WWW", Some("www")),
        ("_dmarc", Some("_dmarc")),
        ("_sip._tcp", Some("_sip._tcp")),
        ("a-b.c_d", Some("a-b.c_d")),
        ("", None),
        (".www", None),
        ("www.", None),
        ("a..b", None),
        ("../etc", None),
        ("-x", None),
        ("www example", None),
        ("a;b", None),
        ("a\nb", None),
        ("w\u{0430}w", None), // Cyrillic а
        ("*", None),
        ("@.www", None),
        ("a\"b", None),
    ] {
        let got = RecordName::parse(input).ok();
        assert_eq!(got.as_ref().map(|n| n.as_str()), want, "{input:?}");
    }
    assert!(RecordName::parse(&"a".repeat(64)).is_err());
    assert!(RecordName::parse(&["a"; 127].join(".")).is_ok()); // 253 chars
    assert!(RecordName::parse(&["a"; 128].join(".")).is_err());
    let zone = d("example.com");
    assert_eq!(RecordName::apex().to_fqdn(&zone), "example.com.");
    assert_eq!(
        RecordName::parse("www").unwrap().to_fqdn(&zone),
        "www.example.com."
    );
}

#[test]
fn ttls() {
    for (v, ok) in [
        (59, false),
        (60, true),
        (3600, true),
        (604_800, true),
        (604_801, false),
    ] {
        assert_eq!(Ttl::new(v).is_ok(), ok, "{v}");
    }
}

#[test]
fn txt_texts() {
    for (input, ok) in [
        ("v=spf1 mx -all", true),
        ("v=DMARC1; p=quarantine", true),
        ("", false),
        ("a\"b", false),
        ("a\\b", false),
        ("a\nb", false),
        ("a\tb", false),
        ("caf\u{e9}", false),
        ("\u{202e}x", false),
    ] {
        assert_eq!(TxtData::parse(input).is_ok(), ok, "{input:?}");
    }
    assert!(TxtData::parse(&"x".repeat(2048)).is_ok());
    assert!(TxtData::parse(&"x".repeat(2049)).is_err());
    let long = TxtData::parse(&"x".repeat(300)).unwrap();
    assert_eq!(
        long.quoted(),
        format!("\"{}\" \"{}\"", "x".repeat(255), "x".repeat(45))
    );
}

#[test]
fn record_data_round_trips_and_renders() {
    for (wire, kind, content) in [
        (
            json!({"type":"A","address":"192.0.2.10"}),
            RecordType::A,
            "192.0.2.10",
        ),
        (
            json!({"type":"AAAA","address":"2001:db8::10"}),
            RecordType::Aaaa,
            "2001:db8::10",
        ),
        (
            json!({"type":"CNAME","target":"web.example.net"}),
            RecordType::Cname,
            "web.example.net.",
        ),
        (
            json!({"type":"MX","priority":10,"exchange":"mail.example.com"}),
            RecordType::Mx,
            "10 mail.example.com.",
        ),
        (
            json!({"type":"TXT","text":"v=spf1 mx -all"}),
            RecordType::Txt,
            "\"v=spf1 mx -all\"",
        ),
        (
            json!({"type":"NS","host":"ns1.other.net"}),
            RecordType::Ns,
            "ns1.other.net.",
        ),
        (
            json!({"type":"SRV","priority":10,"weight":5,"port":5060,"target":"sip.example.com"}),
            RecordType::Srv,
            "10 5 5060 sip.example.com.",
        ),
        (
            json!({"type":"CAA","critical":false,"tag":"issue","value":"letsencrypt.org"}),
            RecordType::Caa,
            "0 issue \"letsencrypt.org\"",
        ),
    ] {
        let data: RecordData = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(data.kind(), kind);
        assert_eq!(data.content(), content);
        assert_eq!(serde_json::to_value(&data).unwrap(), wire);
    }
}

#[test]
fn hostile_record_data_cannot_be_deserialized() {
    for wire in [
        json!({"type":"A","address":"192.0.2.1\n"}),
        json!({"type":"A","address":"192.0.2.010"}),
        json!({"type":"A","address":"example.com"}),
        json!({"type":"AAAA","address":"192.0.2.1"}),
        json!({"type":"CNAME","target":"evil.com.\nwww IN A 1.2.3.4"}),
        json!({"type":"CNAME","target":"../etc/passwd"}),
        json!({"type":"CNAME","target":"ex\u{0430}mple.com"}),
        json!({"type":"MX","priority":10,"exchange":"mail.example.com; rm -rf /"}),
        json!({"type":"MX","priority":70000,"exchange":"mail.example.com"}),
        json!({"type":"TXT","text":"\" ; inject"}),
        json!({"type":"TXT","text":"a\\\" b"}),
        json!({"type":"TXT","text":"line\nbreak"}),
        json!({"type":"TXT","text":"v=spf1\u{0000}"}),
        json!({"type":"SRV","priority":1,"weight":1,"port":1,"target":"a b.com"}),
        json!({"type":"CAA","critical":false,"tag":"iodef","value":"letsencrypt.org"}),
        json!({"type":"CAA","critical":false,"tag":"issue","value":"le.org\"; x"}),
        json!({"type":"SOA","content":"x"}),
        json!({"type":"PTR","target":"example.com"}),
        json!({"type":"A","address":"192.0.2.1","extra":1}),
        json!({"type":"A"}),
    ] {
        assert!(
            serde_json::from_value::<RecordData>(wire.clone()).is_err(),
            "accepted {wire}"
        );
    }
}

#[test]
fn soa_bounds_and_rendering() {
    let s = soa();
    assert_eq!(
        s.content(7),
        "ns1.mpanel.test. hostmaster.mpanel.test. 7 10800 3600 1209600 3600"
    );
    let ns = d("ns1.mpanel.test");
    let hm = EmailAddress::parse("hostmaster@mpanel.test").unwrap();
    let ttl = Ttl::new(3600).unwrap();
    for (timers, ok) in [
        ([10_800, 3_600, 1_209_600, 3_600], true),
        ([1_199, 600, 1_209_600, 3_600], false),
        ([10_800, 10_800, 1_209_600, 3_600], false), // retry not below refresh
        ([10_800, 3_600, 86_399, 3_600], false),
        ([10_800, 3_600, 1_209_600, 59], false),
        ([10_800, 3_600, 1_209_600, 86_401], false),
    ] {
        assert_eq!(
            SoaSpec::new(ns.clone(), hm.clone(), timers, ttl).is_ok(),
            ok,
            "{timers:?}"
        );
    }
    let dotted = EmailAddress::parse("host.master@mpanel.test").unwrap();
    assert!(SoaSpec::with_defaults(ns, dotted).is_err());
}

#[test]
fn sync_command_round_trips_through_the_envelope() {
    let records = DnsRecord::default_set(&DefaultRecords {
        web_ipv4: "192.0.2.10".parse().unwrap(),
        web_ipv6: Some("2001:db8::10".parse().unwrap()),
        mail_host: d("mail.example.com"),
        ttl: Ttl::new(3600).unwrap(),
    });
    let cmd = SyncDnsZone::new(
        d("example.com"),
        vec![d("ns1.mpanel.test"), d("ns2.mpanel.test")],
        soa(),
        records,
    )
    .unwrap();
    assert_eq!(cmd.required_role(), Some(Role::Dns));
    let msg = PanelMessage::Command(CommandEnvelope {
        command_id: uuid::Uuid::from_u128(7),
        issued_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        deadline_secs: 60,
        command: cmd.clone().into(),
    });
    let text = msg.encode().unwrap();
    assert!(text.contains("\"kind\":\"sync_dns_zone\""), "{text}");
    assert_eq!(PanelMessage::decode(&text).unwrap(), msg);
    let Command::SyncDnsZone(back) = Command::from(cmd.clone()) else {
        panic!()
    };
    assert_eq!(back, cmd);
    assert_eq!(Command::from(cmd.clone()).required_role(), Some(Role::Dns));

    let del = DeleteDnsZone {
        zone: d("example.com"),
    };
    assert_eq!(Command::from(del.clone()).kind(), "delete_dns_zone");
    assert_eq!(del.required_role(), Some(Role::Dns));
}

#[test]
fn default_set_has_the_issues_records() {
    let records = DnsRecord::default_set(&DefaultRecords {
        web_ipv4: "192.0.2.10".parse().unwrap(),
        web_ipv6: None,
        mail_host: d("mail.example.com"),
        ttl: Ttl::new(3600).unwrap(),
    });
    let got: Vec<(String, String, String)> = records
        .iter()
        .map(|r| (r.name.to_string(), r.kind().to_string(), r.data.content()))
        .collect();
    let want = [
        ("@", "A", "192.0.2.10"),
        ("www", "A", "192.0.2.10"),
        ("@", "MX", "10 mail.example.com."),
        ("@", "TXT", "\"v=spf1 mx -all\""),
        ("_dmarc", "TXT", "\"v=DMARC1; p=quarantine\""),
    ];
    assert_eq!(
        got,
        want.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
    );
}

#[test]
fn zone_wide_rules() {
    let a = json!({"name":"www","ttl":3600,"data":{"type":"A","address":"192.0.2.1"}});
    assert!(serde_json::from_value::<SyncDnsZone>(sync_json(json!([a.clone()]))).is_ok());
    let bad = [
        // Apex NS belongs to `nameservers`.
        json!([{"name":"@","ttl":3600,"data":{"type":"NS","host":"ns9.evil.net"}}]),
        // CNAME at the apex, or beside another type, or twice.
        json!([{"name":"@","ttl":3600,"data":{"type":"CNAME","target":"x.net"}}]),
        json!([a.clone(), {"name":"www","ttl":3600,"data":{"type":"CNAME","target":"x.net"}}]),
        json!([{"name":"w","ttl":3600,"data":{"type":"CNAME","target":"x.net"}},
               {"name":"w","ttl":3600,"data":{"type":"CNAME","target":"y.net"}}]),
        // Duplicate record, TTLs differing within one RRset.
        json!([a.clone(), a.clone()]),
        json!([a.clone(), {"name":"www","ttl":60,"data":{"type":"A","address":"192.0.2.2"}}]),
        // Bad TTL, bad name, unknown field.
        json!([{"name":"www","ttl":5,"data":{"type":"A","address":"192.0.2.1"}}]),
        json!([{"name":"www.","ttl":3600,"data":{"type":"A","address":"192.0.2.1"}}]),
        json!([{"name":"www","ttl":3600,"data":{"type":"A","address":"192.0.2.1"},"x":1}]),
    ];
    for records in bad {
        assert!(
            serde_json::from_value::<SyncDnsZone>(sync_json(records.clone())).is_err(),
            "accepted {records}"
        );
    }
    // Too many records.
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"name":format!("h{i}"),"ttl":3600,"data":{"type":"A","address":"192.0.2.1"}}))
        .collect();
    assert!(serde_json::from_value::<SyncDnsZone>(sync_json(Value::Array(many))).is_err());
    // Nameservers: 1..=13, distinct.
    for ns in [json!([]), json!(["ns1.a.net", "ns1.a.net"])] {
        let mut v = sync_json(json!([]));
        v["nameservers"] = ns.clone();
        assert!(serde_json::from_value::<SyncDnsZone>(v).is_err(), "{ns}");
    }
    let mut v = sync_json(json!([]));
    v["nameservers"] = json!((0..14).map(|i| format!("ns{i}.a.net")).collect::<Vec<_>>());
    assert!(serde_json::from_value::<SyncDnsZone>(v).is_err());
    // A hostile zone name.
    let mut v = sync_json(json!([]));
    v["zone"] = json!("a.com;rm -rf /");
    assert!(serde_json::from_value::<SyncDnsZone>(v).is_err());
}
