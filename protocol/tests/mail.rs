//! The mail command types: what they accept, what they refuse, and that they round-trip.

use mpanel_protocol::{
    EmailAddress,
    mail::{
        CreateMailbox, DeleteMailbox, PasswordHash, QuotaMb, SetMailboxEnabled, SetMailboxPassword,
    },
    messages::{AgentCommand, Command, CommandEnvelope, PanelMessage, Role},
};
use serde_json::{Value, json};

/// `doveadm pw -s ARGON2ID -p secret` without its `{ARGON2ID}` prefix.
const HASH: &str = "$argon2id$v=19$m=65536,t=3,p=1$2Nx8nwGJlJPvrTuD0zJg+g$/TElIORDTFuTDBKrT2RvrWkNySqAEuaXD1YEu4n7pkw";

fn addr(s: &str) -> EmailAddress {
    EmailAddress::parse(s).unwrap()
}

fn envelope(command: Command) -> Value {
    let msg = PanelMessage::Command(CommandEnvelope {
        command_id: uuid::Uuid::from_u128(9),
        issued_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        deadline_secs: 60,
        command,
    });
    serde_json::from_str(&msg.encode().unwrap()).unwrap()
}

fn decode(v: &Value) -> Option<PanelMessage> {
    PanelMessage::decode(&v.to_string()).ok()
}

#[test]
fn password_hashes() {
    let salt = "2Nx8nwGJlJPvrTuD0zJg+g";
    let hash = "/TElIORDTFuTDBKrT2RvrWkNySqAEuaXD1YEu4n7pkw";
    let with = |params: &str| format!("$argon2id$v=19${params}${salt}${hash}");
    let ok = [
        HASH.to_owned(),
        with("m=19456,t=2,p=1"),
        with("m=8,t=1,p=16"),
        with("m=4194304,t=64,p=1"),
    ];
    for good in &ok {
        let h = PasswordHash::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        assert_eq!(h.as_phc(), good);
    }
    let bad = [
        String::new(),
        "secret".to_owned(),
        format!("{{ARGON2ID}}{HASH}"),
        HASH.replace("argon2id", "argon2i"),
        HASH.replace("argon2id", "ARGON2ID"),
        HASH.replace("v=19", "v=16"),
        with("t=3,m=65536,p=1"),
        with("m=65536,t=3"),
        with("m=65536,t=3,p=1,keyid=abc"),
        with("m=065536,t=3,p=1"),
        with("m=4,t=3,p=1"),
        with("m=5000000,t=3,p=1"),
        with("m=65536,t=0,p=1"),
        with("m=65536,t=3,p=17"),
        with("m=-1,t=3,p=1"),
        with("m=,t=3,p=1"),
        format!("$argon2id$v=19$m=65536,t=3,p=1${salt}="),
        format!("$argon2id$v=19$m=65536,t=3,p=1${salt}${hash}=="),
        format!("$argon2id$v=19$m=65536,t=3,p=1${salt}${hash}$x"),
        format!("$argon2id$v=19$m=65536,t=3,p=1$short${hash}"),
        format!("$argon2id$v=19$m=65536,t=3,p=1${salt}$tooshort"),
        format!("$argon2id$v=19$m=65536,t=3,p=1${salt}${}", "A".repeat(129)),
        format!("{HASH}:0:0::/root::"),
        format!("{HASH}\nroot:x:0:0::/root::"),
        format!("{HASH} x"),
        format!("{HASH}\t"),
        format!(" {HASH}"),
        HASH.replace("pkw", "pk\u{0}"),
        HASH.replace("pkw", "pk\u{0430}"), // Cyrillic а
        HASH.replace("pkw", "pk-"),
        HASH.replace("pkw", "pk_"),
        format!("$argon2id$v=19$m=65536,t=3,p=1${salt}${}", "A".repeat(300)),
    ];
    for b in &bad {
        assert!(PasswordHash::parse(b).is_err(), "accepted {b:?}");
        assert!(
            serde_json::from_value::<PasswordHash>(json!(b)).is_err(),
            "decoded {b:?}"
        );
    }
}

