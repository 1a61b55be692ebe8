//! API keys, their tag scopes, and the `Authorization` check (§8.6).
//!
//! Guarantees: a key is compared against every configured key in constant time per key (no
//! early exit on the first mismatching byte, no early exit across keys); `--auth-mode`
//! decides which header forms are admissible; a tag-scoped key sees exactly the SIMs that carry
//! at least one of its tags.

use http::HeaderValue;
use subtle::ConstantTimeEq;

use crate::options::AuthMode;

/// How a request presented its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthForm {
    Raw,
    Bearer,
}

/// Result of checking one request's `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthOutcome {
    /// Index into the configured keys, and the form used.
    Accepted(usize, AuthForm),
    Missing,
    /// Unknown key, or a form `--auth-mode` does not allow.
    Rejected,
}

/// What a key may see.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    /// Tag indices, sorted; empty means the whole organization.
    pub tags: Vec<u16>,
    /// Per SIM index, whether the key sees it; `None` means every SIM.
    pub visible: Option<Vec<bool>>,
}

impl Scope {
    pub fn organization() -> Scope {
        Scope {
            tags: Vec::new(),
            visible: None,
        }
    }

    /// The scope of a key limited to `tags`, given each SIM's tags.
    pub fn of_tags(mut tags: Vec<u16>, sim_tags: &[Vec<u16>]) -> Scope {
        tags.sort_unstable();
        tags.dedup();
        let visible = sim_tags
            .iter()
            .map(|st| st.iter().any(|t| tags.binary_search(t).is_ok()))
            .collect();
        Scope {
            tags,
            visible: Some(visible),
        }
    }

    pub fn sees_sim(&self, sim: u32) -> bool {
        match &self.visible {
            None => true,
            Some(v) => v.get(sim as usize).copied().unwrap_or(false),
        }
    }

    pub fn sees_tag(&self, tag: u16) -> bool {
        self.tags.is_empty() || self.tags.binary_search(&tag).is_ok()
    }
}

/// A configured key with its scope.
#[derive(Debug, Clone)]
pub(crate) struct ApiKey {
    pub key: String,
    pub scope: Scope,
}

/// Splits `KEY[=uuid,uuid...]` into the key and its tag UUIDs (lower-cased).
///
/// The key/tags separator is the first `=` followed by something other than `=`, so keys with
/// trailing base64 padding (`abc==`) stay whole. Everything after it must be a comma-separated
/// list of UUIDs.
pub(crate) fn parse_key_spec(spec: &str) -> Result<(String, Vec<String>), String> {
    let b = spec.as_bytes();
    let split = (0..b.len()).find(|&i| b[i] == b'=' && b.get(i + 1).is_some_and(|&c| c != b'='));
    let (key, tags) = match split {
        Some(i) => (&spec[..i], Some(&spec[i + 1..])),
        None => (spec, None),
    };
    if key.is_empty() {
        return Err(format!("key spec {spec:?} has an empty key"));
    }
    if HeaderValue::from_str(key).is_err() || key.contains(' ') {
        return Err(format!(
            "key spec {spec:?}: a key must be visible ASCII without spaces"
        ));
    }
    let tags = match tags {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|t| {
                if is_uuid(t) {
                    Ok(t.to_ascii_lowercase())
                } else {
                    Err(format!("key spec {spec:?}: {t:?} is not a tag UUID"))
                }
            })
            .collect::<Result<_, _>>()?,
    };
    Ok((key.to_owned(), tags))
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Checks an `Authorization` header against the configured keys.
pub(crate) fn authenticate(
    header: Option<&HeaderValue>,
    mode: AuthMode,
    keys: &[ApiKey],
) -> AuthOutcome {
    let Some(value) = header else {
        return AuthOutcome::Missing;
    };
    let bytes = value.as_bytes();
    let (form, candidate) = match bytes.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case(b"bearer ") => (AuthForm::Bearer, &bytes[7..]),
        _ => (AuthForm::Raw, bytes),
    };
    let allowed = match mode {
        AuthMode::Raw => form == AuthForm::Raw,
        AuthMode::Bearer => form == AuthForm::Bearer,
        AuthMode::Both => true,
    };
    let mut found = None;
    for (i, k) in keys.iter().enumerate() {
        let equal: bool = k.key.as_bytes().ct_eq(candidate).into();
        if equal && found.is_none() {
            found = Some(i);
        }
    }
    match found {
        Some(i) if allowed => AuthOutcome::Accepted(i, form),
        _ => AuthOutcome::Rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90";

    fn keys() -> Vec<ApiKey> {
        ["alpha", "beta"]
            .iter()
            .map(|k| ApiKey {
                key: (*k).to_owned(),
                scope: Scope::organization(),
            })
            .collect()
    }

    fn check(value: Option<&str>, mode: AuthMode) -> AuthOutcome {
        let header = value.map(|v| HeaderValue::from_str(v).expect("test header"));
        authenticate(header.as_ref(), mode, &keys())
    }

    #[test]
    fn key_specs_split_into_key_and_tags() {
        assert_eq!(
            parse_key_spec("k").expect("plain"),
            ("k".to_owned(), vec![])
        );
        let (k, t) = parse_key_spec(&format!("k={},{}", UUID, UUID.to_uppercase())).expect("tags");
        assert_eq!(k, "k");
        assert_eq!(t, vec![UUID.to_owned(), UUID.to_owned()]);
        assert_eq!(
            parse_key_spec("onok_1.a+b==").expect("padding").0,
            "onok_1.a+b=="
        );
    }

    #[test]
    fn bad_key_specs_are_rejected() {
        for bad in ["", "=x", "k=not-a-uuid", "k=", "has space", "k=,"] {
            if bad == "k=" {
                // A trailing '=' is padding, not an empty tag list.
                assert!(parse_key_spec(bad).is_ok());
                continue;
            }
            assert!(parse_key_spec(bad).is_err(), "spec {bad:?}");
        }
    }

    #[test]
    fn both_forms_are_accepted_in_both_mode() {
        assert_eq!(
            check(Some("beta"), AuthMode::Both),
            AuthOutcome::Accepted(1, AuthForm::Raw)
        );
        assert_eq!(
            check(Some("bEaReR alpha"), AuthMode::Both),
            AuthOutcome::Accepted(0, AuthForm::Bearer)
        );
    }

    #[test]
    fn a_disallowed_form_or_unknown_key_is_rejected() {
        assert_eq!(
            check(Some("Bearer alpha"), AuthMode::Raw),
            AuthOutcome::Rejected
        );
        assert_eq!(
            check(Some("alpha"), AuthMode::Bearer),
            AuthOutcome::Rejected
        );
        assert_eq!(check(Some("gamma"), AuthMode::Both), AuthOutcome::Rejected);
        assert_eq!(
            check(Some("Bearer  alpha"), AuthMode::Both),
            AuthOutcome::Rejected
        );
        assert_eq!(check(None, AuthMode::Both), AuthOutcome::Missing);
    }

    #[test]
    fn a_tag_scope_sees_only_sims_with_one_of_its_tags() {
        let sim_tags = vec![vec![0], vec![1, 2], vec![], vec![2]];
        let s = Scope::of_tags(vec![2], &sim_tags);
        let seen: Vec<bool> = (0..4).map(|i| s.sees_sim(i)).collect();
        assert_eq!(seen, [false, true, false, true]);
        assert!(s.sees_tag(2) && !s.sees_tag(0));
        assert!(Scope::organization().sees_sim(3));
    }
}
