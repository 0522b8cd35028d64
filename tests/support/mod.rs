//! Test support: a real `redis-server` per test, on a free loopback port; an echo origin.
#![allow(dead_code)]

pub mod cluster;
pub mod echo;
pub mod redis;
