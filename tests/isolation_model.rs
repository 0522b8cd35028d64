//! A model-based property test of the two guarantees that matter most: no response is served
//! to the wrong user, and no response is stale once a write has returned.
//!
//! Random sequences of requests by three users (`Authorization: Bearer <n>`), a cookie-only
//! visitor and anonymous visitors go, one after another, through the layer to an origin whose
//! "database" is a set of version counters. Every `GET` answer names what the origin saw (the
//! route, the resource, the version, and for personal routes the requester), so each response
//! can be checked against a model of the database and of what the cache may hold:
//!
//! - `/catalog/{id}` (with queries) and `/catalog`: `shared()`, the same answer for everyone;
//! - `/me`: `per_user()`, the requester's own record;
//! - `/users/{id}` and `/users`: neither, so credentialed requests bypass the cache while
//!   anonymous ones share one entry;
//! - `/auth/{*rest}`: bypassed;
//! - `/pages/{id}`: `Rule::http_cache()` (RFC 9111's shared cache), where credentialed requests
//!   are looked up but meet and fill only entries whose response says it is for anyone: page 1
//!   is `public` and the same for everyone; pages 2 and 3 name their requester, and only an
//!   anonymous one's answer may be stored, and served to anonymous requests only;
//!
//! with writes in between: `PUT /catalog/{id}`, `PUT /users/{id}` and `PATCH /me` evict by
//! mutation rule; `DELETE /catalog/{id}` and `POST /catalog` (whose `Location` or
//! `Content-Location` names the item) rely only on RFC 9111 section 4.4 invalidation. Writes
//! succeed (`2xx`, a change), redirect (`303`, no change) or fail (`4xx`/`5xx`, no change).
//!
//! Requests are `GET` or `HEAD` (answered from the `GET` entry), with or without a `Host`
//! (`shop.example`, in either case: one authority to the key). Most operations wait for the
//! background store of a miss to land before the next one; the others leave it racing the
//! next requests, and the model then allows either a hit or a miss for that entry.
//!
//! For every response the test checks the status and the origin's text (body, and an `x-model`
//! header so that `HEAD` answers can be checked too) against the model, so the version is the
//! current one and the identity is the requester's; that `X-Cache` is what the model allows
//! (`BYPASS` for bypassed routes, writes, credentialed default-route requests and unidentified
//! `/me` requests; `HIT` for entries the model knows are stored and not invalidated since;
//! `MISS` for entries it knows are not); and that a `HIT` did not reach the origin while
//! everything else did. Entries live a day and the layer's clock stands still, so expiry plays
//! no part.
//!
//! Run over `MemoryStore` (256 sequences) and over a private `redis-server` (64 sequences, each
//! under a key prefix of its own).

mod support;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
#[cfg(feature = "redis")]
use support::redis::RedisServer;
use tower::{Layer, Service, ServiceExt};
use tower_redis_cache::clock::ManualClock;
#[cfg(feature = "redis")]
use tower_redis_cache::RedisStore;
use tower_redis_cache::{CacheHandle, CacheLayer, MemoryStore, Rule, Store};

// ---------------------------------------------------------------------------------------------
// The operations.

/// Who sends a request.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Who {
    Anon,
    /// `Authorization: Bearer <n>`, n in 1..=3: user `n`, whose record is `/users/<n>`.
    User(u8),
    /// `Cookie: session=c` and no `Authorization`: credentialed, but not identified by the
    /// layer (which identifies users by `Authorization`).
    Cookie,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::Anon => f.write_str("anon"),
            Who::User(n) => write!(f, "u{n}"),
            Who::Cookie => f.write_str("cookie"),
        }
    }
}

/// The queries of `/catalog/{id}`; the last two differ only in order, which the layer
/// normalises (they share an entry).
const QUERIES: [&str; 5] =
    ["", "view=full", "view=short", "view=full&lang=en", "lang=en&view=full"];
/// `QUERIES` as the model sees them: parameters sorted by name.
const SORTED_QUERIES: [&str; 5] =
    ["", "view=full", "view=short", "lang=en&view=full", "lang=en&view=full"];

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Read {
    /// `/catalog/{id}?{QUERIES[q]}`.
    Item(u8, u8),
    Catalog,
    Me,
    User(u8),
    Users,
    /// `/auth/session`, under the bypass pattern.
    Auth,
    /// `/pages/{id}`, under a shared-cache rule; page 1 is `public`.
    Page(u8),
}

