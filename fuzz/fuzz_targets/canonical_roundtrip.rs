//! Arbitrary bytes as a request target `path?query`: whenever it parses (on any route), its
//! canonical form parses back to the same query, and canonicalizing is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let target = String::from_utf8_lossy(data);
    usage_gateway_fuzz::check_roundtrip(&target);
});
