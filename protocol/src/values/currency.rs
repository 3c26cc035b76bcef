//! Currencies that plans are priced and paid in (Stripe's lowercase ISO 4217 codes).

use serde::{Deserialize, Serialize};

use super::error::{ValueError, ValueKind, snippet};

const KIND: ValueKind = ValueKind::Currency;

/// The currencies mPanel accepts. Deserialising re-checks this list, so a code is only
/// ever added to it, never removed, while stored prices or orders may use it.
const KNOWN: &[&str] = &[
    "usd", "eur", "gbp", "cad", "aud", "chf", "jpy", "sek", "nok", "dkk", "pln", "czk", "nzd",
    "brl", "mxn", "inr", "sgd", "hkd", "zar",
];

/// A lowercase ISO 4217 currency code from the list mPanel bills in, e.g. `eur`.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

string_value!(Currency);

impl Currency {
    /// Checks a currency code and lowercases it (`EUR` → `eur`, as Stripe spells it).
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        if input.is_empty() {
            return Err(ValueError::Empty { kind: KIND });
        }
        if input.len() != 3 || !input.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(ValueError::malformed(
                KIND,
                format!("'{}' is not a three-letter ISO 4217 code", snippet(input)),
            ));
        }
        let code = input.to_ascii_lowercase();
        if !KNOWN.contains(&code.as_str()) {
            return Err(ValueError::UnknownCurrency { code });
        }
        Ok(Self(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowercases_known_codes() {
        for code in KNOWN {
            assert_eq!(Currency::parse(code).unwrap().as_str(), *code);
            assert_eq!(
                Currency::parse(&code.to_ascii_uppercase())
                    .unwrap()
                    .as_str(),
                *code
            );
        }
    }

    #[test]
    fn refuses_unknown_and_malformed() {
        let e = Currency::parse("XYZ").unwrap_err();
        assert!(matches!(e, ValueError::UnknownCurrency { .. }));
        assert!(e.to_string().contains("unknown currency 'xyz'"), "{e}");
        for bad in ["", "eu", "euro", "e1r", "€", "us$"] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }
}
