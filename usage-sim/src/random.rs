//! The deterministic draws every random choice of the simulator makes (the data set, injected
//! latency, failures and misbehaviors): `rnd(seed, label, ints...) =
//! splitmix64(seed ^ fnv1a64(label, ints))`, with FNV-1a 64 over the label's UTF-8 bytes followed
//! by each integer as 8 little-endian bytes. Pure: nothing depends on process state.

pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a 64 over the label bytes, then each int as 8 little-endian bytes.
pub(crate) fn fnv1a64(label: &str, ints: &[u64]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut h = OFFSET;
    let bytes = label
        .bytes()
        .chain(ints.iter().flat_map(|i| i.to_le_bytes()));
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// `rnd(label, ints...)` for one seed.
pub(crate) fn rnd(seed: u64, label: &str, ints: &[u64]) -> u64 {
    splitmix64(seed ^ fnv1a64(label, ints))
}

/// Maps a 64-bit draw to `[0, 1)` (the top 53 bits, so every value is exact in an f64).
pub(crate) fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv1a_and_fixed() {
        // FNV-1a 64 of the empty input is the offset basis; of "a" the published vector.
        assert_eq!(fnv1a64("", &[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64("a", &[]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
    }
}
