//! The error returned when a layer's configuration is invalid.

use std::fmt;

/// A configuration mistake found by [`CacheLayerBuilder::build`](crate::CacheLayerBuilder::build).
///
/// The message names the route pattern or the option at fault and says what is wrong with it:
///
/// ```
/// use tower_redis_cache::{CacheLayer, MemoryStore, Rule};
///
/// let err = CacheLayer::builder(MemoryStore::default())
///     .route("/users/{id}", Rule::get().tag("user:{uid}"))
///     .build()
///     .unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "route `/users/{id}`: tag `user:{uid}` names `{uid}`, which the pattern does not capture",
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    subject: Subject,
    problem: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    Route(String),
    Option(&'static str),
}

impl BuildError {
    pub(crate) fn route(pattern: &str, problem: impl Into<String>) -> Self {
        Self { subject: Subject::Route(pattern.to_owned()), problem: problem.into() }
    }

    pub(crate) fn option(name: &'static str, problem: impl Into<String>) -> Self {
        Self { subject: Subject::Option(name), problem: problem.into() }
    }

    /// The route pattern at fault, when the mistake is in a route.
    pub fn route_pattern(&self) -> Option<&str> {
        match &self.subject {
            Subject::Route(pattern) => Some(pattern),
            Subject::Option(_) => None,
        }
    }

    /// What is wrong, without the route or option name.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Subject::Route(pattern) => write!(f, "route `{pattern}`: {}", self.problem),
            Subject::Option(name) => write!(f, "option `{name}`: {}", self.problem),
        }
    }
}

impl std::error::Error for BuildError {}
