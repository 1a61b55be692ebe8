//! Arbitrary bytes as a request target `path?query`: the query against each of the three routes,
//! the path as given and as each route's path parameter, and the whole through `classify`.
//! Parsing never panics; whatever parses has a valid canonical form.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The gateway only ever sees `&str` targets (hyper has checked them); invalid UTF-8 is
    // kept as U+FFFD so that every input still exercises the parser.
    let target = String::from_utf8_lossy(data);
    usage_gateway_fuzz::check_query(&target);
});
