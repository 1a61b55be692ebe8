//! Arbitrary UTF-8 as TOML: `Config::from_toml` never panics, and neither its errors nor a
//! loaded config's Debug and summary show a `token` or `key` value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        usage_gateway_fuzz::check_config(text);
    }
});
