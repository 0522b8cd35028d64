//! The compiled rules: which rule, if any, a request falls under.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};

use super::template::{pattern_params, TagTemplate};
use super::{Rule, ScopeSetting};
use crate::error::BuildError;
use crate::user::IdentifyUser;

/// The layer-wide settings a rule falls back to.
pub(crate) struct RuleDefaults {
    pub(crate) ttl: Duration,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) identify: Arc<dyn IdentifyUser>,
    /// Request headers in every read rule's key.
    pub(crate) key_headers: Vec<HeaderName>,
    /// Request headers whose presence bypasses every read rule.
    pub(crate) bypass_headers: Vec<HeaderName>,
    /// The targeted cache-control fields `http_cache` rules read (RFC 9213), first first.
    pub(crate) cache_control_targets: Arc<[HeaderName]>,
}

/// A compiled read rule.
pub(crate) struct ReadRule {
    pub(crate) pattern: Arc<str>,
    pub(crate) ttl: Duration,
    pub(crate) max_ttl: Option<Duration>,
    pub(crate) upstream_cache_control: bool,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    pub(crate) tags: Vec<TagTemplate>,
    pub(crate) scope: Scope,
    /// Sorted, without repeats; shared with every request's plan that learned nothing more.
    pub(crate) vary: Arc<[HeaderName]>,
    /// Requests carrying any of these headers bypass the cache.
    pub(crate) bypass_headers: Vec<HeaderName>,
    /// The query parameters that are part of the key; `None` for all of them.
    pub(crate) query_params: Option<Vec<String>>,
    pub(crate) statuses: Statuses,
    /// A [`Rule::http_cache`] rule's settings; `None` for app rules.
    pub(crate) http_cache: Option<HttpCache>,
    /// A unary gRPC method: its `POST`s are the reads, keyed on their message.
    pub(crate) grpc: bool,
}

#[cfg(test)]
impl ReadRule {
    /// A default-scope rule with `ttl`, reading the response's headers.
    pub(crate) fn for_tests(ttl: Duration) -> Self {
        Self {
            pattern: "/test".into(),
            ttl,
            max_ttl: None,
            upstream_cache_control: true,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            tags: Vec::new(),
            scope: Scope::Default,
            vary: Arc::new([]),
            bypass_headers: Vec::new(),
            query_params: None,
            statuses: Statuses::Listed(vec![StatusCode::OK]),
            http_cache: None,
            grpc: false,
        }
    }

    /// The same for a [`Rule::http_cache`] rule with its defaults; `ttl` may be zero.
    pub(crate) fn http_cache_for_tests(ttl: Duration) -> Self {
        Self {
            statuses: Statuses::AnyFinal,
            http_cache: Some(HttpCache {
                targets: Arc::new([HeaderName::from_static("cdn-cache-control")]),
                heuristic_percent: HttpCache::DEFAULT_HEURISTIC_PERCENT,
                max_heuristic_ttl: HttpCache::DEFAULT_MAX_HEURISTIC_TTL,
            }),
            ..Self::for_tests(ttl)
        }
    }
}

/// The response statuses a read rule may store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Statuses {
    /// These (the rule's `cache_statuses`, or the layer's).
    Listed(Vec<StatusCode>),
    /// Any final status but those never stored (an [`http_cache`](Rule::http_cache) rule's
    /// default).
    AnyFinal,
}

impl Statuses {
    pub(crate) fn contains(&self, status: StatusCode) -> bool {
        match self {
            Statuses::Listed(listed) => listed.contains(&status),
            Statuses::AnyFinal => !status.is_informational() && !NEVER_STORED.contains(&status),
        }
    }
}

/// Statuses an [`http_cache`](Rule::http_cache) rule never stores: `206` holds a part of the
/// body, and `304`, `412` and `416` answer the request's own conditions or ranges, which are
/// not in the key.
pub(crate) const NEVER_STORED: [StatusCode; 4] = [
    StatusCode::PARTIAL_CONTENT,
    StatusCode::NOT_MODIFIED,
    StatusCode::PRECONDITION_FAILED,
    StatusCode::RANGE_NOT_SATISFIABLE,
];

