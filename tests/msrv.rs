//! The crate's `rust-version` is what its dependency tree needs: no dependency that a user of
//! the crate builds (normal and build dependencies, this platform's, with every feature on)
//! declares a newer Rust.
//!
//! Read from `cargo metadata`, so a dependency update that raises the bar fails here instead of
//! in a user's build.

use std::collections::{HashMap, HashSet};
use std::process::Command;

use serde_json::Value;

/// `1.95` or `1.89.0` as comparable numbers; a missing part counts as 0.
fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text.split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn host_triple(cargo: &str) -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| {
        // Next to cargo, as rustup installs them.
        let sibling = std::path::Path::new(cargo).with_file_name("rustc");
        if sibling.exists() {
            sibling.display().to_string()
        } else {
            "rustc".to_owned()
        }
    });
    let output = Command::new(rustc).arg("-vV").output().expect("run rustc -vV");
    let text = String::from_utf8(output.stdout).expect("rustc -vV prints text");
    let host = text.lines().find_map(|line| line.strip_prefix("host: "));
    host.expect("rustc -vV names the host").to_owned()
}

#[test]
fn no_dependency_needs_a_newer_rust_than_the_crate_declares() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let host = host_triple(&cargo);
    let output = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--all-features"])
        .args(["--filter-platform", &host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata is JSON");

    let packages: HashMap<&str, &Value> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root = metadata["resolve"]["root"].as_str().expect("a root package");
    let declared = packages[root]["rust_version"].as_str().expect("the crate declares one");

    // Everything reachable from the crate by dependencies other than dev-dependencies.
    let (mut seen, mut stack) = (HashSet::new(), vec![root]);
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let kinds = dep["dep_kinds"].as_array().unwrap();
            if kinds.iter().any(|k| k["kind"].as_str() != Some("dev")) {
                stack.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    assert!(seen.len() > 20, "the walk found only {} packages", seen.len());
    let mut newer: Vec<String> = seen
        .iter()
        .map(|id| packages[id])
        .filter_map(|p| {
            let (name, needs) = (p["name"].as_str()?, p["rust_version"].as_str()?);
            (version(needs) > version(declared)).then(|| format!("{name} {needs}"))
        })
        .collect();
    newer.sort();
    assert!(
        newer.is_empty(),
        "rust-version = \"{declared}\" in Cargo.toml, but these dependencies need newer: {newer:?}"
    );
}
