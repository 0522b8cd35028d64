//! Who a request is for, so that per-user routes get one entry per user.
//!
//! A per-user route keys its entries by a [`UserId`], which an [`IdentifyUser`] finds in the
//! request. The crate ships three ways to find it:
//!
//! - [`UserFromHeader`]: a header such as `Authorization`, digested (the default, on
//!   `Authorization`);
//! - [`UserFromCookie`]: one cookie, such as a session id, digested: the other cookies a
//!   browser sends (analytics, preferences) neither split nor merge users;
//! - [`UserFromExtension`]: a value that an authentication middleware put in the request's
//!   extensions;
//! - [`user_fn`]: any closure over the request head.
//!
//! A request for a per-user route whose user cannot be identified is never looked up nor stored:
//! it goes to the inner service as it is.

use std::fmt;
use std::marker::PhantomData;
use std::sync::LazyLock;

use http::header::{HeaderMap, HeaderName, AUTHORIZATION, COOKIE};
use http::request::Parts;

/// An opaque identifier for a user: a digest, never the raw token, cookie or id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId([u8; 32]);

impl UserId {
    /// The identifier of whatever `bytes` stand for (a token, a session id, a user id).
    pub fn digest(bytes: impl AsRef<[u8]>) -> Self {
        // Made once: deriving the context's key costs as much as hashing a short value.
        static HASHER: LazyLock<blake3::Hasher> =
            LazyLock::new(|| blake3::Hasher::new_derive_key("tower-redis-cache 2026 user id"));
        let mut hasher = HASHER.clone();
        hasher.update(bytes.as_ref());
        Self(*hasher.finalize().as_bytes())
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A prefix is enough to tell users apart in logs.
        write!(f, "UserId({:02x}{:02x}{:02x}{:02x}..)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

/// Finds the user a request is for.
///
/// Return `None` when the request carries no identity: the request then bypasses the cache.
pub trait IdentifyUser: Send + Sync + 'static {
    /// The user that `request` is for, if any.
    fn identify(&self, request: &Parts) -> Option<UserId>;
}

/// Identifies users by the values of one or more request headers, digested.
///
/// Two requests share per-user entries only when they carry the same values, byte for byte.
/// A request carrying none of the headers has no user.
///
/// ```
/// use http::header::COOKIE;
/// use tower_redis_cache::UserFromHeader;
///
/// let by_token = UserFromHeader::authorization();
/// let by_session = UserFromHeader::new(COOKIE);
/// let by_either = UserFromHeader::authorization().and(COOKIE);
/// ```
#[derive(Debug, Clone)]
pub struct UserFromHeader {
    names: Vec<HeaderName>,
}

impl UserFromHeader {
    /// Identifies users by the header `name`. When it appears more than once, all its values
    /// count, in order.
    pub fn new(name: HeaderName) -> Self {
        Self { names: vec![name] }
    }

    /// Identifies users by their `Authorization` header.
    pub fn authorization() -> Self {
        Self::new(AUTHORIZATION)
    }

    /// Also counts the header `name`: the user is the combination of all the headers' values.
    pub fn and(mut self, name: HeaderName) -> Self {
        self.names.push(name);
        self
    }
}

impl IdentifyUser for UserFromHeader {
    fn identify(&self, request: &Parts) -> Option<UserId> {
        user_of(self.names.iter().map(|name| {
            request.headers.get_all(name).iter().map(|value| value.as_bytes()).collect()
        }))
    }
}

/// The user that `groups` of values stand for (one group per header or cookie name, in
/// order), each group's count then its values, length-prefixed; `None` when all are empty.
fn user_of<'a>(groups: impl Iterator<Item = Vec<&'a [u8]>>) -> Option<UserId> {
    let mut hasher = blake3::Hasher::new();
    let mut found = false;
    for values in groups {
        hasher.update(&(values.len() as u64).to_le_bytes());
        for value in values {
            found = true;
            hasher.update(&(value.len() as u64).to_le_bytes());
            hasher.update(value);
        }
    }
    found.then(|| UserId::digest(hasher.finalize().as_bytes()))
}

/// Identifies users by the values of one or more cookies, digested: a session id, say.
///
/// Only the named cookies count. Rotating analytics cookies (`_ga`) or preferences (`theme`)
/// do not split one user's entries, as [`UserFromHeader::new(COOKIE)`](UserFromHeader) would. A
/// request carrying none of the named cookies has no user.
///
/// ```
/// use tower_redis_cache::UserFromCookie;
///
/// let by_session = UserFromCookie::new("sid");
/// ```
#[derive(Debug, Clone)]
pub struct UserFromCookie {
    names: Vec<String>,
}

impl UserFromCookie {
    /// Identifies users by the cookie `name`. When it comes more than once, all its values
    /// count, in order.
    pub fn new(name: impl Into<String>) -> Self {
        Self { names: vec![name.into()] }
    }

    /// Also counts the cookie `name`: the user is the combination of all the cookies' values.
    pub fn and(mut self, name: impl Into<String>) -> Self {
        self.names.push(name.into());
        self
    }
}

impl IdentifyUser for UserFromCookie {
    fn identify(&self, request: &Parts) -> Option<UserId> {
        user_of(self.names.iter().map(|name| {
            cookie_values(&request.headers, name).into_iter().map(str::as_bytes).collect()
        }))
    }
}

/// The values of the cookies named `name` in a request's `Cookie` lines, in order
/// (`name=value` pairs separated by `;`, RFC 6265 section 5.4).
pub(crate) fn cookie_values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|line| line.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .filter(|(found, _)| found.trim() == name)
        .map(|(_, value)| value.trim())
        .collect()
}

