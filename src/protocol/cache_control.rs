//! The `Cache-Control` header field, read strictly by its grammar, for responses and requests.
//!
//! A shared cache that reads this field leniently can be led to store what it must not: a
//! parser that skips what it does not understand misses the `private` in
//! `private="x-client"`, `private; max-age=60` or `"private"`, and stores for everyone a
//! response meant for one user. So this parser accepts exactly the grammar of RFC 9111
//! section 5.2, with the list and value rules of RFC 9110 section 5.6, and calls everything
//! else unreadable:
//!
//! ```text
//! Cache-Control   = #cache-directive
//! cache-directive = token [ "=" ( token / quoted-string ) ]
//! ```
//!
//! - a list's elements are separated by commas, with optional spaces and tabs around them;
//!   empty elements (`a,,b`, a leading or a trailing comma) are allowed (RFC 9110 section
//!   5.6.1.2);
//! - several field lines make one list, each line being a list on its own: a quoted string
//!   never runs on from one line into the next;
//! - directive names are case-insensitive; an argument is a token or a quoted string, with
//!   no space around the `=`;
//! - anything else is unreadable: a `;`, a quoted directive name, a space around `=`, an
//!   unterminated quoted string, a byte that neither a token nor a quoted string may hold.
//!
//! What the layer does with what it reads (`crate::service::decide::storable`, `crate::protocol::freshness`):
//!
//! | A response's `Cache-Control` | The layer |
//! |---|---|
//! | unreadable | never stores it: it may say `no-store` or `private` in a way we cannot see |
//! | `no-store`, with an argument or without | never stores it |
//! | `private`, with a field list or without | stores it only in per-user entries, never in a shared one |
//! | `no-cache="field"` (with a field list) | never stores it: a shared cache may only store it without the named fields (RFC 9111 section 5.2.2.4), and the layer does not strip fields |
//! | `no-cache` (without one) | stores it only with a validator, and revalidates it before each use |
//! | `max-age`, `s-maxage`, `stale-while-revalidate` or `stale-if-error` whose value is not delta-seconds, or one of them twice with different values | never stores it: RFC 9111 section 4.2.1 lets a cache consider invalid or repeated freshness stale, and a stale response is not worth storing |
//! | a delta-seconds value past 2^31 | reads 2^31 (RFC 9111 section 1.2.2) |
//! | `must-revalidate`, `proxy-revalidate` | never serves it stale |
//! | `public` | under [`Rule::http_cache`](crate::Rule::http_cache): gives it heuristic freshness whatever its status (RFC 9111 section 4.2.2) |
//! | `must-understand` | under [`Rule::http_cache`](crate::Rule::http_cache): stores it despite `no-store` when its status is one the cache implements, never otherwise (section 5.2.2.3) |
//!
//! Under [`Rule::http_cache`](crate::Rule::http_cache), a valid targeted field (RFC 9213,
//! `CDN-Cache-Control`; see `targeted`) is read instead, with the same directives.
//! | any other directive | ignores it |
//!
//! Delta-seconds are `1*DIGIT`, in a token or in a quoted string (RFC 9111 section 5.2: a
//! recipient accepts both forms). On a request, an unreadable `Cache-Control` is ignored, as
//! if absent, and so is a `max-age` that is not delta-seconds: a request can only ask for
//! less caching, so misreading it can cost a hit, never leak a response.
//!
//! This module is plain HTTP: it imports nothing else of the crate. Its tests hold it to an
//! independent recogniser of the same grammar (`grammar`, also the `cache_control` fuzz
//! target's oracle).

use std::time::Duration;

use http::header::{HeaderMap, CACHE_CONTROL, PRAGMA};

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod grammar;
mod targeted;

/// The largest delta-seconds a cache need count (RFC 9111 section 1.2.2: 2^31 seconds, some
/// 68 years): larger values read as this one, so that no sum of them overflows.
pub(crate) const MAX_DELTA_SECS: u64 = 1 << 31;

/// A `Cache-Control` that does not follow the grammar: nothing can be said about what it
/// asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unreadable;

