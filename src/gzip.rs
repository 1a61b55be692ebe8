//! gzip (RFC 1952) for answers: compressing a body once when it is stored, and decoding an
//! upstream's gzip body within a bound, so a small hostile body (a "gzip bomb") is a clean
//! error and never a large allocation.
//!
//! Only gzip: it is what every HTTP client asks for (Python requests, httpx, Node's fetch, .NET,
//! curl, browsers all list it), and what the upstream is asked for. Brotli and zstd would save
//! 10-20% more on JSON, but every client that accepts them accepts gzip too, so a second stored
//! form would cost the cache memory (and each fill a slow high-level compression) for a small
//! gain; `deflate` is ambiguous in practice (zlib or raw) and no client prefers it.

use std::io::{Read, Write};

use bytes::Bytes;
use flate2::Compression;

/// The level answers are stored at: a high one, because a fill pays it once and every hit after
/// it serves fewer bytes. 8, not 9: with the zlib-rs backend, level 9 comes out larger on usage
/// JSON. Measured on a 400-record page (109,030 B): level 6 (Varnish's default) 24,865 B in
/// 2.8 ms, level 8 23,778 B in 3.4 ms, level 9 26,085 B; C zlib's level 6 gives 25,958 B.
pub const STORE_LEVEL: u32 = 8;

/// An upstream answer's body exactly as the upstream sent it, gzip-encoded: a response
/// extension the upstream client sets on a 200 whose body (the decoded form) it validated, so
/// the cache can keep the upstream's bytes instead of compressing the answer again.
#[derive(Debug, Clone)]
pub struct AsSent(pub Bytes);

/// Why a gzip body was not decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// It decodes to more than the bound.
    #[error("a gzip body decoding to more than the gateway reads")]
    TooLarge,
    /// It is not one whole gzip member: corrupt, cut short, or followed by more bytes.
    #[error("a gzip body that does not decode")]
    Invalid,
}

impl DecodeError {
    /// The reason, for an `upstream_invalid_response` error.
    pub fn reason(self) -> &'static str {
        match self {
            DecodeError::TooLarge => "a gzip body decoding to more than the gateway reads",
            DecodeError::Invalid => "a gzip body that does not decode",
        }
    }
}

/// `plain` gzip-compressed at `level` (no file name, modification time 0: the same input gives
/// the same bytes).
pub fn compress(plain: &[u8], level: u32) -> Bytes {
    // JSON shrinks several times; a quarter of the input avoids most regrowth.
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(plain.len() / 4 + 64),
        Compression::new(level),
    );
    encoder
        .write_all(plain)
        .expect("writing into a Vec cannot fail");
    Bytes::from(encoder.finish().expect("writing into a Vec cannot fail"))
}

/// Decodes one whole gzip member of at most `limit` decoded bytes.
///
/// Trailing bytes after the member (a second member, or garbage) are refused: decoders differ
/// on them (some read every member, some stop at the first), and the gateway serves these
/// bytes as they came, so every client must read from them exactly what was validated.
pub fn decode(gzip: &[u8], limit: usize) -> Result<Bytes, DecodeError> {
    let mut decoder = flate2::bufread::GzDecoder::new(gzip);
    // Never more than `limit + 1` bytes are produced, whatever the body claims.
    let mut plain = Vec::with_capacity(gzip.len().saturating_mul(4).min(limit));
    let read = (&mut decoder)
        .take(limit as u64 + 1)
        .read_to_end(&mut plain)
        .map_err(|_| DecodeError::Invalid)?;
    if read > limit {
        return Err(DecodeError::TooLarge);
    }
    if !decoder.into_inner().is_empty() {
        return Err(DecodeError::Invalid);
    }
    Ok(Bytes::from(plain))
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &[u8] = br#"{"usage":[{"sim_id":"000000001","bytes":1234},{"sim_id":"000000002","bytes":1234}],"pagination":{"has_more":false}}"#;

    #[test]
    fn what_is_compressed_decodes_to_itself() {
        let gzip = compress(JSON, STORE_LEVEL);
        assert_eq!(decode(&gzip, JSON.len()).expect("decodes"), JSON);
        assert_eq!(gzip, compress(JSON, STORE_LEVEL), "deterministic");
    }

    #[test]
    fn decoding_stops_at_the_limit() {
        // A megabyte of zeros is about a kilobyte of gzip: the shape of a bomb.
        let bomb = compress(&vec![0u8; 1024 * 1024], STORE_LEVEL);
        assert!(bomb.len() < 4096);
        assert_eq!(decode(&bomb, 64 * 1024), Err(DecodeError::TooLarge));
        assert_eq!(decode(&bomb, 1024 * 1024).map(|b| b.len()), Ok(1024 * 1024));
        assert_eq!(
            decode(&compress(JSON, 1), JSON.len() - 1),
            Err(DecodeError::TooLarge)
        );
    }

    #[test]
    fn anything_but_one_whole_member_is_invalid() {
        let gzip = compress(JSON, STORE_LEVEL);
        let mut two_members = gzip.to_vec();
        two_members.extend_from_slice(&gzip);
        let mut trailing = gzip.to_vec();
        trailing.push(b'x');
        // (body, why it is refused)
        let rows: [(&[u8], &str); 5] = [
            (JSON, "not gzip at all"),
            (&gzip[..gzip.len() / 2], "cut short"),
            (&gzip[..gzip.len() - 1], "the trailer cut"),
            (&two_members, "a second member"),
            (&trailing, "trailing garbage"),
        ];
        for (body, why) in rows {
            assert_eq!(decode(body, 1 << 20), Err(DecodeError::Invalid), "{why}");
        }
    }
}
