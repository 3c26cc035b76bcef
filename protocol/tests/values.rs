//! The value types as the panel and agent see them: through the crate root and serde.

use std::path::Path;

use mpanel_protocol::{
    Currency, DomainName, EmailAddress, PhpVersion, SafeRelativePath, Slug, SystemUser, ValueError,
    ValueKind,
};

/// Inputs that have broken real control panels: shell, config and path injection.
const HOSTILE: &[&str] = &[
    "a.com;rm -rf /",
    "a.com && reboot",
    "a.com|id",
    "$(id).com",
    "`id`.com",
    "a.com\nserver {",
    "a.com\r\n",
    "a.com\0",
    "a\0b",
    "../etc",
    "a/../b",
    "/etc/passwd",
    "a.com/..",
    "a.com\\x",
    "a.com'",
    "a.com\"",
    "a.com:25",
    "a.com #",
    " a.com",
    "a.com ",
    "\ta.com",
];

#[test]
fn domain_names_accepted() {
    for (input, stored) in [
        ("example.com", "example.com"),
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("www.shop.example.co.uk", "www.shop.example.co.uk"),
        ("my-site.io", "my-site.io"),
        ("123.example", "123.example"),
        ("a.b.c.d.e.museum", "a.b.c.d.e.museum"),
        ("xn--80ak6aa92e.com", "xn--80ak6aa92e.com"),
        ("example.xn--p1ai", "example.xn--p1ai"),
        ("x1.c0", "x1.c0"),
    ] {
        let d = DomainName::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(d.as_str(), stored);
    }
}

#[test]
fn domain_names_refused() {
    let name254 = format!("{0}.{0}.{0}.{1}.com", "a".repeat(63), "b".repeat(58));
    assert_eq!(name254.len(), 254);
    let label64 = format!("{}.com", "a".repeat(64));
    let table: Vec<&str> = [
        "",
        ".",
        "com",
        "localhost",
        "-a.com",
        "a-.com",
        "a.-com",
        "a..com",
        ".a.com",
        "a.com..",
        "exаmple.com", // Cyrillic а (U+0430)
        "ехample.com", // Cyrillic е and х
        "bücher.de",
        "a_b.com",
        "a.c",
        "1.2.3.4",
        "example.123",
        "*.example.com",
        "a.com/",
        "a@b.com",
        "a. com",
        "a.co\u{200b}m", // zero-width space
        name254.as_str(),
        label64.as_str(),
    ]
    .into_iter()
    .chain(HOSTILE.iter().copied())
    .collect();
    for input in table {
        let e = DomainName::parse(input).expect_err(input);
        assert_eq!(e.kind(), ValueKind::DomainName, "{input:?}");
        assert!(e.to_string().starts_with("domain name: "), "{e}");
    }
}

#[test]
fn domain_error_messages_name_the_rule() {
    let msg = |s: &str| DomainName::parse(s).unwrap_err().to_string();
    assert!(msg("com").contains("at least two labels"));
    assert!(msg("a..com").contains("empty label"));
    assert!(msg("-a.com").contains("hyphen"));
    assert!(msg("exаmple.com").contains("not ASCII"));
    assert!(msg("a.com;rm -rf /").contains("label 'com;rm -rf /'"));
    assert!(
        msg("a.com\nserver {").contains("'\\n'"),
        "{}",
        msg("a.com\nserver {")
    );
}

#[test]
fn error_messages_echo_at_most_64_chars_of_input() {
    let long = format!("{}.com", "x_".repeat(5_000));
    for e in [
        DomainName::parse(&format!("{}.com", "a_".repeat(30))).unwrap_err(),
        DomainName::parse(&long).unwrap_err(),
        EmailAddress::parse(&"x".repeat(10_000)).unwrap_err(),
        SafeRelativePath::parse(&format!("{}\n", "a".repeat(1000))).unwrap_err(),
        Slug::parse(&format!("{}_", "a".repeat(60))).unwrap_err(),
        PhpVersion::parse(&"8".repeat(500)).unwrap_err(),
        Currency::parse(&"E".repeat(500)).unwrap_err(),
    ] {
        let msg = e.to_string();
        let longest_run = msg
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .map(str::len)
            .max()
            .unwrap();
        assert!(longest_run <= 64, "{msg}");
        assert!(msg.len() < 300, "{msg}");
    }
}

#[test]
fn every_byte_inserted_into_a_domain_is_refused_or_harmless() {
    let base = "shop.example.com";
    for byte in 0..=255u8 {
        let c = char::from(byte);
        for at in 0..=base.len() {
            let mut input = base.to_owned();
            input.insert(at, c);
            if let Ok(d) = DomainName::parse(&input) {
                assert!(
                    d.as_str().bytes().all(|b| b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b == b'.'
                        || b == b'-'),
                    "{input:?} became {d:?}"
                );
                // Whatever passed also survives a second trip through the rules unchanged.
                assert_eq!(DomainName::parse(d.as_str()).unwrap(), d);
                // And it can be turned into a user name.
                let _ = SystemUser::from_domain(&d);
            }
        }
    }
}