/// The settings of an [`http_cache`](Rule::http_cache) rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpCache {
    /// The targeted cache-control fields it reads (RFC 9213), first first.
    pub(crate) targets: Arc<[HeaderName]>,
    /// The share of the time since `Last-Modified` a response is heuristically fresh for.
    pub(crate) heuristic_percent: u8,
    /// The longest heuristic freshness.
    pub(crate) max_heuristic_ttl: Duration,
}

impl HttpCache {
    const DEFAULT_HEURISTIC_PERCENT: u8 = 10;
    const DEFAULT_MAX_HEURISTIC_TTL: Duration = Duration::from_secs(24 * 60 * 60);
}

/// Whose entry a response goes into.
pub(crate) enum Scope {
    /// Anonymous requests share entries; credentialed requests bypass.
    Default,
    /// Everyone shares entries.
    Shared,
    /// One entry per user; with `share_anonymous`, requests without credentials share one.
    PerUser { identify: Arc<dyn IdentifyUser>, share_anonymous: bool },
}

struct MutationRule {
    methods: Vec<Method>,
    evicts: Vec<TagTemplate>,
}

struct RouteRules {
    pattern: Arc<str>,
    read: Option<Arc<ReadRule>>,
    mutations: Vec<MutationRule>,
}

/// What the rules say about one request.
pub(crate) enum Matched<'a> {
    /// A bypass pattern matched: the cache stays out of the way.
    Bypass { pattern: Arc<str> },
    /// A read rule covers the request; `tags` are its rendered tags.
    Read { rule: &'a Arc<ReadRule>, tags: Vec<String> },
    /// An unsafe method on a path some rule covers: `evicts` are the mutation rule's rendered
    /// tags (none without one), and `reads_cached` says whether a read rule covers the path, so
    /// that its URI may have entries to invalidate.
    Write { pattern: Arc<str>, evicts: Vec<String>, reads_cached: bool },
    /// No rule covers this method on this path; `pattern` is the route's, if it has one.
    Unmatched { pattern: Option<Arc<str>> },
}

/// Every route's rules, indexed by `matchit` the way axum indexes its routes.
pub(crate) struct RouteTable {
    bypass: matchit::Router<Arc<str>>,
    routes: matchit::Router<RouteRules>,
    patterns: Vec<Arc<str>>,
}