/// A message's `Cache-Control`: the directives the layer acts on. Unknown directives are
/// dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    no_store: bool,
    /// `no-cache` without a field list.
    no_cache: bool,
    /// `no-cache` with a field list (`no-cache="set-cookie"`).
    no_cache_fields: bool,
    private: bool,
    public: bool,
    must_understand: bool,
    must_revalidate: bool,
    proxy_revalidate: bool,
    max_age: Delta,
    s_maxage: Delta,
    /// Read from a targeted field (RFC 9213) rather than from `Cache-Control`.
    targeted: bool,
    stale_while_revalidate: Delta,
    stale_if_error: Delta,
}

/// The value of a directive that takes delta-seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Delta {
    #[default]
    Absent,
    /// Seconds, at most [`MAX_DELTA_SECS`].
    Seconds(u64),
    /// A value that is not delta-seconds, or several different values.
    Invalid,
}

impl Delta {
    /// The directive once more, with `seconds` (`None`: a value that is not delta-seconds).
    fn again(self, seconds: Option<u64>) -> Delta {
        match (self, seconds) {
            (Delta::Absent, Some(seconds)) => Delta::Seconds(seconds),
            // The same value twice says no more than once.
            (Delta::Seconds(before), Some(seconds)) if before == seconds => self,
            _ => Delta::Invalid,
        }
    }

    fn duration(self) -> Option<Duration> {
        match self {
            Delta::Seconds(seconds) => Some(Duration::from_secs(seconds)),
            Delta::Absent | Delta::Invalid => None,
        }
    }
}

/// A directive's argument as it was written.
#[derive(Debug, Clone, Copy)]
enum Argument<'a> {
    Token(&'a [u8]),
    /// The inside of a quoted string, quoted pairs (`\x`) still escaped.
    Quoted(&'a [u8]),
}

impl Argument<'_> {
    /// The argument read as delta-seconds (`1*DIGIT`), saturated at [`MAX_DELTA_SECS`].
    fn delta_seconds(self) -> Option<u64> {
        let (bytes, quoted) = match self {
            Argument::Token(bytes) => (bytes, false),
            Argument::Quoted(bytes) => (bytes, true),
        };
        let mut escaped = false;
        let mut seconds: Option<u64> = None;
        for &b in bytes {
            // In a quoted string, `\6` is a `6` (RFC 9110 section 5.6.4).
            if quoted && !escaped && b == b'\\' {
                escaped = true;
                continue;
            }
            escaped = false;
            let digit = char::from(b).to_digit(10)?;
            // Below 2^31 * 10 + 9 before the cap: never overflows.
            seconds = Some((seconds.unwrap_or(0) * 10 + u64::from(digit)).min(MAX_DELTA_SECS));
        }
        seconds
    }
}

impl CacheControl {
    /// The `Cache-Control` of a message with `headers`: `None` without one, an error when any
    /// of its field lines does not follow the grammar.
    pub(crate) fn parse(headers: &HeaderMap) -> Result<Option<CacheControl>, Unreadable> {
        let mut lines = headers.get_all(CACHE_CONTROL).iter().peekable();
        if lines.peek().is_none() {
            return Ok(None);
        }
        let mut parsed = CacheControl::default();
        for line in lines {
            parsed.read_line(line.as_bytes())?;
        }
        Ok(Some(parsed))
    }

    /// Whether it says `no-store`.
    pub(crate) fn no_store(&self) -> bool {
        self.no_store
    }

    /// Whether it says `no-cache` without a field list.
    pub(crate) fn no_cache(&self) -> bool {
        self.no_cache
    }

    /// Whether it says `no-cache` with a field list: the named fields must not be reused
    /// without revalidation.
    pub(crate) fn no_cache_fields(&self) -> bool {
        self.no_cache_fields
    }

    /// Whether it says `private`, with a field list or without.
    pub(crate) fn private(&self) -> bool {
        self.private
    }

    /// Whether it says `public`.
    pub(crate) fn public(&self) -> bool {
        self.public
    }

    /// Whether it says `must-understand` (RFC 9111 section 5.2.2.3).
    pub(crate) fn must_understand(&self) -> bool {
        self.must_understand
    }

    /// Whether it was read from a targeted field (see [`CacheControl::targeted`]), which
    /// stands in for `Cache-Control` and `Expires` both.
    pub(crate) fn is_targeted(&self) -> bool {
        self.targeted
    }

    /// Whether it lets a shared cache reuse a response to a request with `Authorization` for
    /// others (RFC 9111 section 3.5): `public`, `s-maxage` or `must-revalidate`.
    pub(crate) fn reusable_by_anyone(&self) -> bool {
        self.public || self.s_maxage().is_some() || self.must_revalidate
    }