#[test]
fn email_addresses() {
    for (input, stored) in [
        ("info@example.com", "info@example.com"),
        ("John.Doe@Example.COM", "john.doe@example.com"),
        ("a+tag@sub.example.co.uk", "a+tag@sub.example.co.uk"),
        ("x_y%z-1@example.com", "x_y%z-1@example.com"),
        ("a@example.com.", "a@example.com"),
    ] {
        let a = EmailAddress::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(a.as_str(), stored);
    }
    let a = EmailAddress::parse("Sales@Shop.Example.com").unwrap();
    assert_eq!(a.local_part(), "sales");
    assert_eq!(a.domain(), DomainName::parse("shop.example.com").unwrap());

    let local65 = format!("{}@example.com", "a".repeat(65));
    let too_long = format!("a@{}", "b.".repeat(126) + "com");
    let table = [
        "",
        "example.com",
        "@example.com",
        "a@",
        "a@b@example.com",
        ".a@example.com",
        "a.@example.com",
        "a..b@example.com",
        "-a@example.com",
        "a b@example.com",
        "a:b@example.com",
        "\"a\"@example.com",
        "a@exаmple.com",
        "а@example.com",
        "a@com",
        "a@a..com",
        "a@example.com;rm -rf /",
        "a@example.com\nserver {",
        "a\n@example.com",
        "root@localhost",
        local65.as_str(),
        too_long.as_str(),
    ];
    for input in table {
        let e = EmailAddress::parse(input).expect_err(input);
        assert_eq!(e.kind(), ValueKind::EmailAddress, "{input:?}");
    }
}

#[test]
fn system_users() {
    for ok in [
        "alice",
        "example_com",
        "_svc",
        "web-1",
        "a",
        "u_1and1_com",
        &"a".repeat(32),
        "rooty",
        "systemd",
    ] {
        assert_eq!(SystemUser::parse(ok).unwrap().as_str(), ok);
    }
    let table = [
        "",
        "root",
        "ROOT",
        "Root",
        "www-data",
        "mpanel",
        "mpanel-agent",
        "postgres",
        "systemd-network",
        "systemd-anything",
        "_apt",
        "1user",
        "-user",
        "user-",
        "us.er",
        "us er",
        "usér",
        "user;id",
        "user\n",
        "../etc",
        "a\0b",
        "/etc/passwd",
        &"a".repeat(33),
    ];
    for input in table {
        let e = SystemUser::parse(input).expect_err(input);
        assert_eq!(e.kind(), ValueKind::SystemUser, "{input:?}");
    }
    assert!(matches!(
        SystemUser::parse("root"),
        Err(ValueError::Reserved { .. })
    ));
    assert_eq!(
        SystemUser::parse("root").unwrap_err().to_string(),
        "system user name: 'root' is reserved for the system"
    );
}

#[test]
fn system_user_from_domain_always_parses() {
    let long = format!("{}.{}.com", "a".repeat(63), "b".repeat(63));
    for domain in [
        "example.com",
        "1and1.com",
        "0.xn--p1ai",
        "systemd-x.com",
        "mpanel.agent",
        "a-b.c-d.com",
        long.as_str(),
    ] {
        let d = DomainName::parse(domain).unwrap();
        let u = SystemUser::from_domain(&d);
        assert!(u.as_str().len() <= 32, "{u}");
        assert_eq!(SystemUser::parse(u.as_str()).unwrap(), u);
        assert_eq!(SystemUser::from_domain(&d), u, "deterministic");
    }
    // Two long domains that agree in their first 24 characters still get different names.
    let a = DomainName::parse(&format!("{}.com", "a".repeat(40))).unwrap();
    let b = DomainName::parse(&format!("{}.net", "a".repeat(40))).unwrap();
    assert_ne!(SystemUser::from_domain(&a), SystemUser::from_domain(&b));
}

#[test]
fn relative_paths() {
    for ok in [
        "public_html",
        "a/b/c.txt",
        ".well-known/acme-challenge/x",
        "a b/c",
    ] {
        let p = SafeRelativePath::parse(ok).unwrap();
        assert_eq!(p.as_str(), ok);
        assert!(p.join_onto(Path::new("/srv/root")).starts_with("/srv/root"));
    }
    let table = [
        "",
        ".",
        "..",
        "../etc",
        "a/../b",
        "a/..",
        "./a",
        "a/./b",
        "/etc/passwd",
        "/",
        "a//b",
        "a/",
        "a\0b",
        "a\nb",
        "a.com\nserver {",
        "a\rb",
        "a\u{7f}b",
        "a\u{85}b",
        "a\\b",
        "..\\..\\windows",
        &"a".repeat(4097),
    ];
    for input in table {
        let e = SafeRelativePath::parse(input).expect_err(input);
        assert_eq!(e.kind(), ValueKind::SafeRelativePath, "{input:?}");
    }
}