impl RouteTable {
    pub(crate) fn build(
        rules: Vec<(String, Rule)>,
        bypass: Vec<String>,
        defaults: &RuleDefaults,
    ) -> Result<Self, BuildError> {
        let mut grouped: Vec<(String, RouteRules)> = Vec::new();
        for (pattern, rule) in rules {
            check_pattern(&pattern)?;
            let index = match grouped.iter().position(|(p, _)| *p == pattern) {
                Some(index) => index,
                None => {
                    let rules = RouteRules {
                        pattern: pattern.as_str().into(),
                        read: None,
                        mutations: Vec::new(),
                    };
                    grouped.push((pattern.clone(), rules));
                    grouped.len() - 1
                }
            };
            let route = &mut grouped[index].1;
            match compile(&pattern, rule, defaults)? {
                Compiled::Read(read) => {
                    if route.read.is_some() {
                        return Err(BuildError::route(&pattern, "has two read rules"));
                    }
                    let posts = route.mutations.iter().any(|m| m.methods.contains(&Method::POST));
                    if read.grpc && posts {
                        return Err(BuildError::route(&pattern, "has two rules for POST"));
                    }
                    route.read = Some(read);
                }
                Compiled::Mutation(mutation) => {
                    let grpc = route.read.as_ref().is_some_and(|read| read.grpc);
                    let taken = route.mutations.iter().flat_map(|m| &m.methods);
                    let taken = taken.chain(grpc.then_some(&Method::POST));
                    if let Some(method) = taken.into_iter().find(|m| mutation.methods.contains(m)) {
                        return Err(BuildError::route(
                            &pattern,
                            format!("has two rules for {method}"),
                        ));
                    }
                    route.mutations.push(mutation);
                }
            }
        }

        let mut bypass_router = matchit::Router::new();
        let bypass_patterns: Vec<Arc<str>> = bypass.iter().map(|p| Arc::from(p.as_str())).collect();
        for pattern in bypass {
            check_pattern(&pattern)?;
            if grouped.iter().any(|(p, _)| *p == pattern) {
                return Err(BuildError::route(&pattern, "is both bypassed and given cache rules"));
            }
            bypass_router
                .insert(pattern.as_str(), Arc::from(pattern.as_str()))
                .map_err(|e| BuildError::route(&pattern, format!("invalid bypass pattern: {e}")))?;
        }

        let mut patterns: Vec<Arc<str>> =
            grouped.iter().map(|(_, rules)| Arc::clone(&rules.pattern)).collect();
        patterns.extend(bypass_patterns);
        let mut routes = matchit::Router::new();
        for (pattern, rules) in grouped {
            routes
                .insert(pattern.as_str(), rules)
                .map_err(|e| BuildError::route(&pattern, format!("invalid pattern: {e}")))?;
        }
        Ok(Self { bypass: bypass_router, routes, patterns })
    }

    /// Finds the rule for `method` on `path` (the raw, still percent-encoded path, which is
    /// what axum matches on too). Bypass patterns win over every other rule.
    pub(crate) fn classify(&self, method: &Method, path: &str) -> Matched<'_> {
        if let Ok(bypassed) = self.bypass.at(path) {
            return Matched::Bypass { pattern: Arc::clone(bypassed.value) };
        }
        let Ok(found) = self.routes.at(path) else {
            return Matched::Unmatched { pattern: None };
        };
        let route = found.value;
        let unmatched = || Matched::Unmatched { pattern: Some(Arc::clone(&route.pattern)) };
        // A gRPC method's calls are `POST`s, and its reads.
        if let Some(rule) = route.read.as_ref().filter(|rule| rule.grpc) {
            if *method != Method::POST {
                return unmatched();
            }
            let tags = rule.tags.iter().map(|t| t.render(&found.params)).collect();
            return Matched::Read { rule, tags };
        }
        if *method == Method::GET || *method == Method::HEAD {
            return match &route.read {
                Some(rule) => Matched::Read {
                    rule,
                    tags: rule.tags.iter().map(|t| t.render(&found.params)).collect(),
                },
                None => unmatched(),
            };
        }
        if method.is_safe() {
            return unmatched();
        }
        let evicts = match route.mutations.iter().find(|m| m.methods.contains(method)) {
            Some(rule) => rule.evicts.iter().map(|t| t.render(&found.params)).collect(),
            None => Vec::new(),
        };
        Matched::Write {
            pattern: Arc::clone(&route.pattern),
            evicts,
            reads_cached: route.read.is_some(),
        }
    }

    /// Every pattern of the table, routes and bypass patterns, for the metrics labels.
    pub(crate) fn patterns(&self) -> Vec<Arc<str>> {
        self.patterns.clone()
    }

    /// Whether a gRPC rule (and no bypass pattern) covers `path`: whether its calls' messages
    /// are part of their keys.
    pub(crate) fn reads_messages(&self, path: &str) -> bool {
        self.bypass.at(path).is_err()
            && self.routes.at(path).is_ok_and(|m| m.value.read.as_ref().is_some_and(|r| r.grpc))
    }

    /// Whether a read rule (and no bypass pattern) covers `path`: whether it may have entries.
    pub(crate) fn caches_reads(&self, path: &str) -> bool {
        self.bypass.at(path).is_err() && self.routes.at(path).is_ok_and(|m| m.value.read.is_some())
    }
}

