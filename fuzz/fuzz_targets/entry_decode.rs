//! Stored entries: any bytes the store returns are decoded as a lookup does, and whatever
//! decodes must re-encode to itself and be served as it promises (see
//! `tower_redis_cache::fuzzing::entry_decode`). Seeds: real entries, from
//! `cargo run --example make_seeds`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_redis_cache::fuzzing;

fuzz_target!(|data: &[u8]| fuzzing::entry_decode(data));
