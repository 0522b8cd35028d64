//! An independent recogniser of the `Cache-Control` grammar, which the parser's property test
//! and the `cache_control` fuzz target hold [`CacheControl::parse`] to.
//!
//! It is written as a state machine over the ABNF, one byte at a time, where the parser is
//! written as a descent over slices, so that a mistake in one is unlikely to be made again in
//! the other. It uses nothing of the parser's:
//!
//! ```text
//! field line    = OWS #cache-directive OWS        (RFC 9110 section 5.2)
//! #element      = [ element ] *( OWS "," OWS [ element ] )   (section 5.6.1.2, recipients)
//! cache-directive = token [ "=" ( token / quoted-string ) ]  (RFC 9111 section 5.2)
//! token         = 1*tchar
//! quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE
//! qdtext        = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
//! quoted-pair   = "\" ( HTAB / SP / VCHAR / obs-text )
//! delta-seconds = 1*DIGIT                         (RFC 9111 section 1.2.2)
//! ```

use std::time::Duration;

use http::header::{HeaderMap, CACHE_CONTROL};

use super::CacheControl;

/// `tchar`, as RFC 9110 section 5.6.2 lists it.
const TCHAR_SYMBOLS: &[u8] = b"!#$%&'*+-.^_`|~";

/// One directive the grammar found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Directive {
    /// Its name, in lower case.
    pub(crate) name: String,
    /// Its argument, a quoted string's quoted pairs unescaped; `None` without `=`.
    pub(crate) argument: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Before an element: at the start, or after a comma.
    Gap,
    Name,
    /// Just after `=`.
    Equals,
    TokenArgument,
    Quoted,
    /// Just after a backslash in a quoted string.
    Escape,
    /// After an element, before a comma or the end.
    After,
}

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || TCHAR_SYMBOLS.contains(&b)
}