/// The most parameters a pattern may have: `matchit` renames them `{a}` to `{z}` inside, and
/// panics past that.
const MAX_PARAMS: usize = 25;

fn check_pattern(pattern: &str) -> Result<(), BuildError> {
    if !pattern.starts_with('/') {
        return Err(BuildError::route(pattern, "a pattern must start with `/`"));
    }
    let params = pattern_params(pattern).len();
    if params > MAX_PARAMS {
        return Err(BuildError::route(
            pattern,
            format!("has {params} parameters; a pattern may have at most {MAX_PARAMS}"),
        ));
    }
    Ok(())
}

/// An `http_cache` rule's settings, checked; `None` for other rules, which must not set them.
fn http_cache_settings(rule: &Rule, defaults: &RuleDefaults) -> Result<Option<HttpCache>, String> {
    if !rule.http_cache {
        let stray = [
            (rule.heuristic_percent.is_some(), "heuristic_percent"),
            (rule.max_heuristic_ttl.is_some(), "max_heuristic_ttl"),
        ];
        return match stray.iter().find(|(set, _)| *set) {
            Some((_, name)) => Err(format!("`{name}` applies to `http_cache()` rules only")),
            None => Ok(None),
        };
    }
    if !rule.upstream_cache_control {
        return Err("an `http_cache()` rule follows the response's `Cache-Control`: \
                    `ignore_upstream_cache_control` contradicts it"
            .into());
    }
    let heuristic_percent = rule.heuristic_percent.unwrap_or(HttpCache::DEFAULT_HEURISTIC_PERCENT);
    if heuristic_percent > 100 {
        return Err(format!("`heuristic_percent` is {heuristic_percent}; at most 100"));
    }
    let max_heuristic_ttl = rule.max_heuristic_ttl.unwrap_or(HttpCache::DEFAULT_MAX_HEURISTIC_TTL);
    let targets = Arc::clone(&defaults.cache_control_targets);
    Ok(Some(HttpCache { targets, heuristic_percent, max_heuristic_ttl }))
}

enum Compiled {
    /// Shared as it is made: every request's plan holds it.
    Read(Arc<ReadRule>),
    Mutation(MutationRule),
}