    /// Whether it says `must-revalidate`.
    pub(crate) fn must_revalidate(&self) -> bool {
        self.must_revalidate
    }

    /// Whether it says `proxy-revalidate`.
    pub(crate) fn proxy_revalidate(&self) -> bool {
        self.proxy_revalidate
    }

    /// Its `max-age`, when that is valid.
    pub(crate) fn max_age(&self) -> Option<Duration> {
        self.max_age.duration()
    }

    /// Its `s-maxage`, when that is valid.
    pub(crate) fn s_maxage(&self) -> Option<Duration> {
        self.s_maxage.duration()
    }

    /// Its RFC 5861 `stale-while-revalidate`, when that is valid.
    pub(crate) fn stale_while_revalidate(&self) -> Option<Duration> {
        self.stale_while_revalidate.duration()
    }

    /// Its RFC 5861 `stale-if-error`, when that is valid.
    pub(crate) fn stale_if_error(&self) -> Option<Duration> {
        self.stale_if_error.duration()
    }

    /// Whether `max-age`, `s-maxage`, `stale-while-revalidate` or `stale-if-error` has a value
    /// that is not delta-seconds, or appears twice with different values.
    pub(crate) fn invalid_freshness(&self) -> bool {
        [self.max_age, self.s_maxage, self.stale_while_revalidate, self.stale_if_error]
            .contains(&Delta::Invalid)
    }

    /// Reads one field line, `[ element ] *( OWS "," OWS [ element ] )`, into `self`.
    fn read_line(&mut self, line: &[u8]) -> Result<(), Unreadable> {
        // The field line's own surrounding whitespace is not part of its value.
        let mut rest = skip_ows(line);
        loop {
            if let Some((name, after)) = split_token(rest) {
                let (argument, after) = match after.split_first() {
                    Some((b'=', value)) => {
                        let (argument, after) = split_argument(value)?;
                        (Some(argument), after)
                    }
                    _ => (None, after),
                };
                self.apply(name, argument.map(Argument::delta_seconds));
                rest = after;
            }
            rest = skip_ows(rest);
            match rest.split_first() {
                None => return Ok(()),
                Some((b',', after)) => rest = skip_ows(after),
                Some(_) => return Err(Unreadable),
            }
        }
    }

    /// Records the directive `name`, whose argument (when it has one) reads as `seconds`
    /// when it is delta-seconds.
    fn apply(&mut self, name: &[u8], argument: Option<Option<u64>>) {
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        let seconds = || argument.flatten();
        if is("no-store") {
            self.no_store = true;
        } else if is("no-cache") {
            match argument {
                Some(_) => self.no_cache_fields = true,
                None => self.no_cache = true,
            }
        } else if is("private") {
            self.private = true;
        } else if is("public") {
            self.public = true;
        } else if is("must-understand") {
            self.must_understand = true;
        } else if is("must-revalidate") {
            self.must_revalidate = true;
        } else if is("proxy-revalidate") {
            self.proxy_revalidate = true;
        } else if is("max-age") {
            self.max_age = self.max_age.again(seconds());
        } else if is("s-maxage") {
            self.s_maxage = self.s_maxage.again(seconds());
        } else if is("stale-while-revalidate") {
            self.stale_while_revalidate = self.stale_while_revalidate.again(seconds());
        } else if is("stale-if-error") {
            self.stale_if_error = self.stale_if_error.again(seconds());
        }
    }
}

/// Whether a request asks not to be answered from a cache: `Cache-Control: no-cache` or
/// `max-age=0`, or (without `Cache-Control`) `Pragma: no-cache`. An unreadable
/// `Cache-Control` is ignored: a request can only ask for less caching, so misreading one
/// costs a hit at worst.
pub(crate) fn asks_for_origin(headers: &HeaderMap) -> bool {
    match CacheControl::parse(headers) {
        Ok(Some(cc)) => {
            cc.no_cache() || cc.no_cache_fields() || cc.max_age() == Some(Duration::ZERO)
        }
        Ok(None) => {
            headers.get_all(PRAGMA).iter().any(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"))
        }
        Err(_) => false,
    }
}

/// `tchar` (RFC 9110 section 5.6.2).
pub(crate) fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_'
        | b'`' | b'|' | b'~')
}

fn skip_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(bytes.len());
    &bytes[start..]
}

