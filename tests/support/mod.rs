//! Test support: a real `redis-server` per test, on a free loopback port.
#![allow(dead_code)]

pub mod cluster;
pub mod redis;
