//! The dns role against a real PowerDNS (pdns_server with the sqlite3 backend and its HTTP
//! API on free loopback ports, in a temp dir), checked with real DNS queries (`dig`).
//!
//! The executor is called as a library (`executors::execute`, the same entry the daemon
//! uses, role check included): the fleet tests already prove the panel → agent transport.

use std::{
    net::{TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command as Process, Stdio},
    time::{Duration, Instant},
};

use mpanel_agent::{
    config::{AgentConfig, DnsApiKey, DnsConfig},
    executors::execute,
    roles::dns::PowerDns,
};
use mpanel_protocol::{
    DomainName, EmailAddress,
    dns::{
        DefaultRecords, DeleteDnsZone, DnsRecord, RecordData, RecordName, SoaSpec, SyncDnsZone,
        SyncDnsZoneOutput, Ttl, TxtData,
    },
    messages::{Command, Outcome, PanelMessage, Role},
};

const KEY: &str = "test-api-key-5f2c";

struct Pdns {
    child: Child,
    dir: tempfile::TempDir,
    dns_port: u16,
    api_port: u16,
}

impl Drop for Pdns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port free for both UDP and TCP (pdns listens on both).
fn free_dns_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn schema() -> PathBuf {
    let p = PathBuf::from("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql");
    assert!(
        p.exists(),
        "{} is missing: install pdns-server pdns-backend-sqlite3 sqlite3 dnsutils (.ci/run does)",
        p.display()
    );
    p
}