#[test]
fn password_hash_debug_hides_it() {
    let h = PasswordHash::parse(HASH).unwrap();
    let dbg = format!("{h:?}");
    assert!(dbg.contains("m=65536,t=3,p=1"), "{dbg}");
    assert!(
        !dbg.contains("2Nx8nwGJ") && !dbg.contains("TElIORDT"),
        "{dbg}"
    );
    let cmd = SetMailboxPassword {
        address: addr("info@example.com"),
        password_hash: h,
    };
    let dbg = format!("{:?}", Command::from(cmd));
    assert!(!dbg.contains("TElIORDT"), "{dbg}");
    let err = PasswordHash::parse(&format!("{HASH}:x"))
        .unwrap_err()
        .to_string();
    assert!(!err.contains("TElIORDT"), "{err}");
}

#[test]
fn quotas() {
    assert_eq!(QuotaMb::new(1).unwrap().get(), 1);
    assert_eq!(QuotaMb::new(1_048_576).unwrap().get(), 1_048_576);
    assert!(QuotaMb::new(0).is_err());
    assert!(QuotaMb::new(1_048_577).is_err());
}

#[test]
fn commands_round_trip() {
    let create = CreateMailbox {
        address: addr("Info@Example.COM"),
        password_hash: PasswordHash::parse(HASH).unwrap(),
        quota_mb: Some(QuotaMb::new(1024).unwrap()),
    };
    assert_eq!(create.address.as_str(), "info@example.com");
    let commands: Vec<Command> = vec![
        create.clone().into(),
        CreateMailbox {
            quota_mb: None,
            ..create.clone()
        }
        .into(),
        SetMailboxEnabled {
            address: addr("info@example.com"),
            enabled: false,
        }
        .into(),
        SetMailboxPassword {
            address: addr("info@example.com"),
            password_hash: PasswordHash::parse(HASH).unwrap(),
        }
        .into(),
        DeleteMailbox {
            address: addr("info@example.com"),
        }
        .into(),
    ];
    let kinds = [
        "create_mailbox",
        "create_mailbox",
        "set_mailbox_enabled",
        "set_mailbox_password",
        "delete_mailbox",
    ];
    for (cmd, kind) in commands.into_iter().zip(kinds) {
        assert_eq!(cmd.kind(), kind);
        assert_eq!(cmd.required_role(), Some(Role::Mail));
        let v = envelope(cmd.clone());
        assert_eq!(v["command"]["kind"], kind, "{v}");
        let Some(PanelMessage::Command(env)) = decode(&v) else {
            panic!("{v}")
        };
        assert_eq!(env.command, cmd);
    }
    assert_eq!(create.required_role(), Some(Role::Mail));
    let v = envelope(create.into());
    assert_eq!(v["command"]["passwordHash"], HASH);
    assert_eq!(v["command"]["quotaMb"], 1024);
}

#[test]
fn hostile_commands_are_not_decoded() {
    let base = envelope(
        CreateMailbox {
            address: addr("info@example.com"),
            password_hash: PasswordHash::parse(HASH).unwrap(),
            quota_mb: None,
        }
        .into(),
    );
    assert!(decode(&base).is_some());
    let with = |field: &str, value: Value| {
        let mut v = base.clone();
        v["command"][field] = value;
        v
    };
    for (field, value) in [
        ("address", json!("info@example.com:x")),
        ("address", json!("root:x:0:0::/root::@example.com")),
        ("address", json!("info@example.com\nroot@example.com")),
        ("address", json!("info example@example.com")),
        ("address", json!("info@example.com other")),
        ("address", json!("../etc@example.com")),
        ("address", json!("info@../etc")),
        ("address", json!("info@exam\u{0440}le.com")), // Cyrillic р
        ("address", json!("-x@example.com")),
        ("address", json!("info\t@example.com")),
        ("address", json!("")),
        ("passwordHash", json!("plaintext")),
        ("passwordHash", json!(format!("{HASH}\nx:y"))),
        ("passwordHash", json!(format!("{{PLAIN}}secret"))),
        ("passwordHash", json!(null)),
        ("quotaMb", json!(0)),
        ("quotaMb", json!(-1)),
        ("quotaMb", json!(4_294_967_296u64)),
        ("quotaMb", json!("10")),
        ("extra", json!(1)),
    ] {
        assert!(
            decode(&with(field, value.clone())).is_none(),
            "{field}: {value}"
        );
    }
    let mut missing = base.clone();
    missing["command"]
        .as_object_mut()
        .unwrap()
        .remove("passwordHash");
    assert!(decode(&missing).is_none());
}
