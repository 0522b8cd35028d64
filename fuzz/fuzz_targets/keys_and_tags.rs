//! Entry keys, tag templates and tag keys, from a request and a route in the text format of
//! `tower_redis_cache_fuzz::key_case` (see `tower_redis_cache::fuzzing::keys_and_tags`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_redis_cache::fuzzing;

fuzz_target!(|data: &[u8]| fuzzing::keys_and_tags(&tower_redis_cache_fuzz::key_case(data)));