async fn start_pdns() -> Pdns {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pdns.db");
    let status = Process::new("sqlite3")
        .arg(&db)
        .stdin(std::fs::File::open(schema()).unwrap())
        .status()
        .expect("sqlite3 runs");
    assert!(status.success());
    let dns_port = free_dns_port();
    let api_port = free_tcp_port();
    let d = dir.path().display();
    std::fs::write(
        dir.path().join("pdns.conf"),
        format!(
            "launch=gsqlite3\ngsqlite3-database={d}/pdns.db\nlocal-address=127.0.0.1\n\
             local-port={dns_port}\napi=yes\napi-key={KEY}\nwebserver=yes\n\
             webserver-address=127.0.0.1\nwebserver-port={api_port}\n\
             webserver-allow-from=127.0.0.0/8\nguardian=no\ndaemon=no\nsocket-dir={d}\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("pdns.log")).unwrap();
    let child = Process::new("pdns_server")
        .arg(format!("--config-dir={d}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("pdns_server starts");
    let mut pdns = Pdns {
        child,
        dir,
        dns_port,
        api_port,
    };
    // Ready when the API answers with our key; bounded by a deadline.
    let client = PowerDns::new(&pdns.config()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if client.probe().await.is_ok() {
            break;
        }
        if let Ok(Some(status)) = pdns.child.try_wait() {
            panic!("pdns_server exited ({status}): {}", pdns.log());
        }
        assert!(
            Instant::now() < deadline,
            "pdns API not ready: {}",
            pdns.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pdns
}

impl Pdns {
    fn config(&self) -> DnsConfig {
        DnsConfig {
            api_url: format!("http://127.0.0.1:{}/api/v1", self.api_port)
                .parse()
                .unwrap(),
            api_key: DnsApiKey::Inline(KEY.to_owned()),
            server_id: "localhost".to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pdns.log")).unwrap_or_default()
    }

    /// `dig @127.0.0.1 -p PORT name type` with `args` (`+short`).
    fn dig(&self, name: &str, kind: &str, short: bool) -> String {
        let mut cmd = Process::new("dig");
        cmd.args(["@127.0.0.1", "-p", &self.dns_port.to_string(), name, kind])
            .args(["+time=2", "+tries=2"]);
        if short {
            cmd.arg("+short");
        }
        let out = cmd.output().expect("dig runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn d(s: &str) -> DomainName {
    DomainName::parse(s).unwrap()
}

fn sync(records: Vec<DnsRecord>) -> SyncDnsZone {
    SyncDnsZone::new(
        d("example.com"),
        vec![d("ns1.mpanel.test"), d("ns2.mpanel.test")],
        SoaSpec::with_defaults(
            d("ns1.mpanel.test"),
            EmailAddress::parse("hostmaster@mpanel.test").unwrap(),
        )
        .unwrap(),
        records,
    )
    .unwrap()
}

fn defaults(ip: &str) -> Vec<DnsRecord> {
    DnsRecord::default_set(&DefaultRecords {
        web_ipv4: ip.parse().unwrap(),
        web_ipv6: Some("2001:db8::10".parse().unwrap()),
        mail_host: d("mail.example.com"),
        ttl: Ttl::new(3600).unwrap(),
    })
}

fn output(outcome: &Outcome) -> SyncDnsZoneOutput {
    match outcome.output::<SyncDnsZone>() {
        Some(Ok(o)) => o,
        _ => panic!("not a sync output: {outcome:?}"),
    }
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_owned).collect();
    v.sort();
    v
}

#[tokio::test]
async fn sync_and_delete_a_zone_served_by_a_real_powerdns() {
    let pdns = start_pdns().await;
    // The daemon's way in: agent.toml with a [dns] section and the key in a file.
    let key_file = pdns.dir.path().join("api-key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let toml = pdns.dir.path().join("agent.toml");
    std::fs::write(
        &toml,
        format!(
            "roles = [\"dns\"]\n[dns]\napi_url = \"http://127.0.0.1:{}/api/v1\"\n\
             api_key_file = \"{}\"\n",
            pdns.api_port,
            key_file.display()
        ),
    )
    .unwrap();
    let config = AgentConfig::load(Some(&toml)).unwrap();
    assert_eq!(config.roles, [Role::Dns]);

    // An agent without the role refuses.
    let first: Command = sync(defaults("192.0.2.10")).into();
    let web_only = AgentConfig {
        roles: vec![Role::Web],
        ..config.clone()
    };
    match execute(&first, &web_only).await {
        Outcome::Error { code, .. } => assert_eq!(code.as_str(), "role_not_served"),
        o => panic!("{o:?}"),
    }

    // 1. Create.
    let out = output(&execute(&first, &config).await);
    assert!(out.created && out.changed, "{out:?}");
    let serial1 = out.serial;
    assert_eq!(pdns.dig("www.example.com", "A", true).trim(), "192.0.2.10");
    assert_eq!(pdns.dig("example.com", "A", true).trim(), "192.0.2.10");
    assert_eq!(
        pdns.dig("www.example.com", "AAAA", true).trim(),
        "2001:db8::10"
    );
    assert_eq!(
        pdns.dig("example.com", "MX", true).trim(),
        "10 mail.example.com."
    );
    assert_eq!(
        pdns.dig("example.com", "TXT", true).trim(),
        "\"v=spf1 mx -all\""
    );
    assert_eq!(
        pdns.dig("_dmarc.example.com", "TXT", true).trim(),
        "\"v=DMARC1; p=quarantine\""
    );
    assert_eq!(
        sorted_lines(&pdns.dig("example.com", "NS", true)),
        ["ns1.mpanel.test.", "ns2.mpanel.test."]
    );
    let soa = pdns.dig("example.com", "SOA", true);
    assert_eq!(
        soa.trim(),
        format!("ns1.mpanel.test. hostmaster.mpanel.test. {serial1} 10800 3600 1209600 3600")
    );

    // 2. The same sync again: nothing to do, and it says so.
    let out = output(&execute(&first, &config).await);
    assert_eq!(
        out,
        SyncDnsZoneOutput {
            serial: serial1,
            created: false,
            changed: false
        }
    );

    // 3. A changed set: www moves, a record added outside mPanel is removed, serial grows.
    // (The stray record is added through the raw API, as an operator might.)
    let stray = reqwest::Client::new()
        .patch(format!(
            "http://127.0.0.1:{}/api/v1/servers/localhost/zones/example.com.",
            pdns.api_port
        ))
        .header("X-API-Key", KEY)
        .json(
            &serde_json::json!({"rrsets": [{"name": "stray.example.com.", "type": "TXT",
            "ttl": 300, "changetype": "REPLACE",
            "records": [{"content": "\"not ours\"", "disabled": false}]}]}),
        )
        .send()
        .await
        .unwrap();
    assert!(stray.status().is_success(), "{stray:?}");
    assert_eq!(
        pdns.dig("stray.example.com", "TXT", true).trim(),
        "\"not ours\""
    );
    let mut records = defaults("192.0.2.20");
    records.push(DnsRecord::new(
        RecordName::parse("blog").unwrap(),
        Ttl::new(300).unwrap(),
        RecordData::Txt {
            text: TxtData::parse("hello").unwrap(),
        },
    ));
    let second: Command = sync(records).into();
    let out = output(&execute(&second, &config).await);
    assert!(!out.created && out.changed, "{out:?}");
    assert!(out.serial > serial1, "{} > {serial1}", out.serial);
    let serial2 = out.serial;
    assert_eq!(pdns.dig("www.example.com", "A", true).trim(), "192.0.2.20");
    assert_eq!(
        pdns.dig("blog.example.com", "TXT", true).trim(),
        "\"hello\""
    );
    assert_eq!(pdns.dig("stray.example.com", "TXT", true).trim(), "");
    assert!(
        pdns.dig("example.com", "SOA", true)
            .contains(&format!(" {serial2} ")),
        "the served SOA has the new serial"
    );
    let out = output(&execute(&second, &config).await);
    assert!(!out.changed && out.serial == serial2, "{out:?}");

    // 4. Delete: the server no longer answers for the zone; deleting again is fine.
    let delete: Command = DeleteDnsZone {
        zone: d("example.com"),
    }
    .into();
    let out = execute(&delete, &config).await;
    assert!(
        out.output::<DeleteDnsZone>().unwrap().unwrap().deleted,
        "{out:?}"
    );
    let answer = pdns.dig("www.example.com", "A", false);
    assert!(
        answer.contains("status: REFUSED") || answer.contains("status: NXDOMAIN"),
        "{answer}"
    );
    let out = execute(&delete, &config).await;
    assert!(!out.output::<DeleteDnsZone>().unwrap().unwrap().deleted);
}

#[tokio::test]
async fn powerdns_rejections_and_outages_are_clear_errors() {
    let pdns = start_pdns().await;
    let good = PowerDns::new(&pdns.config()).unwrap();

    // A wrong key: rejected, not retryable.
    let mut wrong = pdns.config();
    wrong.api_key = DnsApiKey::Inline("wrong".into());
    let e = PowerDns::new(&wrong)
        .unwrap()
        .sync_zone(&sync(defaults("192.0.2.10")))
        .await
        .unwrap_err();
    assert_eq!((e.code, e.retryable), ("dns_api_rejected", false), "{e:?}");
    assert!(e.message.chars().count() < 400, "{e:?}");

    // The API down: retryable.
    assert!(good.probe().await.is_ok());
    drop(pdns);
    let e = good
        .sync_zone(&sync(defaults("192.0.2.10")))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.retryable),
        ("dns_api_unreachable", true),
        "{e:?}"
    );
    let e = good
        .delete_zone(&DeleteDnsZone {
            zone: d("example.com"),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code, "dns_api_unreachable");
}

#[test]
fn a_missing_key_file_is_a_retryable_error() {
    let config = DnsConfig {
        api_url: "http://127.0.0.1:9/api/v1".parse().unwrap(),
        api_key: DnsApiKey::File(Path::new("/nonexistent/mpanel/key").to_path_buf()),
        server_id: "localhost".into(),
    };
    let e = PowerDns::new(&config).err().expect("refused");
    assert_eq!((e.code, e.retryable), ("dns_api_key_unreadable", true));
}

#[test]
fn hostile_commands_cannot_even_be_decoded() {
    let good = PanelMessage::Command(mpanel_protocol::messages::CommandEnvelope {
        command_id: uuid::Uuid::new_v4(),
        issued_at: chrono::Utc::now(),
        deadline_secs: 60,
        command: sync(defaults("192.0.2.10")).into(),
    })
    .encode()
    .unwrap();
    assert!(PanelMessage::decode(&good).is_ok());
    for (from, to) in [
        ("v=spf1 mx -all", "v=spf1 mx -all\\nwww 60 IN A 6.6.6.6"),
        ("v=spf1 mx -all", "x\\\" ; evil"),
        ("\"name\":\"www\"", "\"name\":\"../etc\""),
        ("\"name\":\"www\"", "\"name\":\"www.\""),
        (
            "\"zone\":\"example.com\"",
            "\"zone\":\"example.com;rm -rf /\"",
        ),
        (
            "\"zone\":\"example.com\"",
            "\"zone\":\"ex\u{0430}mple.com\"",
        ),
        ("mail.example.com", "mail.example.com\\n"),
        ("192.0.2.10", "192.0.2.10 ; x"),
    ] {
        assert!(good.contains(from), "{from}");
        let hostile = good.replacen(from, to, 1);
        assert!(
            PanelMessage::decode(&hostile).is_err(),
            "decoded: {hostile}"
        );
    }
}
