//! Which stored form a caller gets: `Accept-Encoding` read as RFC 9110 §12.5.3 defines it
//! (q-values, `q=0` refusals, `*`, `identity`), without allocating.
//!
//! Written here rather than taken from a crate: the `headers` crate has no `Accept-Encoding`
//! type, and tower-http's parser is private to its compression layer; this one needs only
//! the weights of `gzip`, `identity` and `*`.

use http::header::ACCEPT_ENCODING;
use http::HeaderMap;

/// A stored form of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
}

/// A q-value in thousandths (RFC 9110 §12.4.2: at most three decimals, 0 to 1).
type Weight = u16;
const FULL: Weight = 1000;

/// What a request's `Accept-Encoding` says of the codings this cache stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Accept {
    /// The header was sent (an empty one included).
    present: bool,
    gzip: Option<Weight>,
    identity: Option<Weight>,
    any: Option<Weight>,
}

impl Accept {
    /// Reads every `Accept-Encoding` line. An element whose weight is malformed is ignored,
    /// as if not listed; of repeated elements for one coding the first counts.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut accept = Accept::default();
        for value in headers.get_all(ACCEPT_ENCODING) {
            accept.present = true;
            for element in value.as_bytes().split(|&b| b == b',') {
                let mut parts = element.split(|&b| b == b';');
                let coding = trim(parts.next().unwrap_or_default());
                if coding.is_empty() {
                    continue;
                }
                let Some(weight) = weight(parts) else {
                    continue;
                };
                let slot = if coding.eq_ignore_ascii_case(b"gzip")
                    || coding.eq_ignore_ascii_case(b"x-gzip")
                {
                    // `x-gzip` is gzip's old alias (RFC 9110 §8.4.1.3).
                    &mut accept.gzip
                } else if coding.eq_ignore_ascii_case(b"identity") {
                    &mut accept.identity
                } else if coding == b"*" {
                    &mut accept.any
                } else {
                    continue;
                };
                slot.get_or_insert(weight);
            }
        }
        accept
    }

    /// The form to serve when the answer is stored in `gzip_stored` or only as identity.
    ///
    /// gzip when the caller accepts it at least as much as identity (a tie goes to the
    /// smaller body). Identity otherwise, also when the caller refuses identity too
    /// (`identity;q=0` with no acceptable coding stored): RFC 9110 §12.5.3 lets a server send
    /// an uncoded answer then, and a usable answer beats a 406 the caller cannot act on. No
    /// `Accept-Encoding` at all gets identity, as from every common server: such callers often
    /// cannot decode anything.
    pub fn choose(&self, gzip_stored: bool) -> Coding {
        if !gzip_stored || !self.present {
            return Coding::Identity;
        }
        let gzip = self.gzip.or(self.any).unwrap_or(0);
        // Identity is always acceptable unless refused by name, or by `*` when not named; it
        // competes with a weight only when given one (by name or by `*`): `gzip;q=0.8` alone
        // asks for gzip.
        let identity = self.identity.or(self.any).unwrap_or(0);
        if gzip > 0 && gzip >= identity {
            Coding::Gzip
        } else {
            Coding::Identity
        }
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// The `q` parameter among an element's parameters (1 when absent), or `None` when malformed.
fn weight<'a>(parameters: impl Iterator<Item = &'a [u8]>) -> Option<Weight> {
    let mut weight = FULL;
    for parameter in parameters {
        let parameter = trim(parameter);
        let Some(value) = parameter
            .strip_prefix(b"q=")
            .or_else(|| parameter.strip_prefix(b"Q="))
        else {
            continue;
        };
        weight = qvalue(trim(value))?;
    }
    Some(weight)
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn qvalue(text: &[u8]) -> Option<Weight> {
    let (whole, fraction) = match text.split_first()? {
        (b'0', rest) => (0, rest),
        (b'1', rest) => (FULL, rest),
        _ => return None,
    };
    let digits = match fraction {
        [] => return Some(whole),
        [b'.', digits @ ..] if digits.len() <= 3 => digits,
        _ => return None,
    };
    let mut thousandths: Weight = 0;
    for (place, &digit) in [100, 10, 1].iter().zip(digits) {
        if !digit.is_ascii_digit() {
            return None;
        }
        thousandths += place * Weight::from(digit - b'0');
    }
    if whole == FULL && thousandths > 0 {
        return None;
    }
    Some(whole + thousandths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn choose(lines: &[&str], gzip_stored: bool) -> Coding {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(ACCEPT_ENCODING, HeaderValue::from_str(line).expect("value"));
        }
        Accept::from_headers(&headers).choose(gzip_stored)
    }

    #[test]
    fn the_best_accepted_stored_form_is_chosen() {
        use Coding::{Gzip, Identity};
        // (Accept-Encoding lines, chosen form with gzip stored) — one row per rule.
        let rows: &[(&[&str], Coding)] = &[
            // no header: identity, as every common server does
            (&[], Identity),
            // an empty header: no coding wanted (RFC 9110 §12.5.3)
            (&[""], Identity),
            // what real clients send
            (&["gzip"], Gzip),
            (&["gzip, deflate"], Gzip),
            (&["gzip, deflate, br"], Gzip),
            (&["deflate, gzip, br, zstd"], Gzip),
            (&["br"], Identity),
            // names are case-insensitive; x-gzip is gzip
            (&["GZIP"], Gzip),
            (&["x-gzip"], Gzip),
            // q-values choose; a tie goes to gzip
            (&["gzip;q=0.5, identity"], Identity),
            (&["gzip;q=0.5, identity;q=0.4"], Gzip),
            (&["gzip;q=0.5, identity;q=0.5"], Gzip),
            (&["gzip ; q=0.8"], Gzip),
            (&["gzip;q=0.001"], Gzip),
            (&["gzip;Q=1.000"], Gzip),
            (&["br;q=1, gzip;q=0.5"], Gzip),
            // q=0 refuses
            (&["gzip;q=0"], Identity),
            (&["gzip;q=0.000, identity"], Identity),
            // `*` stands for what is not named
            (&["*"], Gzip),
            (&["*;q=0.5"], Gzip),
            (&["*, gzip;q=0"], Identity),
            (&["identity, *;q=0.5"], Identity),
            // identity refused: gzip if acceptable at all
            (&["identity;q=0"], Identity),
            (&["gzip;q=0.1, identity;q=0"], Gzip),
            (&["*;q=0"], Identity),
            // the first of repeated elements counts; several lines are one list
            (&["gzip;q=0, gzip"], Identity),
            (&["identity;q=0.5", "gzip"], Gzip),
            // a malformed weight ignores its element
            (&["gzip;q=2"], Identity),
            (&["gzip;q=1.5"], Identity),
            (&["gzip;q=0.1234"], Identity),
            (&["gzip;q="], Identity),
            (&["gzip;q=.5"], Identity),
            (&["gzip;q=2, *"], Gzip),
            // other parameters are ignored; empty elements are skipped
            (&["gzip;level=9"], Gzip),
            (&[" , ,gzip"], Gzip),
        ];
        for (lines, chosen) in rows {
            assert_eq!(choose(lines, true), *chosen, "{lines:?}");
            assert_eq!(
                choose(lines, false),
                Identity,
                "{lines:?} without gzip stored"
            );
        }
    }

    #[test]
    fn qvalues_are_read_in_thousandths() {
        // (text, weight)
        let rows: &[(&[u8], Option<Weight>)] = &[
            (b"0", Some(0)),
            (b"1", Some(1000)),
            (b"0.", Some(0)),
            (b"0.5", Some(500)),
            (b"0.05", Some(50)),
            (b"0.005", Some(5)),
            (b"0.999", Some(999)),
            (b"1.0", Some(1000)),
            (b"1.000", Some(1000)),
            (b"1.001", None),
            (b"0.0000", None),
            (b"0.a", None),
            (b"", None),
            (b"-0", None),
        ];
        for (text, weight) in rows {
            assert_eq!(qvalue(text), *weight, "{:?}", String::from_utf8_lossy(text));
        }
    }
}