fn whitespace(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn obs_text(b: u8) -> bool {
    b >= 0x80
}

fn qdtext(b: u8) -> bool {
    whitespace(b)
        || b == 0x21
        || (0x23..=0x5b).contains(&b)
        || (0x5d..=0x7e).contains(&b)
        || obs_text(b)
}

fn quotable(b: u8) -> bool {
    whitespace(b) || (0x21..=0x7e).contains(&b) || obs_text(b)
}

/// The directives of one field line, in order, or `None` when the line does not follow the
/// grammar.
pub(crate) fn recognise(line: &[u8]) -> Option<Vec<Directive>> {
    let mut found = Vec::new();
    let mut name = String::new();
    let mut argument: Vec<u8> = Vec::new();
    let mut state = State::Gap;
    // An element ends at a space or a comma after its name or its token argument, or at the
    // closing quote of its quoted one.
    let ends = |found: &mut Vec<Directive>, name: &mut String, argument: Option<Vec<u8>>| {
        found.push(Directive { name: std::mem::take(name), argument });
    };
    for &b in line {
        state = match (state, b) {
            (State::Gap, b) if whitespace(b) || b == b',' => State::Gap,
            (State::Gap, b) if tchar(b) => {
                name.push(char::from(b.to_ascii_lowercase()));
                State::Name
            }
            (State::Name, b) if tchar(b) => {
                name.push(char::from(b.to_ascii_lowercase()));
                State::Name
            }
            (State::Name, b'=') => State::Equals,
            (State::Name, b) if whitespace(b) => {
                ends(&mut found, &mut name, None);
                State::After
            }
            (State::Name, b',') => {
                ends(&mut found, &mut name, None);
                State::Gap
            }
            (State::Equals, b'"') => State::Quoted,
            (State::Equals, b) if tchar(b) => {
                argument.push(b);
                State::TokenArgument
            }
            (State::TokenArgument, b) if tchar(b) => {
                argument.push(b);
                State::TokenArgument
            }
            (State::TokenArgument, b) if whitespace(b) => {
                ends(&mut found, &mut name, Some(std::mem::take(&mut argument)));
                State::After
            }
            (State::TokenArgument, b',') => {
                ends(&mut found, &mut name, Some(std::mem::take(&mut argument)));
                State::Gap
            }
            (State::Quoted, b'"') => {
                ends(&mut found, &mut name, Some(std::mem::take(&mut argument)));
                State::After
            }
            (State::Quoted, b'\\') => State::Escape,
            (State::Quoted, b) if qdtext(b) => {
                argument.push(b);
                State::Quoted
            }
            (State::Escape, b) if quotable(b) => {
                argument.push(b);
                State::Quoted
            }
            (State::After, b) if whitespace(b) => State::After,
            (State::After, b',') => State::Gap,
            _ => return None,
        };
    }
    match state {
        State::Gap | State::After => {}
        State::Name => found.push(Directive { name, argument: None }),
        State::TokenArgument => found.push(Directive { name, argument: Some(argument) }),
        State::Equals | State::Quoted | State::Escape => return None,
    }
    Some(found)
}

/// What a delta-seconds directive's arguments come to: `Ok(None)` when it is absent,
/// `Err(())` when one is not `1*DIGIT` or two differ.
fn expected_delta(directives: &[Directive], name: &str) -> Result<Option<Duration>, ()> {
    let mut value = None;
    for directive in directives.iter().filter(|d| d.name == name) {
        let digits = directive.argument.as_deref().ok_or(())?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        // Leading zeros say nothing; more than ten digits is past 2^31.
        let significant = std::str::from_utf8(digits).map_err(|_| ())?.trim_start_matches('0');
        let seconds = match significant.len() {
            0 => 0,
            1..=10 => significant.parse::<u64>().map_err(|_| ())?.min(1 << 31),
            _ => 1 << 31,
        };
        if value.is_some_and(|v| v != seconds) {
            return Err(());
        }
        value = Some(seconds);
    }
    Ok(value.map(Duration::from_secs))
}

/// Checks [`CacheControl::parse`] of `headers` against the grammar: it reads the field
/// exactly when every line follows the grammar, and then it sees `no-store`, `private`,
/// `no-cache` (with and without a field list), the revalidation directives and the
/// delta-seconds directives exactly where the grammar finds them. Panics where they differ.
pub(crate) fn check_parser(headers: &HeaderMap) {
    let lines: Vec<&[u8]> = headers.get_all(CACHE_CONTROL).iter().map(|v| v.as_bytes()).collect();
    let recognised: Option<Vec<Vec<Directive>>> = lines.iter().map(|l| recognise(l)).collect();
    let parsed = CacheControl::parse(headers);
    let (directives, parsed) = match (recognised, parsed) {
        (None, Err(_)) => return,
        (Some(_), Ok(None)) if lines.is_empty() => return,
        (Some(directives), Ok(Some(parsed))) => (directives.concat(), parsed),
        (recognised, parsed) => panic!(
            "the grammar says {:?} and the parser {parsed:?} for {lines:?}",
            recognised.map(|_| "readable").unwrap_or("unreadable"),
            lines = lines.iter().map(|l| String::from_utf8_lossy(l)).collect::<Vec<_>>(),
        ),
    };
    let has = |name: &str, argument: Option<bool>| {
        directives
            .iter()
            .any(|d| d.name == name && argument.is_none_or(|a| a == d.argument.is_some()))
    };
    let context =
        || format!("{:?}", lines.iter().map(|l| String::from_utf8_lossy(l)).collect::<Vec<_>>());
    assert_eq!(parsed.no_store(), has("no-store", None), "no-store in {}", context());
    assert_eq!(parsed.private(), has("private", None), "private in {}", context());
    assert_eq!(parsed.no_cache(), has("no-cache", Some(false)), "no-cache in {}", context());
    assert_eq!(
        parsed.no_cache_fields(),
        has("no-cache", Some(true)),
        "no-cache=fields in {}",
        context()
    );
    assert_eq!(parsed.must_revalidate(), has("must-revalidate", None), "in {}", context());
    assert_eq!(parsed.proxy_revalidate(), has("proxy-revalidate", None), "in {}", context());
    let mut invalid = false;
    for (name, read) in [
        ("max-age", parsed.max_age()),
        ("s-maxage", parsed.s_maxage()),
        ("stale-while-revalidate", parsed.stale_while_revalidate()),
        ("stale-if-error", parsed.stale_if_error()),
    ] {
        let expected = expected_delta(&directives, name);
        invalid |= expected.is_err();
        assert_eq!(read, expected.unwrap_or(None), "{name} in {}", context());
    }
    assert_eq!(parsed.invalid_freshness(), invalid, "invalid freshness in {}", context());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recogniser_follows_the_abnf() {
        let found = recognise(b" , No-Store ,private=\"a\\\"b\", max-age=60,").unwrap();
        let names: Vec<&str> = found.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["no-store", "private", "max-age"]);
        assert_eq!(found[1].argument.as_deref(), Some(&b"a\"b"[..]));
        assert_eq!(recognise(b""), Some(Vec::new()));
        for sloppy in [&b"private;"[..], b"\"private\"", b"a =b", b"a= b", b"a=\"", b"a=", b"a b"] {
            assert_eq!(recognise(sloppy), None, "{:?}", String::from_utf8_lossy(sloppy));
        }
    }
}
