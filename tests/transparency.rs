//! Transparency, as a differential property: a response served through the cache is what the
//! inner service would have answered that very request, but for the cache's own headers (`Age`,
//! `X-Cache`, `Cache-Status`, an added `ETag`, the framing).
//!
//! The inner service is the echo origin of `support::echo`: it answers with everything it read
//! of the request, and says honestly what its answer depends on (`Vary`, or `private` /
//! `no-store` / `no-cache="x-client"` in some spelling when it reflects `X-Client`). Scenarios
//! are a request and variants of it a few small edits away (header case and duplicates,
//! `Connection` options, absolute form and `Host`, query spellings, bodies on `GET`, the
//! `Cache-Control` of the response), sent in turn; each response is compared with the origin's
//! own answer to the same request.
//!
//! It runs in process over both stores, and over sockets through the `proxy` example (whose
//! forwarding is part of what must be transparent), against the same proxy with no cache.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, Response};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use support::echo::echo;
#[cfg(feature = "redis")]
use support::redis::RedisServer;
use tower::{Layer, ServiceExt};
#[cfg(feature = "redis")]
use tower_redis_cache::RedisStore;
use tower_redis_cache::{CacheLayer, MemoryStore, Rule, Store};

// ---------------------------------------------------------------------------------------------
// Requests

const AUTHORITIES: [&str; 2] = ["a.example", "b.example"];
const HOSTS: [&str; 3] = ["a.example", "A.Example", "b.example"];
const PATHS: [&str; 5] = ["/p", "/p/q", "/P", "/caf%C3%A9", "/caf%c3%a9"];
const PARAMS: [&str; 10] =
    ["a=1", "a=2", "%61=2", "A=1", "b=1", "b=%2F", "b=%2f", "a+b=1", "a%20b=2", ""];
const VARY: [&str; 3] = ["accept-language", "accept-encoding", "x-tenant"];
/// Header names and the values a request may carry.
const HEADERS: [(&str, &[&str]); 5] = [
    ("accept-language", &["en", "EN", "fr", "en, fr", "fr;q=0.5", "en,,fr", "fr ; Q=0.5"]),
    (
        "accept-encoding",
        &["gzip", "gzip, br", "br,GZIP", "*", "identity", "x-gzip", "gzip;q=0", "gzip, x-custom"],
    ),
    ("x-tenant", &["a", "A", " a"]),
    ("x-forwarded-host", &["evil.example", "a.example"]),
    ("x-forwarded-proto", &["https"]),
];
const CONNECTION_OPTIONS: [&str; 6] = [
    "accept-language",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-tenant",
    "keep-alive",
    "x-absent",
];
/// `Cache-Control` of responses that depend on nothing but what the key holds.
const PLAIN_CC: [Option<&str>; 5] =
    [None, Some("max-age=60"), Some("public, s-maxage=60"), Some("max-age=0"), Some("no-store")];
/// `Cache-Control` of responses that reflect `X-Client`: each says, in some spelling, that the
/// response is for that client only. Strict caches store none of them in a shared entry.
const PRIVATE_CC: [&str; 10] = [
    "private, max-age=60",
    "private=\"x-client\", max-age=60",
    "no-cache=\"x-client\", max-age=60",
    "no-store; max-age=0",
    "private; max-age=60",
    "private;",
    "\"private\"",
    "max-age=60, Private",
    "max-age=60,private=x-client",
    "no-store, max-age=60",
];
/// Who sends the request: credentials and `X-Client`. A user's `X-Client`
/// is always the same: a private response may be reused for its user.
const CLIENTS: [(Option<&str>, Option<&str>); 5] = [
    (None, None),
    (None, Some("alice-secret")),
    (None, Some("bob")),
    (Some("Bearer 1"), Some("alice-secret")),
    (Some("Bearer 2"), Some("bob")),
];
const BODIES: [&str; 2] = ["callback=evil", "x"];