#[test]
fn slugs_php_versions_currencies() {
    assert_eq!(
        Slug::parse("basic-hosting").unwrap().as_str(),
        "basic-hosting"
    );
    assert!(
        Slug::parse("Basic")
            .unwrap_err()
            .to_string()
            .contains("uppercase")
    );
    assert!(Slug::parse("a;b").is_err());

    assert_eq!(PhpVersion::parse("8.3").unwrap().major(), 8);
    assert!(PhpVersion::parse("8.3;id").is_err());
    assert!(PhpVersion::parse("../8.3").is_err());

    assert_eq!(Currency::parse("EUR").unwrap().as_str(), "eur");
    assert!(
        Currency::parse("btc")
            .unwrap_err()
            .to_string()
            .contains("unknown currency")
    );
}

#[test]
fn hostile_inputs_are_refused_by_every_identifier_type() {
    for input in HOSTILE {
        assert!(DomainName::parse(input).is_err(), "domain {input:?}");
        assert!(EmailAddress::parse(input).is_err(), "email {input:?}");
        assert!(SystemUser::parse(input).is_err(), "user {input:?}");
        assert!(Slug::parse(input).is_err(), "slug {input:?}");
        assert!(PhpVersion::parse(input).is_err(), "php {input:?}");
        assert!(Currency::parse(input).is_err(), "currency {input:?}");
    }
}

#[test]
fn std_conversions() {
    let d: DomainName = "Example.com".parse().unwrap();
    assert_eq!(d.to_string(), "example.com");
    assert_eq!(d.as_ref(), "example.com");
    assert_eq!(
        DomainName::try_from(String::from("example.com")).unwrap(),
        d
    );
    assert_eq!(String::from(d.clone()), "example.com");
    assert!("a..com".parse::<DomainName>().is_err());
    assert!(SystemUser::try_from(String::from("root")).is_err());
}

#[test]
fn serde_round_trips_as_plain_strings() {
    fn round_trip<T>(value: T, json: &str)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        assert_eq!(serde_json::to_string(&value).unwrap(), json);
        assert_eq!(serde_json::from_str::<T>(json).unwrap(), value);
    }
    round_trip(
        DomainName::parse("example.com").unwrap(),
        r#""example.com""#,
    );
    round_trip(
        EmailAddress::parse("a@example.com").unwrap(),
        r#""a@example.com""#,
    );
    round_trip(
        SystemUser::parse("example_com").unwrap(),
        r#""example_com""#,
    );
    round_trip(SafeRelativePath::parse("a/b").unwrap(), r#""a/b""#);
    round_trip(Slug::parse("pro").unwrap(), r#""pro""#);
    round_trip(PhpVersion::parse("8.2").unwrap(), r#""8.2""#);
    round_trip(Currency::parse("usd").unwrap(), r#""usd""#);

    // Deserialising normalises exactly like parse.
    let d: DomainName = serde_json::from_str(r#""WWW.Example.com.""#).unwrap();
    assert_eq!(d.as_str(), "www.example.com");
}

#[test]
fn serde_refuses_invalid_values() {
    fn refused<T: serde::de::DeserializeOwned + std::fmt::Debug>(json: &str, expect: &str) {
        let err = serde_json::from_str::<T>(json).expect_err(json);
        assert!(err.to_string().contains(expect), "{json}: {err}");
    }
    refused::<DomainName>(r#""a.com;rm -rf /""#, "domain name:");
    refused::<DomainName>(r#""a.com\nserver {""#, "domain name:");
    refused::<DomainName>(r#""exаmple.com""#, "not ASCII");
    refused::<EmailAddress>(r#""a@@example.com""#, "e-mail address:");
    refused::<SystemUser>(r#""root""#, "reserved");
    refused::<SafeRelativePath>(r#""../etc""#, "relative path:");
    refused::<SafeRelativePath>(r#""a\u0000b""#, "relative path:");
    refused::<Slug>(r#""Pro""#, "uppercase");
    refused::<PhpVersion>(r#""8""#, "PHP version:");
    refused::<Currency>(r#""xyz""#, "unknown currency");
    // Not a string at all.
    refused::<DomainName>("42", "invalid type");

    // Inside a larger message, the bad field makes the whole message fail.
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct CreateSite {
        domain: DomainName,
        user: SystemUser,
    }
    refused::<CreateSite>(
        r#"{"domain":"example.com","user":"ROOT"}"#,
        "system user name:",
    );
}
