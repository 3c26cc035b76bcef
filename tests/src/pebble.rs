//! Debian's `pebble` (Let's Encrypt's test CA) with `pebble-challtestsrv` as its DNS (every
//! name → 127.0.0.1 unless pointed elsewhere), on free loopback ports, so that web agents
//! obtain real certificates over a real HTTP-01 challenge. Its root changes at every start:
//! [`Pebble::root`] fetches it from the management port.

use std::{
    net::{TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};

pub const PEBBLE: &str = "/usr/bin/pebble";
pub const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port free for both TCP and UDP (a DNS server binds both).
fn free_dns_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// pebble and its DNS, on free loopback ports, killed on drop.
pub struct Pebble {
    dir: tempfile::TempDir,
    acme_port: u16,
    management_port: u16,
    dns_management_port: u16,
    children: Vec<Child>,
}

impl Pebble {
    /// `http_port`: where pebble fetches HTTP-01 challenges (the sandbox nginx's port).
    pub fn start(http_port: u16, validity_secs: u64) -> Pebble {
        for tool in [PEBBLE, CHALLTESTSRV] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: install pebble (.ci/run does)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // pebble's own TLS: a throwaway CA and a certificate for 127.0.0.1.
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "pebble TLS test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf.subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = leaf
            .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
            .unwrap();
        std::fs::write(d.join("tls-ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(d.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(d.join("key.pem"), key.serialize_pem()).unwrap();

        let (acme_port, management_port) = (free_port(), free_port());
        let (dns_port, dns_management_port) = (free_dns_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": d.join("cert.pem"),
            "privateKey": d.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }});
        std::fs::write(d.join("pebble.json"), config.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(d.join(name)).unwrap();
        let dns = Command::new(CHALLTESTSRV)
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management_port}")])
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let pebble = Command::new(PEBBLE)
            .arg("-config")
            .arg(d.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // Validate at once, and no deliberately rejected nonces: the test is about us.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // Every order validates afresh: pebble reuses half of the valid authorizations by
            // default, which would let a broken challenge pass.
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .unwrap();
        let pebble = Pebble {
            dir,
            acme_port,
            management_port,
            dns_management_port,
            children: vec![dns, pebble],
        };
        wait_until("pebble answers", Duration::from_secs(20), || {
            pebble.curl_tls(&pebble.directory()).is_some()
                && TcpStream::connect(("127.0.0.1", pebble.dns_management_port)).is_ok()
        });
        pebble
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    pub fn tls_ca(&self) -> PathBuf {
        self.dir.path().join("tls-ca.pem")
    }

    pub fn curl_tls(&self, url: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", "--cacert"])
            .arg(self.tls_ca())
            .arg(url)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The root pebble signs with (PEM), written to a file for curl.
    pub fn root(&self) -> PathBuf {
        let url = format!("https://127.0.0.1:{}/roots/0", self.management_port);
        let pem = self.curl_tls(&url).expect("pebble's root");
        assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");
        let path = self.dir.path().join("root.pem");
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// Makes `host` resolve to `ip` for pebble's validation.
    pub fn point(&self, host: &str, ip: &str) {
        let body = serde_json::json!({"host": format!("{host}."), "addresses": [ip]});
        let status = Command::new("curl")
            .args(["-sf", "--max-time", "5", "-d", &body.to_string()])
            .arg(format!(
                "http://127.0.0.1:{}/add-a",
                self.dns_management_port
            ))
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