/// Identifies users by a value of type `T` that an authentication middleware inserted into the
/// request's extensions, through its `Display` form.
///
/// ```
/// use tower_redis_cache::UserFromExtension;
///
/// #[derive(Clone)]
/// struct CurrentUser(u64);
/// impl std::fmt::Display for CurrentUser {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { self.0.fmt(f) }
/// }
///
/// let identify = UserFromExtension::<CurrentUser>::new();
/// ```
pub struct UserFromExtension<T> {
    _type: PhantomData<fn() -> T>,
}

impl<T> UserFromExtension<T> {
    /// Identifies users by the extension of type `T`.
    pub fn new() -> Self {
        Self { _type: PhantomData }
    }
}

impl<T> Default for UserFromExtension<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for UserFromExtension<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for UserFromExtension<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserFromExtension").field("type", &std::any::type_name::<T>()).finish()
    }
}

impl<T> IdentifyUser for UserFromExtension<T>
where
    T: fmt::Display + Send + Sync + 'static,
{
    fn identify(&self, request: &Parts) -> Option<UserId> {
        let user = request.extensions.get::<T>()?;
        Some(UserId::digest(user.to_string()))
    }
}

/// Identifies users with a closure over the request head. Made by [`user_fn`].
#[derive(Clone)]
pub struct UserFn<F> {
    f: F,
}

/// Identifies users with a closure that returns a string standing for the user (an id, a
/// subject claim), digested before use.
///
/// ```
/// use tower_redis_cache::user_fn;
///
/// let identify = user_fn(|request: &http::request::Parts| {
///     request.headers.get("x-user-id")?.to_str().ok().map(str::to_owned)
/// });
/// ```
pub fn user_fn<F>(f: F) -> UserFn<F>
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    UserFn { f }
}

impl<F> fmt::Debug for UserFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserFn").finish_non_exhaustive()
    }
}

impl<F> IdentifyUser for UserFn<F>
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    fn identify(&self, request: &Parts) -> Option<UserId> {
        (self.f)(request).map(UserId::digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::get("/me");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn header_identity_digests_the_value() {
        let identify = UserFromHeader::authorization();
        let a = identify.identify(&parts(&[("authorization", "Bearer 1")])).unwrap();
        let b = identify.identify(&parts(&[("authorization", "Bearer 2")])).unwrap();
        assert_ne!(a, b);
        assert_eq!(Some(a), identify.identify(&parts(&[("authorization", "Bearer 1")])));
        assert_eq!(None, identify.identify(&parts(&[])));
        assert!(!format!("{a:?}").contains("Bearer"));
    }

    #[test]
    fn repeated_headers_all_count() {
        let identify = UserFromHeader::new(http::header::COOKIE);
        let one = identify.identify(&parts(&[("cookie", "a=1")])).unwrap();
        let two = identify.identify(&parts(&[("cookie", "a=1"), ("cookie", "b=2")])).unwrap();
        assert_ne!(one, two);
    }

    #[test]
    fn several_headers_combine() {
        let identify = UserFromHeader::authorization().and(http::header::COOKIE);
        let token = identify.identify(&parts(&[("authorization", "t")])).unwrap();
        let cookie = identify.identify(&parts(&[("cookie", "t")])).unwrap();
        let both = identify.identify(&parts(&[("authorization", "t"), ("cookie", "t")])).unwrap();
        assert_ne!(token, cookie);
        assert_ne!(token, both);
        assert_eq!(identify.identify(&parts(&[("x-other", "t")])), None);
    }

    #[test]
    fn cookie_identity_reads_only_the_named_cookie() {
        let identify = UserFromCookie::new("sid");
        let user = identify.identify(&parts(&[("cookie", "_ga=1; sid=abc; theme=dark")]));
        let rotated =
            identify.identify(&parts(&[("cookie", "theme=light;sid=abc"), ("cookie", "_ga=2")]));
        assert!(user.is_some());
        assert_eq!(user, rotated, "other cookies do not split a user");
        assert_ne!(user, identify.identify(&parts(&[("cookie", "sid=abd")])));
        assert_eq!(identify.identify(&parts(&[("cookie", "_ga=1; xsid=abc")])), None);
        assert_eq!(identify.identify(&parts(&[("authorization", "sid=abc")])), None);
        // Two values are another user than either one.
        let twice = identify.identify(&parts(&[("cookie", "sid=abc; sid=x")]));
        assert_ne!(twice, user);
        let both = UserFromCookie::new("sid").and("tenant");
        assert_ne!(both.identify(&parts(&[("cookie", "sid=abc; tenant=t")])), user);
    }

    #[test]
    fn cookie_values_are_read_from_every_line_in_order() {
        let request =
            parts(&[("cookie", "a=1; b = 2 ;a=3"), ("cookie", "a=4"), ("cookie", "junk")]);
        assert_eq!(cookie_values(&request.headers, "a"), ["1", "3", "4"]);
        assert_eq!(cookie_values(&request.headers, "b"), ["2"]);
        assert!(cookie_values(&request.headers, "junk").is_empty());
    }

    #[test]
    fn extension_identity_reads_the_extension() {
        let identify = UserFromExtension::<u64>::new();
        let mut request = parts(&[]);
        assert_eq!(identify.identify(&request), None);
        request.extensions.insert(7_u64);
        assert_eq!(identify.identify(&request), Some(UserId::digest("7")));
    }

    #[test]
    fn closure_identity() {
        let identify = user_fn(|r: &Parts| r.headers.get("x-user")?.to_str().ok().map(Into::into));
        assert_eq!(identify.identify(&parts(&[("x-user", "9")])), Some(UserId::digest("9")));
    }
}