fn compile(pattern: &str, rule: Rule, defaults: &RuleDefaults) -> Result<Compiled, BuildError> {
    let err = |problem: String| BuildError::route(pattern, problem);
    if rule.methods.is_empty() {
        return Err(err("a rule must cover at least one method".into()));
    }
    let is_read = |m: &Method| *m == Method::GET || *m == Method::HEAD;
    let never_cached = [Method::OPTIONS, Method::TRACE, Method::CONNECT];
    if let Some(m) = rule.methods.iter().find(|m| never_cached.contains(m)) {
        return Err(err(format!("{m} requests are neither cached nor evict tags")));
    }
    let params = pattern_params(pattern);
    let templates = |tags: &[String]| -> Result<Vec<TagTemplate>, BuildError> {
        tags.iter().map(|t| TagTemplate::parse(t, &params).map_err(err)).collect()
    };

    if rule.grpc || rule.methods.iter().all(is_read) {
        if !rule.evicts.is_empty() {
            let kind = if rule.grpc { "gRPC" } else { "GET" };
            return Err(err(format!(
                "a {kind} rule cannot evict tags: give the writes their own rule"
            )));
        }
        // An `http_cache` rule's TTL is only a fallback for heuristics, and none by default.
        let ttl = match rule.http_cache {
            true => rule.ttl.unwrap_or_default(),
            false => rule.ttl.unwrap_or(defaults.ttl),
        };
        if ttl.is_zero() && (rule.ttl.is_some() || !rule.http_cache) {
            return Err(err("`ttl` must be more than zero".into()));
        }
        let http_cache = http_cache_settings(&rule, defaults).map_err(err)?;
        // The layer's default TTL is capped by `max_ttl`; a rule's own TTL above it is a mistake.
        let ttl = match rule.max_ttl {
            Some(max) if max.is_zero() => {
                return Err(err("`max_ttl` must be more than zero".into()))
            }
            Some(max) if ttl > max && rule.ttl.is_some() => {
                return Err(err(format!("`ttl` ({ttl:?}) is longer than `max_ttl` ({max:?})")));
            }
            Some(max) => ttl.min(max),
            None => ttl,
        };
        let scope = match rule.scope {
            ScopeSetting::Default => Scope::Default,
            ScopeSetting::Shared => Scope::Shared,
            ScopeSetting::PerUser(identify) => Scope::PerUser {
                identify: identify.unwrap_or_else(|| defaults.identify.clone()),
                share_anonymous: rule.share_anonymous,
            },
            ScopeSetting::Contradictory => {
                return Err(err("a rule cannot be both `shared()` and `per_user()`".into()));
            }
        };
        if rule.share_anonymous && !matches!(scope, Scope::PerUser { .. }) {
            return Err(err("`share_anonymous()` applies to `per_user()` rules".into()));
        }
        let header_names =
            |option: &str, names: &[String]| -> Result<Vec<HeaderName>, BuildError> {
                names
                    .iter()
                    .map(|name| {
                        HeaderName::try_from(name.as_str()).map_err(|_| {
                            err(format!("`{option}` names `{name}`, which is not a header name"))
                        })
                    })
                    .collect()
            };
        let own_vary = header_names("vary", &rule.vary)?;
        let mut bypass_headers = header_names("bypass_header", &rule.bypass_headers)?;
        bypass_headers.extend(defaults.bypass_headers.iter().cloned());
        // A rule that keys on a header the layer bypasses wants those requests cached.
        bypass_headers.retain(|name| !own_vary.contains(name));
        bypass_headers.dedup();
        let mut vary = own_vary;
        vary.extend(defaults.key_headers.iter().cloned());
        if rule.grpc {
            // The framing (`application/grpc`, `+proto`, `-web`...) and the compressions the
            // client takes shape the response's bytes.
            vary.extend([
                http::header::CONTENT_TYPE,
                HeaderName::from_static("grpc-accept-encoding"),
            ]);
        }
        vary.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        vary.dedup();
        if rule.query_params.as_ref().is_some_and(|names| names.iter().any(String::is_empty)) {
            return Err(err("`key_query_params` names an empty parameter".into()));
        }
        let statuses = match (rule.statuses, rule.http_cache) {
            (Some(statuses), _) if statuses.is_empty() => {
                return Err(err("`cache_statuses` must name at least one status".into()));
            }
            (Some(statuses), _) => Statuses::Listed(statuses),
            (None, true) => Statuses::AnyFinal,
            (None, false) => Statuses::Listed(defaults.statuses.clone()),
        };
        return Ok(Compiled::Read(Arc::new(ReadRule {
            pattern: pattern.into(),
            ttl,
            max_ttl: rule.max_ttl,
            upstream_cache_control: rule.upstream_cache_control,
            stale_while_revalidate: rule.stale_while_revalidate.unwrap_or_default(),
            stale_if_error: rule.stale_if_error.unwrap_or_default(),
            tags: templates(&rule.tags)?,
            scope,
            vary: vary.into(),
            bypass_headers,
            query_params: rule.query_params,
            statuses,
            http_cache,
            grpc: rule.grpc,
        })));
    }

    if let Some(m) = rule.methods.iter().find(|m| is_read(m)) {
        return Err(err(format!("a rule cannot both cache {m} and evict on writes")));
    }
    let read_only_setting = [
        (rule.ttl.is_some(), "ttl"),
        (rule.max_ttl.is_some(), "max_ttl"),
        (!rule.upstream_cache_control, "ignore_upstream_cache_control"),
        (rule.stale_while_revalidate.is_some(), "stale_while_revalidate"),
        (rule.stale_if_error.is_some(), "stale_if_error"),
        (!rule.tags.is_empty(), "tag"),
        (!matches!(rule.scope, ScopeSetting::Default), "per_user/shared"),
        (!rule.vary.is_empty(), "vary"),
        (!rule.bypass_headers.is_empty(), "bypass_header"),
        (rule.query_params.is_some(), "key_query_params"),
        (rule.statuses.is_some(), "cache_statuses"),
        (rule.heuristic_percent.is_some(), "heuristic_percent"),
        (rule.max_heuristic_ttl.is_some(), "max_heuristic_ttl"),
    ];
    if let Some((_, name)) = read_only_setting.iter().find(|(set, _)| *set) {
        return Err(err(format!("`{name}` applies to GET rules, not to mutation rules")));
    }
    if rule.evicts.is_empty() {
        return Err(err("a mutation rule must name the tags it `evicts`".into()));
    }
    Ok(Compiled::Mutation(MutationRule { methods: rule.methods, evicts: templates(&rule.evicts)? }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user::UserFromHeader;

    fn defaults() -> RuleDefaults {
        RuleDefaults {
            ttl: Duration::from_secs(60),
            statuses: vec![StatusCode::OK],
            identify: Arc::new(UserFromHeader::authorization()),
            key_headers: Vec::new(),
            bypass_headers: Vec::new(),
            cache_control_targets: Arc::new([]),
        }
    }

    fn build(rules: Vec<(&str, Rule)>, bypass: Vec<&str>) -> Result<RouteTable, BuildError> {
        RouteTable::build(
            rules.into_iter().map(|(p, r)| (p.to_owned(), r)).collect(),
            bypass.into_iter().map(Into::into).collect(),
            &defaults(),
        )
    }

    fn problem(rules: Vec<(&str, Rule)>, bypass: Vec<&str>) -> String {
        build(rules, bypass).err().expect("the configuration should be rejected").to_string()
    }

    #[test]
    fn reads_and_mutations_share_a_pattern() {
        let table = build(
            vec![
                ("/users/{id}", Rule::get().tags(["users", "user:{id}"])),
                ("/users/{id}", Rule::put().evicts(["user:{id}"])),
                ("/users/{id}", Rule::delete().evicts(["users", "user:{id}"])),
            ],
            vec![],
        )
        .unwrap();
        match table.classify(&Method::GET, "/users/7") {
            Matched::Read { tags, rule } => {
                assert_eq!(tags, ["users", "user:7"]);
                assert_eq!(&*rule.pattern, "/users/{id}");
            }
            _ => panic!("expected a read rule"),
        }
        assert!(matches!(table.classify(&Method::HEAD, "/users/7"), Matched::Read { .. }));
        match table.classify(&Method::DELETE, "/users/7") {
            Matched::Write { pattern, evicts, reads_cached } => {
                assert_eq!(&*pattern, "/users/{id}");
                assert_eq!(evicts, ["users", "user:7"]);
                assert!(reads_cached);
            }
            _ => panic!("expected a mutation rule"),
        }
        match table.classify(&Method::PATCH, "/users/7") {
            Matched::Write { evicts, reads_cached, .. } => {
                assert!(evicts.is_empty() && reads_cached)
            }
            _ => panic!("an unsafe method on a cached path is a write"),
        }
        assert!(matches!(
            table.classify(&Method::OPTIONS, "/users/7"),
            Matched::Unmatched { pattern: Some(p) } if &*p == "/users/{id}"
        ));
        assert!(table.caches_reads("/users/7"));
        assert!(!table.caches_reads("/nothing"));
        assert!(matches!(
            table.classify(&Method::GET, "/other"),
            Matched::Unmatched { pattern: None }
        ));
    }

    #[test]
    fn a_grpc_method_is_read_by_its_posts() {
        let table = build(
            vec![
                ("/demo.Users/GetUser", Rule::grpc().tag("users")),
                ("/demo.Users/UpdateUser", Rule::post().evicts(["users"])),
            ],
            vec!["/demo.Users/Secret"],
        )
        .unwrap();
        match table.classify(&Method::POST, "/demo.Users/GetUser") {
            Matched::Read { rule, tags } => {
                assert!(rule.grpc);
                assert_eq!(tags, ["users"]);
                assert_eq!(rule.vary[..], ["content-type", "grpc-accept-encoding"]);
            }
            _ => panic!("a call to a gRPC method is its read"),
        }
        for method in [Method::GET, Method::HEAD, Method::PUT] {
            assert!(matches!(
                table.classify(&method, "/demo.Users/GetUser"),
                Matched::Unmatched { pattern: Some(_) }
            ));
        }
        assert!(table.reads_messages("/demo.Users/GetUser"));
        for path in ["/demo.Users/UpdateUser", "/demo.Users/Secret", "/demo.Users/Other"] {
            assert!(!table.reads_messages(path), "{path}");
        }
        assert_eq!(
            problem(vec![("/a.B/C", Rule::grpc()), ("/a.B/C", Rule::post().evicts(["x"]))], vec![]),
            "route `/a.B/C`: has two rules for POST"
        );
        assert_eq!(
            problem(
                vec![("/a.B/C", Rule::mutations().evicts(["x"])), ("/a.B/C", Rule::grpc())],
                vec![]
            ),
            "route `/a.B/C`: has two rules for POST"
        );
        assert_eq!(
            problem(vec![("/a.B/C", Rule::get()), ("/a.B/C", Rule::grpc())], vec![]),
            "route `/a.B/C`: has two read rules"
        );
        assert_eq!(
            problem(vec![("/a.B/C", Rule::grpc().evicts(["x"]))], vec![]),
            "route `/a.B/C`: a gRPC rule cannot evict tags: give the writes their own rule"
        );
    }

    #[test]
    fn bypass_wins_over_more_specific_routes() {
        // Registered separately, so `/auth/login` cannot be both: the bypass pattern still wins.
        let table = build(vec![("/auth/me", Rule::get())], vec!["/auth/{*rest}"]).unwrap();
        assert!(matches!(
            table.classify(&Method::GET, "/auth/me"),
            Matched::Bypass { pattern } if &*pattern == "/auth/{*rest}"
        ));
    }

    #[test]
    fn mistakes_name_the_route() {
        assert_eq!(
            problem(vec![("users", Rule::get())], vec![]),
            "route `users`: a pattern must start with `/`"
        );
        assert!(problem(vec![("/a/{id", Rule::get())], vec![])
            .starts_with("route `/a/{id`: invalid pattern"));
        assert_eq!(
            problem(vec![("/a", Rule::get()), ("/a", Rule::get())], vec![]),
            "route `/a`: has two read rules"
        );
        assert_eq!(
            problem(vec![("/a", Rule::get().shared().per_user())], vec![]),
            "route `/a`: a rule cannot be both `shared()` and `per_user()`"
        );
        assert_eq!(
            problem(vec![("/a", Rule::get().shared().share_anonymous())], vec![]),
            "route `/a`: `share_anonymous()` applies to `per_user()` rules"
        );
        assert_eq!(
            problem(vec![("/a", Rule::get().evicts(["x"]))], vec![]),
            "route `/a`: a GET rule cannot evict tags: give the writes their own rule"
        );
        assert_eq!(
            problem(vec![("/a", Rule::post().ttl(Duration::from_secs(1)).evicts(["x"]))], vec![]),
            "route `/a`: `ttl` applies to GET rules, not to mutation rules"
        );
        assert_eq!(
            problem(vec![("/a", Rule::post())], vec![]),
            "route `/a`: a mutation rule must name the tags it `evicts`"
        );
        let many: String = (0..26).map(|i| format!("/{{p{i}}}")).collect();
        let message = problem(vec![(many.as_str(), Rule::get())], vec![]);
        assert!(message.ends_with("has 26 parameters; a pattern may have at most 25"), "{message}");
        let bypassed = problem(vec![], vec![many.as_str()]);
        assert!(bypassed.ends_with("at most 25"), "{bypassed}");
        let enough: String = (0..25).map(|i| format!("/{{p{i}}}")).collect();
        assert!(build(vec![(enough.as_str(), Rule::get())], vec![]).is_ok());
        assert_eq!(
            problem(vec![("/a", Rule::get().bypass_header("bad header"))], vec![]),
            "route `/a`: `bypass_header` names `bad header`, which is not a header name"
        );
        assert_eq!(
            problem(vec![("/a", Rule::get().key_query_params(["page", ""]))], vec![]),
            "route `/a`: `key_query_params` names an empty parameter"
        );
        assert_eq!(
            problem(vec![("/a", Rule::put().key_query_params(["page"]).evicts(["x"]))], vec![]),
            "route `/a`: `key_query_params` applies to GET rules, not to mutation rules"
        );
        assert_eq!(
            problem(vec![("/a", Rule::methods([Method::GET, Method::POST]))], vec![]),
            "route `/a`: a rule cannot both cache GET and evict on writes"
        );
        assert_eq!(
            problem(
                vec![("/a", Rule::mutations().evicts(["x"])), ("/a", Rule::put().evicts(["y"]))],
                vec![]
            ),
            "route `/a`: has two rules for PUT"
        );
        assert_eq!(
            problem(vec![("/a", Rule::get().ttl(Duration::ZERO))], vec![]),
            "route `/a`: `ttl` must be more than zero"
        );
        assert_eq!(
            problem(vec![("/a", Rule::get().vary(["bad header"]))], vec![]),
            "route `/a`: `vary` names `bad header`, which is not a header name"
        );
        assert_eq!(
            problem(vec![("/a", Rule::get())], vec!["/a"]),
            "route `/a`: is both bypassed and given cache rules"
        );
        assert!(problem(vec![("/u/{id}", Rule::get()), ("/u/{name}", Rule::get())], vec![])
            .starts_with("route `/u/{name}`: invalid pattern"));
        assert_eq!(
            problem(vec![("/a", Rule::methods([Method::OPTIONS]))], vec![]),
            "route `/a`: OPTIONS requests are neither cached nor evict tags"
        );
    }

    #[test]
    fn http_cache_settings_are_checked_and_name_the_route() {
        assert_eq!(
            problem(vec![("/a", Rule::get().heuristic_percent(10))], vec![]),
            "route `/a`: `heuristic_percent` applies to `http_cache()` rules only"
        );
        let max = Duration::from_secs(60);
        assert_eq!(
            problem(vec![("/a", Rule::post().max_heuristic_ttl(max).evicts(["x"]))], vec![]),
            "route `/a`: `max_heuristic_ttl` applies to GET rules, not to mutation rules"
        );
        assert_eq!(
            problem(vec![("/a", Rule::http_cache().heuristic_percent(101))], vec![]),
            "route `/a`: `heuristic_percent` is 101; at most 100"
        );
        assert_eq!(
            problem(vec![("/a", Rule::http_cache().ignore_upstream_cache_control())], vec![]),
            "route `/a`: an `http_cache()` rule follows the response's `Cache-Control`: \
             `ignore_upstream_cache_control` contradicts it"
        );
        assert_eq!(
            problem(vec![("/a", Rule::http_cache().ttl(Duration::ZERO))], vec![]),
            "route `/a`: `ttl` must be more than zero"
        );
        // No TTL of its own is none at all, not the layer's default.
        let table = build(vec![("/a", Rule::http_cache())], vec![]).unwrap();
        let Matched::Read { rule, .. } = table.classify(&Method::GET, "/a") else {
            panic!("a GET on an http_cache rule is a read");
        };
        assert_eq!(rule.ttl, Duration::ZERO);
        assert_eq!(rule.statuses, Statuses::AnyFinal);
    }
}