impl Read {
    fn path(self) -> String {
        match self {
            Read::Item(id, q) if QUERIES[q as usize].is_empty() => format!("/catalog/{id}"),
            Read::Item(id, q) => format!("/catalog/{id}?{}", QUERIES[q as usize]),
            Read::Catalog => "/catalog".into(),
            Read::Me => "/me".into(),
            Read::User(id) => format!("/users/{id}"),
            Read::Users => "/users".into(),
            Read::Auth => "/auth/session".into(),
            Read::Page(id) => format!("/pages/{id}"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Write {
    /// Mutation rule: evicts `catalog:{id}`.
    PutItem(u8),
    /// No mutation rule: only the target URI's invalidation.
    DeleteItem(u8),
    /// No mutation rule: the target URI (`/catalog`) and the item named in the response.
    /// Creates or replaces the item.
    PostCatalog(u8, Named),
    /// Mutation rule: evicts `users`, `user:{id}` and `me`.
    PutUser(u8),
    /// Mutation rule: evicts `users`; the target URI covers every user's `/me` entry. Only an
    /// identified user may; the others get `401`.
    PatchMe,
    /// `POST /auth/login`: bypassed, changes nothing.
    Login,
    /// Mutation rule: evicts `page:{id}`.
    PutPage(u8),
}

impl Write {
    fn method_and_path(self) -> (Method, String) {
        match self {
            Write::PutItem(id) => (Method::PUT, format!("/catalog/{id}")),
            Write::DeleteItem(id) => (Method::DELETE, format!("/catalog/{id}")),
            Write::PostCatalog(..) => (Method::POST, "/catalog".into()),
            Write::PutUser(id) => (Method::PUT, format!("/users/{id}")),
            Write::PatchMe => (Method::PATCH, "/me".into()),
            Write::Login => (Method::POST, "/auth/login".into()),
            Write::PutPage(id) => (Method::PUT, format!("/pages/{id}")),
        }
    }
}

/// How the origin names the item a `POST /catalog` wrote.
#[derive(Clone, Copy, Debug)]
enum Named {
    /// `Location: /catalog/{id}`.
    Location,
    /// `Location: http://{host}/catalog/{id}`, with the request's `Host` (path-absolute without
    /// one).
    AbsoluteLocation,
    /// `Content-Location: /catalog/{id}`.
    ContentLocation,
}

/// The `Host` headers requests carry: none, or one authority spelt in two cases (which the
/// layer folds into one).
const HOSTS: [Option<&str>; 3] = [None, Some("shop.example"), Some("Shop.Example")];

/// How the origin answers a write.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// It changes the data: `201` for `POST /catalog`, else `204` if the flag is set, else `200`.
    Done(bool),
    /// `303 See Other`: nothing changes, but RFC 9111 section 4.4 still invalidates.
    Redirect,
    /// A `4xx`/`5xx`: nothing changes, nothing may be evicted.
    Fail(u16),
}

#[derive(Clone)]
enum Op {
    Read { who: Who, read: Read, head: bool, host: u8, settle: bool },
    Write { who: Who, write: Write, answer: Answer, host: u8, settle: bool },
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (text, host, settle) = match *self {
            Op::Read { who, read, head, host, settle } => {
                let method = if head { "HEAD" } else { "GET" };
                (format!("{method} {} as {who}", read.path()), host, settle)
            }
            Op::Write { who, write, answer, host, settle } => {
                let (method, path) = write.method_and_path();
                let extra = match write {
                    Write::PostCatalog(id, named) => format!(" ({named:?} /catalog/{id})"),
                    _ => String::new(),
                };
                let answer = match answer {
                    Answer::Done(_) => "2xx".to_owned(),
                    Answer::Redirect => "303".to_owned(),
                    Answer::Fail(code) => code.to_string(),
                };
                (format!("{method} {path} as {who} -> {answer}{extra}"), host, settle)
            }
        };
        let host = HOSTS[host as usize].map_or(String::new(), |host| format!(" @{host}"));
        let settle = if settle { "" } else { " (no settle)" };
        write!(f, "\"{text}{host}{settle}\"")
    }
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![3 => Just(Who::Anon), 6 => (1u8..=3).prop_map(Who::User), 1 => Just(Who::Cookie)]
}

/// A resource id, 1 more often than 2 and 3, so that sequences come back to the same entries.
fn id() -> impl Strategy<Value = u8> {
    prop_oneof![3 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)]
}

fn read() -> impl Strategy<Value = Read> {
    prop_oneof![
        5 => (id(), prop_oneof![3 => Just(0u8), 2 => 1u8..5])
            .prop_map(|(id, q)| Read::Item(id, q)),
        1 => Just(Read::Catalog),
        3 => Just(Read::Me),
        3 => id().prop_map(Read::User),
        1 => Just(Read::Users),
        1 => Just(Read::Auth),
        // Page 1 is public, page 2 personal: half as often, so that stored anonymous answers
        // meet credentialed requests often enough in 64 cases.
        8 => prop_oneof![1 => Just(1u8), 2 => Just(2u8)].prop_map(Read::Page),
    ]
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        2 => id().prop_map(Write::PutItem),
        2 => id().prop_map(Write::DeleteItem),
        2 => (id(), prop_oneof![
            Just(Named::Location),
            Just(Named::AbsoluteLocation),
            Just(Named::ContentLocation)
        ])
            .prop_map(|(id, named)| Write::PostCatalog(id, named)),
        2 => id().prop_map(Write::PutUser),
        2 => Just(Write::PatchMe),
        1 => Just(Write::Login),
        2 => id().prop_map(Write::PutPage),
    ]
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        6 => any::<bool>().prop_map(Answer::Done),
        1 => Just(Answer::Redirect),
        2 => prop::sample::select(vec![400u16, 401, 404, 409, 500, 503]).prop_map(Answer::Fail),
    ]
}

