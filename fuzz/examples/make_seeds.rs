//! Writes real stored entries, encoded by the crate itself, as seeds for `entry_decode`:
//! one for each `response_headers` seed whose response is stored, and a few more (a
//! zstd-compressed body, trailers, tags, an empty body).
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example make_seeds [-- OUT_DIR]
//! ```
//!
//! `OUT_DIR` defaults to `fuzz/seeds/entry_decode`. `run.sh` also writes them into the working
//! corpus on every run, so that a change of the entry format never leaves the fuzzer with
//! stale seeds only.

use std::path::PathBuf;

use tower_redis_cache::fuzzing::{encoded_entry, stored_entry, EntryFields};

fn main() -> std::io::Result<()> {
    let fuzz_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::args_os()
        .nth(1)
        .map_or_else(|| fuzz_dir.join("seeds/entry_decode"), PathBuf::from);
    std::fs::create_dir_all(&out)?;

    let mut written = 0;
    let mut responses: Vec<_> =
        std::fs::read_dir(fuzz_dir.join("seeds/response_headers"))?.collect::<Result<_, _>>()?;
    responses.sort_by_key(|e| e.file_name());
    for seed in responses {
        let case = tower_redis_cache_fuzz::response_case(&std::fs::read(seed.path())?);
        if let Some(entry) = stored_entry(&case) {
            let name = format!("stored-{}", seed.file_name().to_string_lossy());
            std::fs::write(out.join(name), entry)?;
            written += 1;
        }
    }

    let json: Vec<u8> = (0..64)
        .flat_map(|i| format!("{{\"id\":{i},\"name\":\"user {i}\"}},").into_bytes())
        .collect();
    let header = |name: &str, value: &str| (name.as_bytes().to_vec(), value.as_bytes().to_vec());
    let base = EntryFields {
        status: 200,
        headers: vec![
            header("content-type", "application/json"),
            header("etag", "\"v1\""),
            header("x-many", "1"),
            header("x-many", "2"),
        ],
        stored_at_ms: 1_700_000_000_000,
        ttl_ms: 60_000,
        stale_while_revalidate_ms: 30_000,
        stale_if_error_ms: 300_000,
        revalidate_for_ms: 60_000,
        tags: vec![("users".to_owned(), 7), ("user:1".to_owned(), u64::MAX)],
        body: json.clone(),
        ..EntryFields::default()
    };
    let grpc = EntryFields {
        headers: vec![header("content-type", "application/grpc")],
        trailers: Some(vec![header("grpc-status", "0"), header("grpc-message", "")]),
        tags: Vec::new(),
        body: b"\0\0\0\0\x05hello".to_vec(),
        ..base.clone()
    };
    let empty = EntryFields {
        status: 204,
        headers: Vec::new(),
        tags: vec![("#uri:00112233445566778899aabbccddeeff".to_owned(), 1)],
        body: Vec::new(),
        ..base.clone()
    };
    let compressed = EntryFields {
        compress: true,
        headers: vec![header("content-type", "application/json"), header("vary", "accept")],
        ..base.clone()
    };
    for (name, fields) in
        [("json", base), ("grpc-trailers", grpc), ("empty-204", empty), ("zstd", compressed)]
    {
        let entry = encoded_entry(&fields).expect("the seed entries are valid");
        std::fs::write(out.join(name), entry)?;
        written += 1;
    }
    println!("{written} entries written to {}", out.display());
    Ok(())
}
