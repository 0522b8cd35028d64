//! Test support: a real `redis-server` per test, on a free loopback port; an echo origin.
#![allow(dead_code)]

#[cfg(feature = "redis")]
pub mod cluster;
pub mod echo;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
pub mod sentinel;
#[cfg(any(feature = "tls-rustls-ring", feature = "tls-rustls-aws-lc-rs"))]
pub mod tls;