fn host() -> impl Strategy<Value = u8> {
    prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)]
}

fn op() -> impl Strategy<Value = Op> {
    // Most operations let the background store of a miss land before the next one (`settle`);
    // the others leave it in flight, racing the next requests.
    let settle = prop::bool::weighted(0.8);
    prop_oneof![
        15 => (who(), read(), prop::bool::weighted(0.15), host(), settle)
            .prop_map(|(who, read, head, host, settle)| Op::Read { who, read, head, host, settle }),
        4 => (who(), write(), answer(), host(), settle).prop_map(
            |(who, write, answer, host, settle)| Op::Write { who, write, answer, host, settle }
        ),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..=40)
}

// ---------------------------------------------------------------------------------------------
// The origin: a service over a model database.

/// The origin's data: versions, bumped by successful writes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Db {
    /// `/catalog/{id}`, by id (index 0 unused).
    items: [u32; 4],
    /// `/catalog`: changes when an item is posted.
    catalog: u32,
    /// `/users/{id}`, and `/me` for user `id`.
    users: [u32; 4],
    /// `/users`: changes with any user.
    user_list: u32,
    /// Calls to `/auth/session`, which the cache must never answer.
    auth_calls: u32,
    /// `/pages/{id}`, by id (index 0 unused).
    pages: [u32; 4],
    /// Every call that reached the origin.
    calls: u64,
}

fn identity(headers: &HeaderMap) -> Who {
    if let Some(auth) = headers.get("authorization") {
        let n =
            auth.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).and_then(|n| n.parse().ok());
        return match n {
            Some(n @ 1..=3) => Who::User(n),
            _ => panic!("unexpected Authorization {auth:?}"),
        };
    }
    if headers.contains_key("cookie") {
        Who::Cookie
    } else {
        Who::Anon
    }
}

/// The query's parameters sorted by name, the order of repeated names kept.
fn sorted_query(query: &str) -> String {
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    params.sort_by_key(|p| p.split('=').next().unwrap_or(""));
    params.join("&")
}

fn item_id(segment: &str) -> usize {
    match segment.parse() {
        Ok(id @ 1..=3) => id,
        _ => panic!("unexpected id {segment}"),
    }
}

type Body = Full<Bytes>;