#[derive(Debug, Clone)]
struct Req {
    head: bool,
    /// The authority of an absolute-form target.
    authority: Option<&'static str>,
    hosts: Vec<&'static str>,
    path: &'static str,
    params: Vec<&'static str>,
    /// What the origin's answer says: `Vary`, `Cache-Control`, the padding of its body.
    vary: Vec<&'static str>,
    cc: Cc,
    pad: u16,
    client: usize,
    headers: Vec<(&'static str, &'static str)>,
    connection: Vec<&'static str>,
    body: Option<&'static str>,
    /// Header names in title case on the wire (`Accept-Language`).
    title_case: bool,
}

#[derive(Debug, Clone, Copy)]
enum Cc {
    Plain(usize),
    /// The origin reflects `X-Client` under this `Cache-Control`.
    Private(usize),
}

impl Req {
    fn query(&self) -> String {
        let mut query: Vec<String> = self.params.iter().map(|p| p.to_string()).collect();
        if !self.vary.is_empty() {
            query.push(format!("vary={}", self.vary.join(",")));
        }
        let cc = match self.cc {
            Cc::Plain(i) => PLAIN_CC[i],
            Cc::Private(i) => {
                query.push("reflect=x-client".to_owned());
                Some(PRIVATE_CC[i])
            }
        };
        if let Some(cc) = cc {
            let encoded: String = form_urlencoded::byte_serialize(cc.as_bytes()).collect();
            query.push(format!("cc={encoded}"));
        }
        if self.pad > 0 {
            query.push(format!("pad={}", self.pad));
        }
        query.join("&")
    }

    fn target(&self) -> String {
        match self.authority {
            Some(authority) => format!("http://{authority}{}?{}", self.path, self.query()),
            None => format!("{}?{}", self.path, self.query()),
        }
    }

    fn method(&self) -> Method {
        if self.head {
            Method::HEAD
        } else {
            Method::GET
        }
    }

    /// The header lines but `Connection` and the framing, in order.
    fn header_lines(&self) -> Vec<(&'static str, &'static str)> {
        let mut lines: Vec<(&str, &str)> = self.hosts.iter().map(|h| ("host", *h)).collect();
        lines.extend(self.headers.iter().copied());
        let (authorization, client) = CLIENTS[self.client];
        lines.extend(authorization.map(|a| ("authorization", a)));
        lines.extend(client.map(|c| ("x-client", c)));
        lines
    }

    fn http_request(&self) -> Request<Body> {
        let mut builder = Request::builder().method(self.method()).uri(self.target());
        for (name, value) in self.header_lines() {
            builder = builder.header(name, value);
        }
        if !self.connection.is_empty() {
            builder = builder.header(header::CONNECTION, self.connection.join(", "));
        }
        let body = self.body.map_or_else(Body::empty, Body::from);
        builder.body(body).expect("a valid request")
    }

    #[cfg(feature = "redis")]
    /// The request as HTTP/1.1 bytes, asking the server to close the connection after it.
    fn raw(&self) -> Vec<u8> {
        let name = |name: &str| match self.title_case {
            true => name.split('-').map(title).collect::<Vec<_>>().join("-"),
            false => name.to_owned(),
        };
        let mut raw = format!("{} {} HTTP/1.1\r\n", self.method(), self.target());
        for (header, value) in self.header_lines() {
            raw.push_str(&format!("{}: {value}\r\n", name(header)));
        }
        let connection = std::iter::once("close").chain(self.connection.iter().copied());
        raw.push_str(&format!(
            "{}: {}\r\n",
            name("connection"),
            connection.collect::<Vec<_>>().join(", ")
        ));
        if let Some(body) = self.body {
            raw.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
        } else {
            raw.push_str("\r\n");
        }
        raw.into_bytes()
    }
}

#[cfg(feature = "redis")]
fn title(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
}

/// A small change to a request: some give the same request spelt another way, others another
/// request.
#[derive(Debug, Clone)]
enum Edit {
    Head(bool),
    Authority(Option<Index>),
    AddHost(Index),
    RemoveHosts,
    Path(Index),
    ReplaceParam(Index, Index),
    SwapParams(Index),
    AddParam(Index),
    SetHeader(Index, Index),
    RemoveHeader(Index),
    DuplicateHeader(Index),
    AddConnectionOption(Index),
    ClearConnection,
    Body(Option<Index>),
    Client(Index),
    TitleCase(bool),
}

