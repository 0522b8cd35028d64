//! The text formats the fuzz targets read their input in.
//!
//! libFuzzer mutates bytes; these formats turn any bytes into a case for the crate's
//! `fuzzing` wrappers, and let the seeds in `seeds/` be written, and read, by people. Every
//! input parses: a line that means nothing is skipped, a bad number keeps the default.
//!
//! Both formats are sections of lines separated by blank lines. A line is `name: value`, the
//! value trimmed of surrounding spaces and tabs; a header line whose name `http` rejects is
//! skipped by the wrappers, not here, so that the fuzzer reaches the wrappers with it.
//!
//! `keys_and_tags`:
//!
//! ```text
//! GET /users/42?b=2&a=1        request line: method, space, target
//! host: Example.COM            request headers
//!
//! prefix: trc                  settings: the key prefix (default `trc`),
//! user: alice                  the user of a per-user entry,
//! vary: accept-language        headers the entry varies on (repeatable),
//! query: a                     a rule's key_query_params (repeatable; `query:` alone keeps none),
//! pattern: /users/{id}         a route pattern,
//! tag: user:{id}               its tag templates (repeatable),
//! path: /users/a:b             more paths to match (repeatable),
//! tagkey: users                tags to make store keys of (repeatable)
//! ```
//!
//! `response_headers`:
//!
//! ```text
//! status: 200                  the rule and the layer: status, ttl, max-ttl, swr, sie (seconds),
//! ttl: 60                      ignore-cache-control, per-user, head, surrogate-keys (flags:
//! per-user                     present or not), jitter (percent), now (Unix seconds), seed,
//!                              vary (repeatable)
//! accept-encoding: zstd        request headers
//!
//! cache-control: max-age=60    response headers
//!
//! [{"id":1}]                   the body: everything after the third blank line, as it is
//! ```

use tower_redis_cache::fuzzing::{KeyCase, RawHeader, ResponseCase};

/// The lines of `data`, without their `\n` and a trailing `\r`.
fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|b| *b == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line))
}

/// `data` cut at blank lines into at most `max` sections; the last one is the rest of `data`
/// as it is (a body may hold blank lines).
fn sections(data: &[u8], max: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(max);
    let mut start = 0;
    let mut at = 0;
    while out.len() + 1 < max && at <= data.len() {
        let end = data[at..].iter().position(|b| *b == b'\n').map_or(data.len(), |i| at + i);
        let line = &data[at..end];
        // A blank line ends a section; the end of `data` is not a line.
        if end < data.len() && (line.is_empty() || line == b"\r") {
            out.push(&data[start..at]);
            start = (end + 1).min(data.len());
        }
        at = end + 1;
    }
    out.push(&data[start.min(data.len())..]);
    out
}

/// A `name: value` line; a line without a colon is all name.
fn field(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|b| *b == b':') {
        Some(colon) => (&line[..colon], line[colon + 1..].trim_ascii()),
        None => (line, &[]),
    }
}

fn headers(section: &[u8]) -> Vec<RawHeader> {
    lines(section)
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = field(line);
            (name.to_vec(), value.to_vec())
        })
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn number<T: std::str::FromStr>(bytes: &[u8]) -> Option<T> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

/// A [`KeyCase`] from the `keys_and_tags` format.
pub fn key_case(data: &[u8]) -> KeyCase {
    let parts = sections(data, 2);
    let mut case = KeyCase { prefix: "trc".to_owned(), ..KeyCase::default() };
    let mut request = lines(parts[0]);
    if let Some(first) = request.next() {
        let (method, target) = match first.iter().position(|b| *b == b' ') {
            Some(space) => (&first[..space], &first[space + 1..]),
            None => (&b"GET"[..], first),
        };
        case.method = method.to_vec();
        case.uri = target.to_vec();
    }
    case.headers = request
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = field(line);
            (name.to_vec(), value.to_vec())
        })
        .collect();
    for line in lines(parts.get(1).map_or(&[][..], |s| *s)) {
        let (name, value) = field(line);
        match name {
            b"prefix" => case.prefix = text(value),
            b"user" => case.user = Some(value.to_vec()),
            b"vary" => case.vary.push(value.to_vec()),
            b"query" => {
                let keep = case.key_query_params.get_or_insert_with(Vec::new);
                if !value.is_empty() {
                    keep.push(text(value));
                }
            }
            b"pattern" => case.pattern = text(value),
            b"tag" => case.templates.push(text(value)),
            b"path" => case.paths.push(text(value)),
            b"tagkey" => case.tags.push(text(value)),
            _ => {}
        }
    }
    case
}

/// A [`ResponseCase`] from the `response_headers` format.
pub fn response_case(data: &[u8]) -> ResponseCase {
    let parts = sections(data, 4);
    let mut case = ResponseCase::default();
    for line in lines(parts[0]) {
        let (name, value) = field(line);
        match name {
            b"status" => case.status = number(value).unwrap_or(case.status),
            b"ttl" => case.ttl_secs = number(value),
            b"max-ttl" => case.max_ttl_secs = number(value),
            b"swr" => case.stale_while_revalidate_secs = number(value),
            b"sie" => case.stale_if_error_secs = number(value),
            b"ignore-cache-control" => case.upstream_cache_control = false,
            b"per-user" => case.per_user = true,
            b"head" => case.head = true,
            b"http-cache" => case.http_cache = true,
            b"surrogate-keys" => case.surrogate_keys = true,
            b"jitter" => case.jitter_percent = number(value).unwrap_or(0),
            b"now" => case.now_secs = number(value).unwrap_or(case.now_secs),
            b"seed" => case.seed = number(value).unwrap_or(0),
            b"vary" => case.vary.push(text(value)),
            _ => {}
        }
    }
    case.request = parts.get(1).map_or_else(Vec::new, |s| headers(s));
    case.response = parts.get(2).map_or_else(Vec::new, |s| headers(s));
    case.body = parts.get(3).map_or_else(Vec::new, |s| s.to_vec());
    case
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_keep_the_body_as_it_is() {
        let data = b"a\r\nb\n\nc\n\n\nd\n\ne";
        assert_eq!(sections(data, 4), [&b"a\r\nb\n"[..], b"c\n", b"", b"d\n\ne"]);
        assert_eq!(sections(b"", 3), [&b""[..]]);
        assert_eq!(sections(b"\n", 3), [&b""[..], b""]);
    }

    #[test]
    fn cases_parse() {
        let case =
            response_case(b"status: 203\nper-user\n\nif-none-match: \"v\"\n\nvary: *\n\nbody\n");
        assert_eq!(case.status, 203);
        assert!(case.per_user);
        assert_eq!(case.request, [(b"if-none-match".to_vec(), b"\"v\"".to_vec())]);
        assert_eq!(case.response, [(b"vary".to_vec(), b"*".to_vec())]);
        assert_eq!(case.body, b"body\n");
        let keys = key_case(b"HEAD /a?b\nhost: x\n\nquery:\ntag: t:{id}\npattern: /a/{id}\n");
        assert_eq!((keys.method.as_slice(), keys.uri.as_slice()), (&b"HEAD"[..], &b"/a?b"[..]));
        assert_eq!(keys.key_query_params, Some(Vec::new()));
        assert_eq!(keys.templates, ["t:{id}"]);
    }
}
