//! What the configuration holds that must never be shown: [`Secret`] (tokens and caller keys),
//! whose `Debug` hides it and whose deserializer never repeats it, the [`BaseUrl`] that hides its
//! userinfo, and the hashing of caller keys.

use std::fmt;
use std::sync::Arc;

use http::Uri;
use serde::de::{self, Deserialize, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};

/// A secret string: its `Debug` never shows it.
///
/// It is also what the raw file's secret fields (`token`, a caller's `key`) deserialize into,
/// and its deserializer never echoes its input: a value of the wrong type is refused with a
/// fixed message naming only the type expected.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The secret itself: call only where it is sent, never where it is shown.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `deserialize_any`: whatever the value is, it reaches the visitor below, so the
        // deserializer never writes a type error (with the value in it) of its own.
        deserializer.deserialize_any(SecretVisitor)
    }
}

/// The one message a secret field gives for a value that is not a string. serde's own
/// (`invalid type: sequence, expected …`, and for scalars the value itself) is never used.
const NOT_A_STRING: &str = "invalid type: expected a string";

struct SecretVisitor;

/// Takes a number or boolean as its text, as the `config` crate reads one where a string is
/// wanted (`USAGE_GATEWAY__UPSTREAM__TOKEN=12345` parses as a number).
macro_rules! as_text {
    ($($method:ident($type:ty)),* $(,)?) => {
        $(
            fn $method<E: de::Error>(self, value: $type) -> Result<Secret, E> {
                Ok(Secret::new(value.to_string()))
            }
        )*
    };
}

impl<'de> Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Secret, E> {
        Ok(Secret::new(value))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Secret, E> {
        Ok(Secret::new(value))
    }

    as_text! {
        visit_bool(bool),
        visit_i64(i64),
        visit_i128(i128),
        visit_u64(u64),
        visit_u128(u128),
        visit_f64(f64),
    }

    // Everything else is refused with the fixed message, never with what was found.

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_none<E: de::Error>(self) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Secret, D::Error> {
        Secret::deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Secret, D::Error> {
        Secret::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(de::Error::custom(NOT_A_STRING))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(de::Error::custom(NOT_A_STRING))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(de::Error::custom(NOT_A_STRING))
    }
}

/// The upstream's base URL. Its `Display` and `Debug` hide any userinfo
/// (`https://user:pass@host` shows as `https://[redacted]@host`), so wherever the URL is
/// shown (`check`, the startup line, a config dump) a credential in it is not.
#[derive(Clone, PartialEq, Eq)]
pub struct BaseUrl(pub Uri);

impl std::ops::Deref for BaseUrl {
    type Target = Uri;

    fn deref(&self) -> &Uri {
        &self.0
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&without_userinfo(&self.0.to_string()))
    }
}

impl fmt::Debug for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BaseUrl({self})")
    }
}

/// `text` with the userinfo of its authority (before an `@`) replaced by `[redacted]`.
pub fn without_userinfo(text: &str) -> std::borrow::Cow<'_, str> {
    let after_scheme = text.find("://").map_or(0, |at| at + 3);
    let authority_end = text[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |at| after_scheme + at);
    match text[after_scheme..authority_end].rfind('@') {
        Some(at) => format!(
            "{}[redacted]{}",
            &text[..after_scheme],
            &text[after_scheme + at..]
        )
        .into(),
        None => text.into(),
    }
}

/// The Redis URL of `[shared]`. It may hold a password (`redis://:pw@host`, or `?pass=` on a
/// socket), so the whole URL is a [`Secret`]; what is shown (`Display`, `Debug`) is only where
/// it leads: scheme, host and port or socket path, and database, never userinfo or a query.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    url: Secret,
    shown: Arc<str>,
}

impl RedisUrl {
    /// `url`, with `shown` already cut to what may be displayed (see `validate/shared.rs`).
    pub(super) fn new(url: Secret, shown: String) -> Self {
        Self {
            url,
            shown: shown.into(),
        }
    }

    /// The URL itself, password and all: call only where the connection is opened.
    pub fn expose(&self) -> &str {
        self.url.expose()
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.shown)
    }
}

/// Hex SHA-256 of a caller key, as `key_sha256` wants it.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secret given as a list, a table or nothing is refused by a message that names the
    /// type wanted and nothing of what was found; a number is read as its text.
    #[test]
    fn a_secret_of_the_wrong_type_is_refused_without_its_value() {
        for json in [
            "null",
            "[\"in-a-list-secret\"]",
            "[918273645]",
            "{\"in-a-table\": \"secret\"}",
        ] {
            let error = serde_json::from_str::<Secret>(json)
                .expect_err("not a string")
                .to_string();
            assert!(error.starts_with(NOT_A_STRING), "{json}: {error}");
            for shown in ["918273645", "in-a-list", "in-a-table", "secret"] {
                assert!(!error.contains(shown), "{json}: {error}");
            }
        }
        for (json, read) in [
            ("\"s3cr3t\"", "s3cr3t"),
            ("12345", "12345"),
            ("true", "true"),
        ] {
            let secret: Secret = serde_json::from_str(json).expect("a string");
            assert_eq!(secret.expose(), read);
            assert_eq!(format!("{secret:?}"), "[redacted]");
        }
    }

    #[test]
    fn userinfo_is_hidden_and_the_rest_kept() {
        for (text, shown) in [
            ("https://user:pass@host/x", "https://[redacted]@host/x"),
            ("https://host/a@b", "https://host/a@b"),
            ("https://host?q=a@b", "https://host?q=a@b"),
            ("user@host", "[redacted]@host"),
            ("https://host", "https://host"),
        ] {
            assert_eq!(without_userinfo(text), shown, "{text}");
        }
    }
}