fn edit() -> impl Strategy<Value = Edit> {
    let index = any::<Index>;
    prop_oneof![
        1 => any::<bool>().prop_map(Edit::Head),
        1 => prop::option::of(index()).prop_map(Edit::Authority),
        1 => index().prop_map(Edit::AddHost),
        1 => Just(Edit::RemoveHosts),
        1 => index().prop_map(Edit::Path),
        1 => (index(), index()).prop_map(|(a, b)| Edit::ReplaceParam(a, b)),
        1 => index().prop_map(Edit::SwapParams),
        1 => index().prop_map(Edit::AddParam),
        3 => (index(), index()).prop_map(|(a, b)| Edit::SetHeader(a, b)),
        1 => index().prop_map(Edit::RemoveHeader),
        1 => index().prop_map(Edit::DuplicateHeader),
        2 => index().prop_map(Edit::AddConnectionOption),
        1 => Just(Edit::ClearConnection),
        1 => prop::option::of(index()).prop_map(Edit::Body),
        2 => index().prop_map(Edit::Client),
        1 => any::<bool>().prop_map(Edit::TitleCase),
    ]
}

impl Req {
    fn edited(&self, edits: &[Edit]) -> Req {
        let mut req = self.clone();
        for edit in edits {
            match edit {
                Edit::Head(head) => req.head = *head,
                Edit::Authority(i) => req.authority = i.map(|i| *i.get(&AUTHORITIES)),
                Edit::AddHost(i) => req.hosts.push(*i.get(&HOSTS)),
                Edit::RemoveHosts => req.hosts.clear(),
                Edit::Path(i) => req.path = *i.get(&PATHS),
                Edit::ReplaceParam(at, with) if !req.params.is_empty() => {
                    let at = at.index(req.params.len());
                    req.params[at] = *with.get(&PARAMS);
                }
                Edit::SwapParams(at) if req.params.len() > 1 => {
                    let at = at.index(req.params.len() - 1);
                    req.params.swap(at, at + 1);
                }
                Edit::AddParam(i) => req.params.push(*i.get(&PARAMS)),
                Edit::SetHeader(name, value) => {
                    let (name, values) = name.get(&HEADERS);
                    let value = *value.get(values);
                    match req.headers.iter_mut().find(|(n, _)| n == name) {
                        Some(header) => header.1 = value,
                        None => req.headers.push((name, value)),
                    }
                }
                Edit::RemoveHeader(i) if !req.headers.is_empty() => {
                    req.headers.remove(i.index(req.headers.len()));
                }
                Edit::DuplicateHeader(i) if !req.headers.is_empty() => {
                    let header = *i.get(&req.headers);
                    req.headers.push(header);
                }
                Edit::AddConnectionOption(i) => req.connection.push(*i.get(&CONNECTION_OPTIONS)),
                Edit::ClearConnection => req.connection.clear(),
                Edit::Body(i) => req.body = i.map(|i| *i.get(&BODIES)),
                Edit::Client(i) => req.client = i.index(CLIENTS.len()),
                Edit::TitleCase(title) => req.title_case = *title,
                Edit::ReplaceParam(..)
                | Edit::SwapParams(_)
                | Edit::RemoveHeader(_)
                | Edit::DuplicateHeader(_) => {}
            }
        }
        req
    }
}

fn base() -> impl Strategy<Value = Req> {
    let cc = prop_oneof![
        (0..PLAIN_CC.len()).prop_map(Cc::Plain),
        (0..PRIVATE_CC.len()).prop_map(Cc::Private),
    ];
    let header = (any::<Index>(), any::<Index>()).prop_map(|(name, value)| {
        let (name, values) = name.get(&HEADERS);
        (*name, *value.get(values))
    });
    let vary = prop::sample::subsequence(VARY.to_vec(), 0..=VARY.len());
    (
        prop::sample::select(PATHS.to_vec()),
        prop::collection::vec(prop::sample::select(PARAMS.to_vec()), 0..3),
        vary,
        cc,
        prop::sample::select(vec![0u16, 300]),
        0..CLIENTS.len(),
        prop::collection::vec(header, 0..3),
        prop::option::of(prop::sample::select(AUTHORITIES.to_vec())),
    )
        .prop_map(|(path, params, vary, cc, pad, client, headers, authority)| Req {
            head: false,
            authority,
            hosts: vec!["a.example"],
            path,
            params,
            vary,
            cc,
            pad,
            client,
            headers,
            connection: Vec::new(),
            body: None,
            title_case: false,
        })
}

