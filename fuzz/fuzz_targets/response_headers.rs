//! Response and request headers as a miss and a hit read them (Cache-Control, Expires, Age,
//! Vary, Cache-Groups, validators), in the text format of `tower_redis_cache_fuzz::response_case`
//! (see `tower_redis_cache::fuzzing::response_headers`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_redis_cache::fuzzing;

fuzz_target!(|data: &[u8]| {
    fuzzing::response_headers(&tower_redis_cache_fuzz::response_case(data));
});