fn origin(db: &Mutex<Db>, request: &Request<String>) -> Response<Body> {
    let mut db = db.lock().unwrap();
    db.calls += 1;
    let who = identity(request.headers());
    let method = request.method().clone();
    let segments: Vec<&str> = request.uri().path().trim_start_matches('/').split('/').collect();
    if method == Method::GET || method == Method::HEAD {
        let (status, text) = match segments[..] {
            ["catalog", id] => {
                let query = sorted_query(request.uri().query().unwrap_or(""));
                (200, format!("catalog/{id} v{} q={query}", db.items[item_id(id)]))
            }
            ["catalog"] => (200, format!("catalog v{}", db.catalog)),
            ["me"] => match who {
                Who::User(n) => (200, format!("me for={who} v{}", db.users[n as usize])),
                _ => (401, "who are you?".to_owned()),
            },
            ["users", id] => (200, format!("users/{id} v{} for={who}", db.users[item_id(id)])),
            ["users"] => (200, format!("users v{} for={who}", db.user_list)),
            ["auth", "session"] => {
                db.auth_calls += 1;
                (200, format!("auth #{} for={who}", db.auth_calls))
            }
            ["pages", id] => (200, page_text(&db, item_id(id), who)),
            _ => panic!("unexpected read {}", request.uri()),
        };
        let body = if method == Method::HEAD { Bytes::new() } else { Bytes::from(text.clone()) };
        // A shared-cache rule takes the freshness the response gives; page 1 says it is the
        // same for anyone.
        let cache_control = match segments[..] {
            ["pages", "1"] => "public, max-age=86400",
            _ => "max-age=86400",
        };
        return Response::builder()
            .status(status)
            .header("x-model", text)
            .header("cache-control", cache_control)
            .body(Full::new(body))
            .unwrap();
    }

    let outcome: u16 = request.headers()["x-outcome"].to_str().unwrap().parse().unwrap();
    let done = (200..300).contains(&outcome);
    let mut response = Response::builder();
    match (&method, &segments[..]) {
        (&Method::PUT | &Method::DELETE, ["catalog", id]) => {
            if done {
                db.items[item_id(id)] += 1;
            }
        }
        (&Method::POST, ["catalog"]) => {
            let id = item_id(request.headers()["x-item"].to_str().unwrap());
            if done {
                db.items[id] += 1;
                db.catalog += 1;
            }
            let path = format!("/catalog/{id}");
            let host = request.headers().get("host").map(|h| h.to_str().unwrap());
            response = match (request.headers()["x-named"].to_str().unwrap(), host) {
                ("content-location", _) => response.header("content-location", path),
                ("absolute", Some(host)) => {
                    response.header("location", format!("http://{host}{path}"))
                }
                _ => response.header("location", path),
            };
        }
        (&Method::PUT, ["users", id]) => {
            if done {
                db.users[item_id(id)] += 1;
                db.user_list += 1;
            }
        }
        (&Method::PATCH, ["me"]) => match who {
            Who::User(n) => {
                if done {
                    db.users[n as usize] += 1;
                    db.user_list += 1;
                }
            }
            _ => return Response::builder().status(401).body(Body::default()).unwrap(),
        },
        (&Method::POST, ["auth", "login"]) => {}
        (&Method::PUT, ["pages", id]) => {
            if done {
                db.pages[item_id(id)] += 1;
            }
        }
        _ => panic!("unexpected write {method} {}", request.uri()),
    }
    response.status(outcome).body(Body::default()).unwrap()
}

/// What `/pages/{id}` says: page 1 the same for anyone, the others their requester's.
fn page_text(db: &Db, id: usize, who: Who) -> String {
    match id {
        1 => format!("pages/1 v{}", db.pages[1]),
        _ => format!("pages/{id} v{} for={who}", db.pages[id]),
    }
}

// ---------------------------------------------------------------------------------------------
// The model of what the cache may hold.

/// An entry, as the model names it: the route (queries normalised) and whose it is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Entry {
    Item(u8, u8),
    Catalog,
    Me(u8),
    User(u8),
    Users,
    Page(u8),
}

impl Entry {
    /// The entry's tags as the layer gives them: the rule's, and the `uri:` tag of its path
    /// (RFC 9111 section 4.4).
    fn tags(self) -> Vec<String> {
        match self {
            Entry::Item(id, _) => {
                vec!["catalog".into(), format!("catalog:{id}"), format!("uri:/catalog/{id}")]
            }
            Entry::Catalog => vec!["catalog".into(), "uri:/catalog".into()],
            Entry::Me(_) => vec!["me".into(), "uri:/me".into()],
            Entry::User(id) => {
                vec!["users".into(), format!("user:{id}"), format!("uri:/users/{id}")]
            }
            Entry::Users => vec!["users".into(), "uri:/users".into()],
            Entry::Page(id) => vec![format!("page:{id}"), format!("uri:/pages/{id}")],
        }
    }

    /// Whether `who` may be answered from the entry, and fill it (RFC 9111 section 3.5 on the
    /// shared-cache route: credentialed requests only where the response is `public`).
    fn open_to(self, who: Who) -> bool {
        match self {
            Entry::Page(id) => who == Who::Anon || id == 1,
            _ => true,
        }
    }
}

/// What the model knows of an entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Held {
    /// A miss stored it, and the store has taken the write: the next lookup must hit.
    Stored,
    /// A miss is storing it in the background: a lookup may hit or miss.
    Pending,
}