/// A request, then variants of it each followed by the request again, so that entries are
/// filled and then read by neighbours.
fn scenario() -> impl Strategy<Value = Vec<Req>> {
    (base(), prop::collection::vec(prop::collection::vec(edit(), 1..4), 1..5)).prop_map(
        |(base, variants)| {
            let mut requests = vec![base.clone()];
            for edits in variants {
                requests.push(base.edited(&edits));
                requests.push(base.clone());
            }
            requests
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Comparing answers

/// A response as the property compares it.
#[derive(Debug)]
struct Seen {
    status: u16,
    /// Lower-cased names, sorted by name; values of one name in their order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Headers the cache may add or change: its own, and the framing.
const CACHE_OWN_HEADERS: [&str; 8] = [
    "age",
    "x-cache",
    "cache-status",
    "content-length",
    "date",
    "transfer-encoding",
    "connection",
    "keep-alive",
];

impl Seen {
    async fn of(response: Response<Body>) -> Self {
        let status = response.status().as_u16();
        let mut headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())
            })
            .collect();
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        let body =
            response.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
        Self { status, headers, body }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn x_cache(&self) -> &str {
        self.header("x-cache").unwrap_or("")
    }

    /// The headers that must be the same, given the origin's answer `direct`.
    fn compared(&self, direct: &Seen) -> Vec<(String, String)> {
        let added_etag = direct.header("etag").is_none();
        let cache_own =
            |name: &str| CACHE_OWN_HEADERS.contains(&name) || (added_etag && name == "etag");
        self.headers.iter().filter(|(n, _)| !cache_own(n)).cloned().collect()
    }
}

/// Why `cached` is not what the origin answered (`direct`), if it is not.
fn difference(direct: &Seen, cached: &Seen, head: bool) -> Option<String> {
    if direct.status != cached.status {
        return Some(format!("status {} where the origin says {}", cached.status, direct.status));
    }
    let (want, got) = (direct.compared(direct), cached.compared(direct));
    if want != got {
        return Some(format!("headers {got:?} where the origin says {want:?}"));
    }
    if !head && direct.body != cached.body {
        return Some(format!(
            "body\n{}\nwhere the origin says\n{}",
            String::from_utf8_lossy(&cached.body),
            String::from_utf8_lossy(&direct.body)
        ));
    }
    None
}

/// How many requests went through, and how they were answered: a property that never sees a
/// hit proves nothing. The floor, one hit in twenty, counts requests without credentials only:
/// a shared cache answers those with `Authorization` only from entries said to be for anyone
/// (RFC 9111 section 3.5), so they mostly miss by design. Runs see 13–17% (of some 400 to
/// 1,300 such requests), so the floor is several standard deviations below them.
#[derive(Default)]
struct Tally {
    cases: AtomicUsize,
    requests: AtomicUsize,
    hits: AtomicUsize,
    anonymous_requests: AtomicUsize,
    anonymous_hits: AtomicUsize,
}

impl Tally {
    fn count(&self, request: &Req, cached: &Seen) {
        let anonymous = CLIENTS[request.client].0.is_none();
        let hit = matches!(cached.x_cache(), "HIT" | "STALE" | "REVALIDATED");
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.hits.fetch_add(usize::from(hit), Ordering::Relaxed);
        self.anonymous_requests.fetch_add(usize::from(anonymous), Ordering::Relaxed);
        self.anonymous_hits.fetch_add(usize::from(anonymous && hit), Ordering::Relaxed);
    }

    fn check(&self, what: &str) {
        let load = |n: &AtomicUsize| n.load(Ordering::Relaxed);
        let (cases, requests, hits) = (load(&self.cases), load(&self.requests), load(&self.hits));
        let (anonymous, anonymous_hits) =
            (load(&self.anonymous_requests), load(&self.anonymous_hits));
        eprintln!(
            "{what}: {cases} scenarios, {requests} requests, {hits} served from the cache \
             ({anonymous_hits} of the {anonymous} without credentials)"
        );
        assert!(
            anonymous_hits * 20 >= anonymous && hits > 0,
            "{what}: too few hits to show anything ({anonymous_hits} of {anonymous} requests \
             without credentials)"
        );
    }
}

fn failure(at: usize, requests: &[Req], cached: &Seen, why: String) -> TestCaseError {
    TestCaseError::fail(format!(
        "request {at} ({}) of {requests:#?}\nwas answered {:?} with {why}",
        requests[at].target(),
        cached.x_cache()
    ))
}

// ---------------------------------------------------------------------------------------------
// In process, over both stores

/// The `proxy` example's rule, over `store`.
fn layer(store: impl Store, prefix: &str) -> CacheLayer {
    let rule = || Rule::http_cache().ttl(Duration::from_secs(60));
    CacheLayer::builder(store)
        .store_timeout(Duration::from_secs(2))
        .key_prefix(prefix)
        .route("/", rule())
        .route("/{*path}", rule())
        .build()
        .expect("a valid layer")
}

async fn origin(request: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(echo(request).await)
}

/// Sends `requests` through `layer` in turn, comparing each answer with the origin's.
async fn through_layer(
    layer: &CacheLayer,
    requests: &[Req],
    settle: Duration,
    tally: &Tally,
) -> Result<(), TestCaseError> {
    let service = layer.layer(tower::service_fn(origin));
    tally.cases.fetch_add(1, Ordering::Relaxed);
    for (at, request) in requests.iter().enumerate() {
        let response = service.clone().oneshot(request.http_request()).await.expect("infallible");
        let cached = Seen::of(response.map(Body::new)).await;
        let direct = Seen::of(echo(request.http_request()).await).await;
        tally.count(request, &cached);
        if let Some(why) = difference(&direct, &cached, request.head) {
            return Err(failure(at, requests, &cached, why));
        }
        if cached.x_cache() == "MISS" {
            // Entries are written in the background: give this one time to land, so that the
            // next requests can be served from it.
            tokio::time::sleep(settle).await;
        }
    }
    Ok(())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a Tokio runtime")
}

#[test]
fn what_the_memory_store_serves_is_what_the_origin_answers() {
    let (runtime, tally) = (runtime(), Tally::default());
    let result = runner(400).run(&scenario(), |requests| {
        runtime.block_on(async {
            let layer = layer(MemoryStore::default(), "trc");
            through_layer(&layer, &requests, Duration::from_millis(1), &tally).await
        })
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    tally.check("memory store");
}

#[cfg(feature = "redis")]
#[test]
fn what_redis_serves_is_what_the_origin_answers() {
    let (runtime, tally) = (runtime(), Tally::default());
    let server = RedisServer::start();
    let store = runtime.block_on(RedisStore::builder(server.url()).build()).expect("Redis");
    let case = AtomicUsize::new(0);
    let result = runner(150).run(&scenario(), |requests| {
        // A prefix per scenario: each starts from an empty cache, as in process.
        let prefix = format!("t{}", case.fetch_add(1, Ordering::Relaxed));
        runtime.block_on(async {
            let layer = layer(store.clone(), &prefix);
            through_layer(&layer, &requests, Duration::from_millis(10), &tally).await
        })
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    tally.check("Redis");
}

// ---------------------------------------------------------------------------------------------
// Over sockets, through the proxy example
#[cfg(feature = "redis")]
mod proxy_example {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A running `proxy` example, killed on drop.
    struct Proxy {
        child: Child,
        addr: String,
        log: PathBuf,
    }

    impl Proxy {
        fn start(upstream: &str, env: &[(&str, &str)]) -> Self {
            let binary = example_binary("proxy");
            static STARTED: AtomicUsize = AtomicUsize::new(0);
            let log = std::env::temp_dir().join(format!(
                "trc-transparency-proxy-{}-{}.log",
                std::process::id(),
                STARTED.fetch_add(1, Ordering::Relaxed)
            ));
            let file = std::fs::File::create(&log).expect("create the proxy's log");
            let child = Command::new(&binary)
                .env_clear()
                .env("UPSTREAM_URL", upstream)
                .env("BIND", "127.0.0.1:0")
                .env("RUST_LOG", "warn")
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("clone the log file"))
                .stderr(file)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
            let mut proxy = Self { child, addr: String::new(), log };
            let deadline = Instant::now() + Duration::from_secs(30);
            while proxy.addr.is_empty() {
                let text = std::fs::read_to_string(&proxy.log).unwrap_or_default();
                if let Some(at) = text.find("listening on http://") {
                    let rest = &text[at + "listening on http://".len()..];
                    proxy.addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                }
                if let Ok(Some(status)) = proxy.child.try_wait() {
                    panic!("the proxy exited during startup ({status}):\n{text}");
                }
                assert!(Instant::now() < deadline, "the proxy did not start:\n{text}");
                std::thread::sleep(Duration::from_millis(25));
            }
            proxy
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_file(&self.log);
        }
    }

    /// The built example `name`, next to this test's `deps` directory (a plain `cargo test` builds
    /// the examples first).
    fn example_binary(name: &str) -> PathBuf {
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile = exe.parent().and_then(Path::parent).expect("<target>/<profile>/deps");
        let binary =
            profile.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        assert!(
            binary.is_file(),
            "example binary {} is missing: run `cargo build --examples` first \
             (a plain `cargo test` builds the examples; `cargo test --test transparency` does not)",
            binary.display()
        );
        binary
    }

    /// Sends `raw` on a new connection and reads the response until the server closes it.
    async fn exchange(addr: &str, raw: &[u8]) -> Seen {
        let talk = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.write_all(raw).await.expect("send");
            let mut bytes = Vec::new();
            stream.read_to_end(&mut bytes).await.expect("receive");
            bytes
        };
        let bytes = tokio::time::timeout(Duration::from_secs(20), talk).await.expect("an answer");
        parse_response(&bytes)
    }

    fn parse_response(bytes: &[u8]) -> Seen {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
        let head = String::from_utf8_lossy(&bytes[..end]);
        let mut lines = head.split("\r\n");
        let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok());
        let mut headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        let rest = &bytes[end + 4..];
        let chunked =
            headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
        let body = if chunked { unchunk(rest) } else { rest.to_vec() };
        Seen { status: status.expect("a status line"), headers, body }
    }

    fn unchunk(mut rest: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = String::from_utf8_lossy(&rest[..end]);
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16);
            let Ok(size) = size else { break };
            if size == 0 || rest.len() < end + 2 + size {
                break;
            }
            body.extend_from_slice(&rest[end + 2..end + 2 + size]);
            rest = &rest[(end + 4 + size).min(rest.len())..];
        }
        body
    }

    #[test]
    fn what_the_proxy_example_serves_is_what_it_answers_without_a_cache() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a Tokio runtime");
        let origin = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("an address");
            let app = axum::Router::new().fallback(echo);
            tokio::spawn(async move { axum::serve(listener, app).await });
            format!("http://{addr}")
        });
        let redis = RedisServer::start();
        let plain = Proxy::start(&origin, &[("CACHE_STORE", "none")]);
        let cached = [
            ("memory store", Proxy::start(&origin, &[("CACHE_STORE", "memory")])),
            (
                "Redis",
                Proxy::start(&origin, &[("CACHE_STORE", "redis"), ("REDIS_URL", &redis.url())]),
            ),
        ];
        let tallies = [Tally::default(), Tally::default()];
        let result = runner(120).run(&scenario(), |requests| {
            runtime.block_on(async {
                for ((what, proxy), tally) in cached.iter().zip(&tallies) {
                    tally.cases.fetch_add(1, Ordering::Relaxed);
                    for (at, request) in requests.iter().enumerate() {
                        let raw = request.raw();
                        let served = exchange(&proxy.addr, &raw).await;
                        let direct = exchange(&plain.addr, &raw).await;
                        tally.count(request, &served);
                        if let Some(why) = difference(&direct, &served, request.head) {
                            let why = format!("{why}\n(through the proxy, {what})");
                            return Err(failure(at, &requests, &served, why));
                        }
                        if served.x_cache() == "MISS" {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                Ok(())
            })
        });
        if let Err(error) = result {
            panic!("{error}");
        }
        for ((what, _), tally) in cached.iter().zip(&tallies) {
            tally.check(&format!("proxy example, {what}"));
        }
    }
}
