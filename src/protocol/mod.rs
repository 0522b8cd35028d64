//! The HTTP caching rules, as pure functions of headers: what a request allows, what a response
//! may be stored as and for how long, and how the cache says what it did.
//!
//! Nothing here touches the layer's shared state or the store, so each rule is unit-tested on
//! header maps alone. May import: `outcome`, `rules` (a route's settings) and `grpc` (its
//! status checks); never `service`, `entry` or `store`.

pub(crate) mod cache_control;
pub(crate) mod cache_status;
pub(crate) mod conditional;
pub(crate) mod freshness;
pub(crate) mod groups;
pub(crate) mod guard;
pub(crate) mod range;
pub(crate) mod storable;
pub(crate) mod time_fields;
pub(crate) mod value;
pub(crate) mod vary;
