//! `next_page` cursors (§8.1 `--cursor-mode`, §8.4 step 6).
//!
//! - `digits`: base64 of the zero-padded 9-digit position, like the documented example
//!   (`MDAyNDY0OTk5` = `002464999`). Any query accepts any such cursor; the caller checks the
//!   position against the view.
//! - `opaque`: base64 of `fb ff bf | 01 | position (u64 BE) | HMAC-SHA256(...)[..16]`, where the
//!   MAC covers the header, the position and the query fingerprint. The three magic bytes
//!   encode as `+/+/` and the 28-byte length forces `==` padding, so every opaque cursor
//!   exercises URL-encoding; the MAC makes tampering and cross-query reuse detectable.
//!
//! Decoding accepts the standard and URL-safe alphabets, with or without padding.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::options::CursorMode;
use crate::query::Filters;

type HmacSha256 = Hmac<Sha256>;

/// Identity of "the same query" for opaque cursors.
pub(crate) type Fingerprint = [u8; 16];

const MAGIC: [u8; 4] = [0xfb, 0xff, 0xbf, 0x01];
const MAC_LEN: usize = 16;
const TOKEN_LEN: usize = MAGIC.len() + 8 + MAC_LEN;

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_ANY_PAD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE_ANY_PAD: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Fingerprint of everything that defines a result list: the route (endpoint and path
/// parameter), `group`, the canonical filters and the caller's scope.
pub(crate) fn fingerprint(
    route: &str,
    hours: bool,
    filters: &Filters,
    scope: &[u16],
) -> Fingerprint {
    let mut h = Sha256::new();
    h.update((route.len() as u64).to_le_bytes());
    h.update(route.as_bytes());
    h.update([u8::from(hours)]);
    h.update((filters.times.len() as u64).to_le_bytes());
    for p in &filters.times {
        h.update(p.start_ms.to_le_bytes());
        h.update(p.end_ms.to_le_bytes());
    }
    h.update((filters.sim_numbers.len() as u64).to_le_bytes());
    for n in &filters.sim_numbers {
        h.update(n.to_le_bytes());
    }
    h.update((filters.countries.len() as u64).to_le_bytes());
    for c in &filters.countries {
        h.update(c);
    }
    h.update((scope.len() as u64).to_le_bytes());
    for t in scope {
        h.update(t.to_le_bytes());
    }
    let digest = h.finalize();
    let mut fp = [0u8; 16];
    fp.copy_from_slice(&digest[..16]);
    fp
}

/// Encodes and verifies cursors for one simulator instance.
pub(crate) struct Cursors {
    mode: CursorMode,
    key: [u8; 32],
}

impl std::fmt::Debug for Cursors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursors")
            .field("mode", &self.mode)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Cursors {
    /// The MAC key is derived from the seed, so cursors stay valid across restarts with the
    /// same options (determinism), and differ between seeds.
    pub fn new(mode: CursorMode, seed: u64) -> Cursors {
        let mut h = Sha256::new();
        h.update(b"usage-sim cursor key v1");
        h.update(seed.to_le_bytes());
        Cursors {
            mode,
            key: h.finalize().into(),
        }
    }

    pub fn mode(&self) -> CursorMode {
        self.mode
    }

    fn mac(&self, header_and_pos: &[u8], fp: &Fingerprint) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(header_and_pos);
        mac.update(fp);
        mac
    }

    pub fn encode(&self, pos: u64, fp: &Fingerprint) -> String {
        match self.mode {
            CursorMode::Digits => STANDARD.encode(format!("{pos:09}")),
            CursorMode::Opaque => {
                let mut token = [0u8; TOKEN_LEN];
                token[..4].copy_from_slice(&MAGIC);
                token[4..12].copy_from_slice(&pos.to_be_bytes());
                let tag = self.mac(&token[..12], fp).finalize().into_bytes();
                token[12..].copy_from_slice(&tag[..MAC_LEN]);
                STANDARD.encode(token)
            }
        }
    }

    /// The position a cursor names, if it decodes (and, when opaque, verifies for `fp`).
    pub fn decode(&self, cursor: &str, fp: &Fingerprint) -> Option<u64> {
        let bytes = STANDARD_ANY_PAD
            .decode(cursor)
            .or_else(|_| URL_SAFE_ANY_PAD.decode(cursor))
            .ok()?;
        match self.mode {
            CursorMode::Digits => {
                let text = std::str::from_utf8(&bytes).ok()?;
                (text.len() >= 9 && text.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| text.parse().ok())
                    .flatten()
            }
            CursorMode::Opaque => {
                if bytes.len() != TOKEN_LEN || bytes[..4] != MAGIC {
                    return None;
                }
                // verify_truncated_left compares in constant time.
                self.mac(&bytes[..12], fp)
                    .verify_truncated_left(&bytes[12..])
                    .ok()?;
                let mut pos = [0u8; 8];
                pos.copy_from_slice(&bytes[4..12]);
                Some(u64::from_be_bytes(pos))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: Fingerprint = [7; 16];

    #[test]
    fn digit_cursors_match_the_documented_example() {
        let c = Cursors::new(CursorMode::Digits, 1);
        assert_eq!(c.encode(2_464_999, &FP), "MDAyNDY0OTk5");
        assert_eq!(c.decode("MDAyNDY0OTk5", &FP), Some(2_464_999));
        assert_eq!(c.decode("MDAwMDAwMDAy", &[0; 16]), Some(2));
    }

    #[test]
    fn malformed_digit_cursors_are_rejected() {
        let c = Cursors::new(CursorMode::Digits, 1);
        for bad in ["", "!!!", "YWJj", "MTIz", "MDAwMDAwMDAtMQ=="] {
            assert_eq!(c.decode(bad, &FP), None, "cursor {bad:?}");
        }
    }

    #[test]
    fn opaque_cursors_contain_url_special_characters_and_round_trip() {
        let c = Cursors::new(CursorMode::Opaque, 1);
        let s = c.encode(1000, &FP);
        assert!(
            s.contains('+') && s.contains('/') && s.ends_with('='),
            "{s}"
        );
        assert_eq!(c.decode(&s, &FP), Some(1000));
        let url_safe = s.replace('+', "-").replace('/', "_").replace('=', "");
        assert_eq!(c.decode(&url_safe, &FP), Some(1000));
    }

    #[test]
    fn opaque_cursors_reject_tampering_and_other_queries() {
        let c = Cursors::new(CursorMode::Opaque, 1);
        let s = c.encode(1000, &FP);
        assert_eq!(c.decode(&s, &[8; 16]), None);
        let mut raw = STANDARD.decode(&s).expect("own encoding");
        raw[11] ^= 1;
        assert_eq!(c.decode(&STANDARD.encode(&raw), &FP), None);
        let other_seed = Cursors::new(CursorMode::Opaque, 2);
        assert_eq!(other_seed.decode(&s, &FP), None);
    }

    #[test]
    fn fingerprints_separate_different_questions() {
        let f = Filters::default();
        let a = fingerprint("usage", false, &f, &[]);
        assert_eq!(a, fingerprint("usage", false, &f, &[]));
        assert_ne!(a, fingerprint("usage", true, &f, &[]));
        assert_ne!(a, fingerprint("usage/000000001", false, &f, &[]));
        assert_ne!(a, fingerprint("usage", false, &f, &[0]));
        let dk = Filters {
            countries: vec![*b"dk"],
            ..Filters::default()
        };
        assert_ne!(a, fingerprint("usage", false, &dk, &[]));
    }
}