/// Which entry a read goes to, or `None` when the layer must bypass the cache.
fn entry_of(read: Read, who: Who) -> Option<Entry> {
    match (read, who) {
        (Read::Auth, _) => None,
        // Looked up by everyone; `Entry::open_to` says who meets it.
        (Read::Page(id), _) => Some(Entry::Page(id)),
        (Read::Item(id, q), _) => {
            // Queries that differ only in order share an entry.
            let q =
                QUERIES.iter().position(|x| *x == SORTED_QUERIES[q as usize]).unwrap_or(q as usize);
            Some(Entry::Item(id, q as u8))
        }
        (Read::Catalog, _) => Some(Entry::Catalog),
        (Read::Me, Who::User(n)) => Some(Entry::Me(n)),
        // A per-user route with no identifiable user.
        (Read::Me, _) => None,
        (Read::User(id), Who::Anon) => Some(Entry::User(id)),
        (Read::Users, Who::Anon) => Some(Entry::Users),
        // Credentialed requests to a route that is neither per-user nor shared.
        (Read::User(_) | Read::Users, _) => None,
    }
}

/// The status and text (body, and `x-model` header) the origin gives now for a read.
fn expected_read(db: &Db, read: Read, who: Who) -> (u16, String) {
    match read {
        Read::Item(id, q) => (
            200,
            format!("catalog/{id} v{} q={}", db.items[id as usize], SORTED_QUERIES[q as usize]),
        ),
        Read::Catalog => (200, format!("catalog v{}", db.catalog)),
        Read::Me => match who {
            Who::User(n) => (200, format!("me for={who} v{}", db.users[n as usize])),
            _ => (401, "who are you?".into()),
        },
        Read::User(id) => (200, format!("users/{id} v{} for={who}", db.users[id as usize])),
        Read::Users => (200, format!("users v{} for={who}", db.user_list)),
        Read::Auth => (200, format!("auth #{} for={who}", db.auth_calls + 1)),
        Read::Page(id) => (200, page_text(db, id as usize, who)),
    }
}

/// The status the origin gives a write.
fn write_status(write: Write, who: Who, answer: Answer) -> u16 {
    if matches!(write, Write::PatchMe) && !matches!(who, Who::User(_)) {
        return 401;
    }
    match answer {
        Answer::Done(_) if matches!(write, Write::PostCatalog(..)) => 201,
        Answer::Done(true) => 204,
        Answer::Done(false) => 200,
        Answer::Redirect => 303,
        Answer::Fail(code) => code,
    }
}

/// Applies a write to the model database.
fn apply_write(db: &mut Db, write: Write, who: Who, status: u16) {
    if !(200..300).contains(&status) {
        return;
    }
    match write {
        Write::PutItem(id) | Write::DeleteItem(id) => db.items[id as usize] += 1,
        Write::PostCatalog(id, _) => {
            db.items[id as usize] += 1;
            db.catalog += 1;
        }
        Write::PutUser(id) => {
            db.users[id as usize] += 1;
            db.user_list += 1;
        }
        Write::PatchMe => {
            let Who::User(n) = who else { unreachable!("401 above") };
            db.users[n as usize] += 1;
            db.user_list += 1;
        }
        Write::Login => {}
        Write::PutPage(id) => db.pages[id as usize] += 1,
    }
}

/// The tags a write invalidates: its rule's on `2xx`, its target URI's (and the same-host
/// `Location` / `Content-Location`'s) on `2xx` and `3xx` (RFC 9111 section 4.4).
fn invalidated_tags(write: Write, status: u16) -> Vec<String> {
    let success = (200..300).contains(&status);
    let non_error = success || (300..400).contains(&status);
    let mut tags = Vec::new();
    match write {
        Write::PutItem(id) => {
            if success {
                tags.push(format!("catalog:{id}"));
            }
            if non_error {
                tags.push(format!("uri:/catalog/{id}"));
            }
        }
        Write::DeleteItem(id) => {
            if non_error {
                tags.push(format!("uri:/catalog/{id}"));
            }
        }
        Write::PostCatalog(id, _) => {
            if non_error {
                tags.push("uri:/catalog".into());
                tags.push(format!("uri:/catalog/{id}"));
            }
        }
        Write::PutUser(id) => {
            if success {
                tags.extend(["users".into(), format!("user:{id}"), "me".into()]);
            }
            if non_error {
                tags.push(format!("uri:/users/{id}"));
            }
        }
        Write::PatchMe => {
            if success {
                tags.push("users".into());
            }
            if non_error {
                tags.push("uri:/me".into());
            }
        }
        Write::Login => {}
        Write::PutPage(id) => {
            if success {
                tags.push(format!("page:{id}"));
            }
            if non_error {
                tags.push(format!("uri:/pages/{id}"));
            }
        }
    }
    tags
}

