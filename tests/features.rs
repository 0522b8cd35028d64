//! The Cargo features keep their promises about the dependency tree: without default features
//! there is no Redis client, TLS or zstd to build, and the aws-lc-rs TLS feature alone brings no
//! ring. Read from `cargo tree`, as a user's build would resolve it.

use std::process::Command;

/// The names of the normal dependencies `cargo tree` lists with these feature arguments.
fn dependencies(features: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["tree", "--locked", "--edges", "normal", "--prefix", "none", "--format", "{p}"])
        .args(features)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("cargo tree prints text");
    text.lines().filter_map(|line| line.split_whitespace().next()).map(str::to_owned).collect()
}

fn has(tree: &[String], name: &str) -> bool {
    tree.iter().any(|dependency| dependency == name)
}

#[test]
fn without_default_features_there_is_no_redis_client_tls_or_zstd() {
    let default = dependencies(&[]);
    for name in ["fred", "rustls", "ring", "zstd"] {
        assert!(has(&default, name), "the default features bring {name}");
    }
    let none = dependencies(&["--no-default-features"]);
    for name in ["fred", "rustls", "ring", "aws-lc-rs", "zstd", "zstd-sys"] {
        assert!(!has(&none, name), "{name} is built without default features");
    }
    assert!(has(&none, "moka"), "the in-process store is always there");
}

#[test]
fn each_tls_feature_brings_its_own_provider_only() {
    let aws_lc_rs = dependencies(&["--no-default-features", "--features", "tls-rustls-aws-lc-rs"]);
    assert!(has(&aws_lc_rs, "aws-lc-rs") && has(&aws_lc_rs, "fred"));
    assert!(!has(&aws_lc_rs, "ring"), "ring comes with tls-rustls-aws-lc-rs");
    let ring = dependencies(&["--no-default-features", "--features", "tls-rustls-ring"]);
    assert!(has(&ring, "ring") && !has(&ring, "aws-lc-rs"), "aws-lc-rs comes with tls-rustls-ring");
    let redis_only = dependencies(&["--no-default-features", "--features", "redis"]);
    assert!(has(&redis_only, "fred") && !has(&redis_only, "rustls"), "TLS comes with redis alone");
}