/// A token at the start of `bytes` (at least one `tchar`), and what follows it.
fn split_token(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = bytes.iter().position(|&b| !is_tchar(b)).unwrap_or(bytes.len());
    (end > 0).then(|| bytes.split_at(end))
}

/// The argument after a directive's `=`: a token, or a quoted string (RFC 9110 section
/// 5.6.4), and what follows it.
fn split_argument(bytes: &[u8]) -> Result<(Argument<'_>, &[u8]), Unreadable> {
    let Some(inside) = bytes.strip_prefix(b"\"") else {
        let (token, rest) = split_token(bytes).ok_or(Unreadable)?;
        return Ok((Argument::Token(token), rest));
    };
    let mut at = 0;
    while let Some(&b) = inside.get(at) {
        match b {
            b'"' => return Ok((Argument::Quoted(&inside[..at]), &inside[at + 1..])),
            // quoted-pair: a backslash, then a tab, a space, a visible or an obs-text byte.
            b'\\' => match inside.get(at + 1) {
                Some(b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff) => at += 2,
                _ => return Err(Unreadable),
            },
            // qdtext.
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => at += 1,
            _ => return Err(Unreadable),
        }
    }
    // No closing quote.
    Err(Unreadable)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    fn parse(lines: &[&str]) -> Result<Option<CacheControl>, Unreadable> {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(CACHE_CONTROL, HeaderValue::from_str(line).unwrap());
        }
        CacheControl::parse(&headers)
    }

    fn read(line: &str) -> CacheControl {
        parse(&[line]).unwrap().unwrap_or_else(|| panic!("{line:?} read as absent"))
    }

    #[test]
    fn a_message_without_cache_control_has_none() {
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(parse(&[""]), Ok(Some(CacheControl::default())), "present, says nothing");
    }

    #[test]
    fn well_formed_lists_are_read_whatever_their_spacing_and_case() {
        let cc = read(" No-Store ,,\tPRIVATE=\"a, b\" , max-age=60,s-maxage=\"30\",");
        assert!(cc.no_store() && cc.private());
        assert_eq!(cc.max_age(), Some(Duration::from_secs(60)));
        assert_eq!(cc.s_maxage(), Some(Duration::from_secs(30)));
        assert!(!cc.no_cache() && !cc.no_cache_fields() && !cc.invalid_freshness());
        assert_eq!(read(", ,"), CacheControl::default());
    }

    #[test]
    fn private_and_no_store_in_sloppy_forms_are_unreadable() {
        for line in [
            "no-store; max-age=0",
            "private; max-age=60",
            "private;",
            "\"private\"",
            "private =\"x\"",
            "private= \"x\"",
            "private=\"x",
            "private=\"x\\",
            "private=",
            "private=\"x\"y",
            "private max-age=60",
            "=private",
            "pri\u{e9}vate",
        ] {
            assert_eq!(parse(&[line]), Err(Unreadable), "{line:?}");
        }
        // One unreadable line makes the whole field unreadable.
        assert_eq!(parse(&["max-age=60", "private;"]), Err(Unreadable));
        // A quoted string does not run on into the next line.
        assert_eq!(parse(&["private=\"a", "b\""]), Err(Unreadable));
    }

    #[test]
    fn private_and_no_cache_with_field_lists_are_told_apart() {
        let cc = read("private=\"x-reflect-x-client\", max-age=60");
        assert!(cc.private());
        let cc = read("no-cache=\"x-reflect-x-client\", max-age=60");
        assert!(cc.no_cache_fields() && !cc.no_cache());
        let cc = read("no-cache=set-cookie");
        assert!(cc.no_cache_fields() && !cc.no_cache());
        assert!(read("no-cache").no_cache() && !read("no-cache").no_cache_fields());
        assert!(read("no-store=\"x\"").no_store(), "an argument does not undo no-store");
        assert!(read("must-revalidate, proxy-revalidate").proxy_revalidate());
        assert!(read("Must-Revalidate").must_revalidate());
    }

    #[test]
    fn delta_seconds_are_digits_in_either_form_and_saturate() {
        assert_eq!(read("max-age=\"6\\0\"").max_age(), Some(Duration::from_secs(60)));
        assert_eq!(read("max-age=007").max_age(), Some(Duration::from_secs(7)));
        let huge = read("max-age=99999999999999999999999999999999999999999");
        assert_eq!(huge.max_age(), Some(Duration::from_secs(MAX_DELTA_SECS)));
        assert_eq!(
            read("stale-if-error=2147483648").stale_if_error(),
            Some(Duration::from_secs(MAX_DELTA_SECS))
        );
        for line in ["max-age=soon", "max-age", "max-age=-1", "max-age=\"\"", "max-age=1.5"] {
            let cc = read(line);
            assert!(cc.invalid_freshness() && cc.max_age().is_none(), "{line:?}");
        }
    }

    #[test]
    fn a_freshness_directive_repeated_with_another_value_is_invalid() {
        assert!(read("max-age=60, max-age=5").invalid_freshness());
        assert!(parse(&["s-maxage=60", "s-maxage=5"]).unwrap().unwrap().invalid_freshness());
        let same = read("max-age=60, max-age=\"060\"");
        assert!(!same.invalid_freshness());
        assert_eq!(same.max_age(), Some(Duration::from_secs(60)));
        assert!(read("stale-while-revalidate=1, stale-while-revalidate").invalid_freshness());
    }

    #[test]
    fn unknown_directives_are_ignored() {
        assert_eq!(read("immutable, x-ext=\"a;b\", community=UCI"), CacheControl::default());
    }

    #[test]
    fn public_and_must_understand_are_read_in_any_case() {
        let cc = read("Public, MUST-UNDERSTAND, no-store");
        assert!(cc.public() && cc.must_understand() && cc.no_store());
        assert!(!read("x-public, must-understandx").public());
        // A quoted string is an argument, never a directive.
        assert!(!read("x=\"public\"").public());
    }

    /// Pieces of `Cache-Control` lines, well formed and sloppy, from which the property test
    /// puts lines together: directive names, arguments (with their `=`) and separators.
    const NAMES: &[&str] = &[
        "no-store",
        "No-Store",
        "private",
        "PRIVATE",
        "no-cache",
        "public",
        "max-age",
        "s-maxage",
        "stale-while-revalidate",
        "stale-if-error",
        "must-revalidate",
        "proxy-revalidate",
        "x-ext",
    ];
    const SLOPPY_NAMES: &[&str] = &["\"private\"", "no-store;", "", "pri vate"];
    const ARGUMENTS: &[&str] = &[
        "",
        "",
        "=60",
        "=0",
        "=99999999999999999999",
        "=\"60\"",
        "=\"6\\0\"",
        "=\"x-reflect-x-client\"",
        "=\"a, b\"",
        "=\"a;b\\\"\"",
        "=\"\u{e9}\"",
        "=soon",
        "=-1",
    ];
    const SLOPPY_ARGUMENTS: &[&str] = &["=", "= 60", " =60", "=\"", "=\"x\\", "=\"x\"y"];
    const SEPARATORS: &[&str] = &[",", ", ", " ,", ",\t", ",,"];
    const SLOPPY_SEPARATORS: &[&str] = &[";", "; ", " ", ""];

    /// One of `good`, six times in seven, else one of `sloppy`: about half the lines put
    /// together follow the grammar.
    fn piece(
        good: &'static [&'static str],
        sloppy: &'static [&'static str],
    ) -> BoxedStrategy<&'static str> {
        prop_oneof![6 => prop::sample::select(good), 1 => prop::sample::select(sloppy)].boxed()
    }

    fn line() -> impl Strategy<Value = String> {
        let element = (
            piece(NAMES, SLOPPY_NAMES),
            piece(ARGUMENTS, SLOPPY_ARGUMENTS),
            piece(SEPARATORS, SLOPPY_SEPARATORS),
        );
        (prop::sample::select(&["", " ", ","][..]), prop::collection::vec(element, 0..6)).prop_map(
            |(lead, elements)| {
                let mut line = lead.to_owned();
                for (name, argument, separator) in elements {
                    line.push_str(name);
                    line.push_str(argument);
                    line.push_str(separator);
                }
                line
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// The parser agrees with the grammar's recogniser on lines put together from well
        /// formed and sloppy pieces.
        #[test]
        fn the_parser_accepts_exactly_what_the_grammar_accepts(
            lines in prop::collection::vec(line(), 0..3),
        ) {
            let mut headers = HeaderMap::new();
            for line in &lines {
                headers.append(CACHE_CONTROL, HeaderValue::from_str(line).unwrap());
            }
            grammar::check_parser(&headers);
        }
    }
}