/// What the runs covered, so that a test that checks nothing does not pass quietly.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    cases: u64,
    requests: u64,
    hits: u64,
    head_hits: u64,
    me_hits: u64,
    misses: u64,
    bypasses: u64,
    /// Entries the model knew stored that a write invalidated by URI alone.
    uri_only_invalidations: u64,
    /// Entries invalidated while their store was still in flight.
    pending_invalidations: u64,
    /// Failed writes that left stored entries alone.
    failed_writes_over_stored: u64,
    /// Cacheable reads whose answer changed since the last read of the same entry: where a
    /// stale entry could have been served.
    changed_since_last_read: u64,
    /// Credentialed requests answered from a shared-cache entry said to be for anyone.
    credentialed_public_hits: u64,
    /// Credentialed requests that found a stored shared-cache entry not for them, and missed.
    credentialed_kept_out: u64,
}

impl Coverage {
    fn add(&mut self, other: Coverage) {
        self.cases += other.cases;
        self.requests += other.requests;
        self.hits += other.hits;
        self.head_hits += other.head_hits;
        self.me_hits += other.me_hits;
        self.misses += other.misses;
        self.bypasses += other.bypasses;
        self.uri_only_invalidations += other.uri_only_invalidations;
        self.pending_invalidations += other.pending_invalidations;
        self.failed_writes_over_stored += other.failed_writes_over_stored;
        self.changed_since_last_read += other.changed_since_last_read;
        self.credentialed_public_hits += other.credentialed_public_hits;
        self.credentialed_kept_out += other.credentialed_kept_out;
    }
}

// ---------------------------------------------------------------------------------------------
// One case.

fn layer(store: Arc<dyn Store>, prefix: &str) -> CacheLayer {
    CacheLayer::builder(store)
        .store_timeout(Duration::from_secs(2))
        .key_prefix(prefix)
        .default_ttl(Duration::from_secs(86_400))
        .clock(ManualClock::starting_at(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ))
        .route("/catalog", Rule::get().shared().tag("catalog"))
        .route("/catalog/{id}", Rule::get().shared().tags(["catalog", "catalog:{id}"]))
        .route("/catalog/{id}", Rule::put().evicts(["catalog:{id}"]))
        .route("/me", Rule::get().per_user().tag("me"))
        .route("/me", Rule::patch().evicts(["users"]))
        .route("/users", Rule::get().tag("users"))
        .route("/users/{id}", Rule::get().tags(["users", "user:{id}"]))
        .route("/users/{id}", Rule::put().evicts(["users", "user:{id}", "me"]))
        .route("/pages/{id}", Rule::http_cache().tag("page:{id}"))
        .route("/pages/{id}", Rule::put().evicts(["page:{id}"]))
        .bypass("/auth/{*rest}")
        .build()
        .expect("the rules are valid")
}

fn request(op: &Op) -> Request<String> {
    let (method, path, who, host) = match *op {
        Op::Read { who, read, head, host, .. } => {
            (if head { Method::HEAD } else { Method::GET }, read.path(), who, host)
        }
        Op::Write { who, write, host, .. } => {
            let (method, path) = write.method_and_path();
            (method, path, who, host)
        }
    };
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(host) = HOSTS[host as usize] {
        builder = builder.header("host", host);
    }
    match who {
        Who::Anon => {}
        Who::User(n) => builder = builder.header("authorization", format!("Bearer {n}")),
        Who::Cookie => builder = builder.header("cookie", "session=c"),
    }
    if let Op::Write { write, answer, who, .. } = *op {
        builder = builder.header("x-outcome", write_status(write, who, answer).to_string());
        if let Write::PostCatalog(id, named) = write {
            let named = match named {
                Named::Location => "location",
                Named::AbsoluteLocation => "absolute",
                Named::ContentLocation => "content-location",
            };
            builder = builder.header("x-item", id.to_string()).header("x-named", named);
        }
    }
    builder.body(String::new()).unwrap()
}

