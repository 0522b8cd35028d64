//! `Cache-Control` field lines, one per line of the input, parsed as the layer parses them and
//! held to an independent recogniser of the RFC 9111 grammar: the parser reads the field
//! exactly when the grammar accepts it, and then finds the directives the grammar finds (see
//! `tower_redis_cache::fuzzing::cache_control`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_redis_cache::fuzzing;

fuzz_target!(|data: &[u8]| fuzzing::cache_control(data));