/// Waits until the store has taken `stores` entries in all (the background writes of misses).
async fn settle(cache: &CacheHandle, stores: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut spins = 0;
    while cache.stats().stores < stores {
        if Instant::now() > deadline {
            return Err(format!(
                "the store took {} entries of {stores} within 5 s",
                cache.stats().stores
            ));
        }
        spins += 1;
        if spins < 20 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(())
}

/// Runs `ops` through a fresh layer over `store`; the first disagreement with the model is the
/// error.
async fn run_case(store: Arc<dyn Store>, prefix: &str, ops: &[Op]) -> Result<Coverage, String> {
    let db = Arc::new(Mutex::new(Db::default()));
    let layer = layer(store, prefix);
    let cache = layer.handle();
    let origin_db = Arc::clone(&db);
    let mut svc = layer.layer(tower::service_fn(move |request: Request<String>| {
        let response = origin(&origin_db, &request);
        async move { Ok::<_, Infallible>(response) }
    }));

    let mut model = Db::default();
    // By entry and by authority (0: none; 1: `shop.example`, in either case).
    let mut held: HashMap<(Entry, u8), Held> = HashMap::new();
    // Entries the layer said it is storing: what `stats().stores` reaches once all landed.
    let mut storing = 0u64;
    // The last answer seen for each entry.
    let mut last_seen: HashMap<(Entry, u8), String> = HashMap::new();
    let mut coverage = Coverage { cases: 1, ..Coverage::default() };

    for (step, op) in ops.iter().enumerate() {
        let fail = |what: String| Err(format!("step {step} ({op:?}): {what}"));
        // Every store write that was in flight has landed: what was pending is stored.
        if cache.stats().stores >= storing {
            for state in held.values_mut() {
                *state = Held::Stored;
            }
        }
        let calls_before = db.lock().unwrap().calls;
        let response = svc
            .ready()
            .await
            .unwrap_or_else(|e: Infallible| match e {})
            .call(request(op))
            .await
            .unwrap_or_else(|e: Infallible| match e {});
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap_or_else(|e: Infallible| match e {}).to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        let x_cache = parts.headers.get("x-cache").map_or("", |v| v.to_str().unwrap()).to_owned();
        let cache_status =
            parts.headers.get("cache-status").map_or("", |v| v.to_str().unwrap()).to_owned();
        let reached_origin = db.lock().unwrap().calls - calls_before;
        coverage.requests += 1;

        match *op {
            Op::Read { who, read, head, host, settle: wait } => {
                let (status, text) = expected_read(&model, read, who);
                if read == Read::Auth {
                    model.auth_calls += 1;
                }
                let shown =
                    parts.headers.get("x-model").map_or("", |v| v.to_str().unwrap()).to_owned();
                // (a) and (b): the origin's answer for this requester, as the data is now.
                if parts.status.as_u16() != status || shown != text {
                    return fail(format!(
                        "served {} `{shown}` (x-cache {x_cache}), the model says {status} `{text}`",
                        parts.status.as_u16()
                    ));
                }
                let expected_body = if head { "" } else { text.as_str() };
                if body != expected_body {
                    return fail(format!("body `{body}`, expected `{expected_body}`"));
                }
                match entry_of(read, who) {
                    None => {
                        if x_cache != "BYPASS" || reached_origin != 1 {
                            return fail(format!(
                                "must bypass the cache: x-cache {x_cache:?}, reached the origin \
                                 {reached_origin} times"
                            ));
                        }
                        coverage.bypasses += 1;
                    }
                    Some(entry) => {
                        let entry = (entry, host.min(1));
                        let known = held.get(&entry).copied();
                        if last_seen.insert(entry, text.clone()).is_some_and(|last| last != text) {
                            coverage.changed_since_last_read += 1;
                        }
                        let open = entry.0.open_to(who);
                        let ok = match (x_cache.as_str(), known) {
                            ("HIT", Some(_)) if open => reached_origin == 0,
                            ("MISS", None | Some(Held::Pending)) => reached_origin == 1,
                            // Stored, but not for this requester.
                            ("MISS", Some(Held::Stored)) if !open => reached_origin == 1,
                            _ => false,
                        };
                        if !ok {
                            return fail(format!(
                                "x-cache {x_cache:?} ({cache_status}), reached the origin \
                                 {reached_origin} times; the model holds {entry:?} as {known:?}"
                            ));
                        }
                        let credentialed = who != Who::Anon && matches!(entry.0, Entry::Page(_));
                        if x_cache == "HIT" {
                            coverage.credentialed_public_hits += u64::from(credentialed);
                            coverage.hits += 1;
                            coverage.head_hits += u64::from(head);
                            coverage.me_hits += u64::from(matches!(entry.0, Entry::Me(_)));
                        } else {
                            coverage.misses += 1;
                            coverage.credentialed_kept_out +=
                                u64::from(!open && known == Some(Held::Stored));
                            if !head && !open {
                                if cache_status.contains("; stored") {
                                    return fail(format!(
                                        "an answer to credentials, not for anyone, was stored: \
                                         {cache_status}"
                                    ));
                                }
                            } else if !head {
                                if !cache_status.contains("; stored") {
                                    return fail(format!(
                                        "a 200 GET miss was not stored: {cache_status}"
                                    ));
                                }
                                storing += 1;
                                held.insert(entry, Held::Pending);
                            }
                        }
                    }
                }
                if wait {
                    settle(&cache, storing).await?;
                }
            }
            Op::Write { who, write, answer, settle: wait, .. } => {
                let status = write_status(write, who, answer);
                if parts.status.as_u16() != status || !body.is_empty() {
                    return fail(format!("answered {} `{body}`", parts.status));
                }
                if x_cache != "BYPASS" || reached_origin != 1 {
                    return fail(format!(
                        "a write must pass through: x-cache {x_cache:?}, reached the origin \
                         {reached_origin} times"
                    ));
                }
                coverage.bypasses += 1;
                apply_write(&mut model, write, who, status);
                let tags = invalidated_tags(write, status);
                if tags.is_empty() && held.values().any(|h| *h == Held::Stored) {
                    coverage.failed_writes_over_stored += u64::from(status >= 400);
                }
                held.retain(|(entry, _), state| {
                    let hit: Vec<String> =
                        entry.tags().into_iter().filter(|t| tags.contains(t)).collect();
                    if hit.is_empty() {
                        return true;
                    }
                    if hit.iter().all(|t| t.starts_with("uri:")) && *state == Held::Stored {
                        coverage.uri_only_invalidations += 1;
                    }
                    if *state == Held::Pending {
                        coverage.pending_invalidations += 1;
                    }
                    false
                });
                if wait {
                    settle(&cache, storing).await?;
                }
            }
        }
    }
    let origin_db = db.lock().unwrap().clone();
    if (Db { calls: 0, ..origin_db }) != model {
        return Err(format!("the origin's data {origin_db:?} differs from the model's {model:?}"));
    }
    let stats = cache.stats();
    if stats.store_errors != 0 || stats.store_skipped != 0 {
        return Err(format!("store errors: {stats:?}"));
    }
    Ok(coverage)
}

// ---------------------------------------------------------------------------------------------
// The runs.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Runs `cases` random sequences; `backend(n)` gives the store and key prefix for case `n`.
fn check(
    name: &str,
    runtime: &tokio::runtime::Runtime,
    cases: u32,
    backend: impl Fn(u64) -> (Arc<dyn Store>, String),
) -> Coverage {
    let started = Instant::now();
    let config = Config { cases, source_file: Some(file!()), ..Config::default() };
    let mut runner = TestRunner::new(config);
    let case = Cell::new(0u64);
    let total = RefCell::new(Coverage::default());
    let result = runner.run(&ops(), |ops| {
        let n = case.get();
        case.set(n + 1);
        let (store, prefix) = backend(n);
        let coverage =
            runtime.block_on(run_case(store, &prefix, &ops)).map_err(TestCaseError::fail)?;
        total.borrow_mut().add(coverage);
        Ok(())
    });
    if let Err(error) = result {
        panic!("{name}: {error}");
    }
    let total = total.into_inner();
    eprintln!("{name}: {total:?} in {:?}", started.elapsed());
    assert!(
        total.hits > 0 && total.head_hits > 0 && total.me_hits > 0,
        "{name}: too few hits: {total:?}"
    );
    assert!(total.uri_only_invalidations > 0, "{name}: no URI-only invalidation: {total:?}");
    assert!(total.changed_since_last_read > 0, "{name}: no read after a change: {total:?}");
    assert!(
        total.credentialed_public_hits > 0 && total.credentialed_kept_out > 0,
        "{name}: the shared-cache route's credentialed requests were not exercised: {total:?}"
    );
    total
}

#[test]
fn model_over_memory_store() {
    let runtime = runtime();
    check("MemoryStore", &runtime, 256, |_| (Arc::new(MemoryStore::default()), "iso".to_owned()));
}

#[cfg(feature = "redis")]
#[test]
fn model_over_redis() {
    let server = RedisServer::start();
    let runtime = runtime();
    let store: Arc<dyn Store> = Arc::new(
        runtime.block_on(RedisStore::from_url(server.url())).expect("connect to the test's redis"),
    );
    // One server for all cases; each case gets keys of its own.
    check("RedisStore", &runtime, 64, |n| (Arc::clone(&store), format!("iso{n}")));
}
