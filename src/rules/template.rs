//! Tag templates such as `user:{id}`, filled from a route's path parameters.

use percent_encoding::{percent_decode_str, percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but ASCII letters, digits and `-._~` is escaped in a tag parameter, so a parameter
/// can never produce a `:` or any other character that would let it forge another tag.
const TAG_PARAM: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Escapes a value the way the layer escapes path parameters inside templated tags.
///
/// Use it to evict a templated tag from outside HTTP, for a value that may hold characters other
/// than ASCII letters, digits and `-._~`:
///
/// ```
/// use tower_redis_cache::escape_tag_param;
///
/// assert_eq!(escape_tag_param("42"), "42");
/// assert_eq!(escape_tag_param("a:b"), "a%3Ab");
/// // A route `/users/{id}` with tag `user:{id}` gives `user:a%3Ab` for `/users/a:b`, so this
/// // evicts it: handle.evict_tags([format!("user:{}", escape_tag_param("a:b"))])
/// ```
pub fn escape_tag_param(value: &str) -> String {
    escape_bytes(value.as_bytes())
}

fn escape_bytes(bytes: &[u8]) -> String {
    percent_encode(bytes, TAG_PARAM).to_string()
}

/// A parsed tag: literal text and `{param}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TagTemplate {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Param(String),
}

impl TagTemplate {
    /// Parses `source`, checking that every placeholder names one of `params`.
    pub(crate) fn parse(source: &str, params: &[String]) -> Result<Self, String> {
        if source.is_empty() {
            return Err("a tag must not be empty".to_owned());
        }
        if source.starts_with('#') {
            return Err(format!("tag `{source}`: tags starting with `#` are the layer's own"));
        }
        let mut parts = Vec::new();
        let mut rest = source;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Literal(rest.to_owned()));
                    break;
                }
                Some(at) if rest.as_bytes()[at] == b'}' => {
                    return Err(format!("tag `{source}` has a `}}` with no matching `{{`"));
                }
                Some(at) => {
                    if at > 0 {
                        parts.push(Part::Literal(rest[..at].to_owned()));
                    }
                    let Some(len) = rest[at..].find('}') else {
                        return Err(format!("tag `{source}` has a `{{` with no matching `}}`"));
                    };
                    let name = &rest[at + 1..at + len];
                    if !params.iter().any(|param| param == name) {
                        return Err(format!(
                            "tag `{source}` names `{{{name}}}`, which the pattern does not capture"
                        ));
                    }
                    parts.push(Part::Param(name.to_owned()));
                    rest = &rest[at + len + 1..];
                }
            }
        }
        Ok(Self { source: source.to_owned(), parts })
    }

    /// The tag for one request: placeholders replaced by the percent-decoded, then escaped,
    /// values of the matched path parameters. Decoding first means `/users/%31` and `/users/1`
    /// give the same tag, as they reach the same handler.
    pub(crate) fn render(&self, params: &matchit::Params<'_, '_>) -> String {
        let mut tag = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(text) => tag.push_str(text),
                Part::Param(name) => {
                    let raw = params.get(name).unwrap_or_default();
                    let decoded: Vec<u8> = percent_decode_str(raw).collect();
                    tag.push_str(&escape_bytes(&decoded));
                }
            }
        }
        tag
    }
}

/// The names a route pattern captures: `id` for `{id}`, `rest` for `{*rest}`.
pub(crate) fn pattern_params(pattern: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = pattern;
    while let Some(at) = rest.find('{') {
        if rest[at..].starts_with("{{") {
            rest = &rest[at + 2..];
            continue;
        }
        let Some(len) = rest[at..].find('}') else {
            break;
        };
        let name = rest[at + 1..at + len].trim_start_matches('*');
        names.push(name.to_owned());
        rest = &rest[at + len + 1..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(pattern: &str, template: &str, path: &str) -> String {
        let mut router = matchit::Router::new();
        router.insert(pattern, ()).unwrap();
        let matched = router.at(path).unwrap();
        TagTemplate::parse(template, &pattern_params(pattern)).unwrap().render(&matched.params)
    }

    #[test]
    fn pattern_params_are_found() {
        assert_eq!(pattern_params("/users/{id}/posts/{post}"), ["id", "post"]);
        assert_eq!(pattern_params("/files/{*rest}"), ["rest"]);
        assert_eq!(pattern_params("/literal/{{braces}}"), Vec::<String>::new());
    }

    #[test]
    fn templates_fill_params() {
        assert_eq!(render("/users/{id}", "user:{id}", "/users/42"), "user:42");
        assert_eq!(render("/users/{id}", "users", "/users/42"), "users");
        assert_eq!(render("/a/{x}/{y}", "{x}-{y}", "/a/1/2"), "1-2");
    }

    #[test]
    fn params_cannot_forge_other_tags() {
        assert_eq!(render("/users/{id}", "user:{id}", "/users/1:posts"), "user:1%3Aposts");
        assert_eq!(render("/users/{id}", "user:{id}", "/users/%7Bid%7D"), "user:%7Bid%7D");
        assert_eq!(render("/files/{*rest}", "file:{rest}", "/files/a/b"), "file:a%2Fb");
        assert_eq!(render("/users/{id}", "user:{id}", "/users/%FF"), "user:%FF");
    }

    #[test]
    fn encoded_and_plain_paths_give_one_tag() {
        assert_eq!(render("/users/{id}", "user:{id}", "/users/%31"), "user:1");
        assert_eq!(escape_tag_param("1"), "1");
    }

    #[test]
    fn bad_templates_are_rejected() {
        let params = vec!["id".to_owned()];
        assert!(TagTemplate::parse("", &params).is_err());
        assert!(TagTemplate::parse("#uri:abc", &params).is_err());
        assert!(TagTemplate::parse("user:{uid}", &params).unwrap_err().contains("`{uid}`"));
        assert!(TagTemplate::parse("user:{id", &params).is_err());
        assert!(TagTemplate::parse("user:id}", &params).is_err());
    }

    // Properties: path parameters cannot forge tags. A parameter is percent-decoded, then
    // escaped, so two renderings of one template are equal exactly when the parameters decode
    // to the same bytes, and a rendering never has the shape of another template's or of a
    // fixed tag.

    use proptest::prelude::*;

    use crate::entry::key::{tag_key, MAX_PLAIN_TAG};

    /// Routes and their templates; parameters sit between `:` and the end of the tag or
    /// another `:`, the shape the crate documents (`user:{id}`).
    const TEMPLATES: [(&str, &str); 5] = [
        ("/users/{id}", "user:{id}"),
        ("/users/{id}/posts", "user:{id}:posts"),
        ("/posts/{id}", "post:{id}"),
        ("/users/{uid}/posts/{pid}", "user:{uid}:post:{pid}"),
        ("/files/{*rest}", "file:{rest}"),
    ];

    /// Tags written by hand that no rendering may equal.
    const FIXED: [&str; 8] =
        ["users", "user", "user:", "posts", "post", "file:", "user:1:posts:all", "user:1:post:"];

    /// Percent-decoding as RFC 3986 has it: `%` and two hex digits is a byte; anything else is
    /// itself.
    fn decode(raw: &str) -> Vec<u8> {
        let bytes = raw.as_bytes();
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        out
    }

    /// A raw path parameter: separators, braces, escapes of them in both cases, escapes that
    /// decode to bytes that are not UTF-8, malformed escapes, non-ASCII text, and sometimes a
    /// long run. With `slash`, also `/` (for catch-all parameters).
    fn raw_param(slash: bool) -> impl Strategy<Value = String> {
        let mut pieces = vec![
            "1", "a", "Z", "-", ".", "_", "~", ":", ",", "*", "{", "}", "{id}", "#", "%3A", "%3a",
            "%2C", "%2F", "%2f", "%25", "%31", "%7B", "%7D", "%", "%z", "%FF", "%C3", "%C3%A9",
            "é", "😀", "user:1", "%00",
        ];
        if slash {
            pieces.push("/");
        }
        let piece = prop::sample::select(pieces);
        let long = prop_oneof![3 => Just(0usize), 1 => 100usize..300];
        (prop::collection::vec(piece, 1..6), long)
            .prop_map(|(pieces, long)| format!("{}{}", pieces.concat(), "x".repeat(long)))
    }

    /// A template of [`TEMPLATES`] and raw values for its parameters.
    fn rendering() -> impl Strategy<Value = (usize, Vec<String>)> {
        (0..TEMPLATES.len(), raw_param(false), raw_param(false), raw_param(true)).prop_map(
            |(t, a, b, rest)| match t {
                3 => (t, vec![a, b]),
                4 => (t, vec![rest]),
                _ => (t, vec![a]),
            },
        )
    }

    /// The same parameter spelt another way: each ASCII byte of its decoding literally or
    /// escaped, by the bits of `choice`, escapes in either case (`%`, `/` and non-ASCII bytes
    /// always escaped).
    fn respell(raw: &str, choice: u64) -> String {
        let mut out = String::new();
        for (i, byte) in decode(raw).into_iter().enumerate() {
            let bit = |n: usize| choice >> ((2 * i + n) % 64) & 1 == 1;
            let must_escape = !byte.is_ascii() || byte == b'%' || byte == b'/';
            if !must_escape && !byte.is_ascii_control() && bit(0) {
                out.push(byte as char);
            } else if bit(1) {
                out.push_str(&format!("%{byte:02x}"));
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    }

    /// The tag for a request to the route of `TEMPLATES[t]` with these raw parameters.
    fn render_raw(t: usize, params: &[String]) -> String {
        let (pattern, template) = TEMPLATES[t];
        let path = match (t, params) {
            (0, [a]) => format!("/users/{a}"),
            (1, [a]) => format!("/users/{a}/posts"),
            (2, [a]) => format!("/posts/{a}"),
            (3, [a, b]) => format!("/users/{a}/posts/{b}"),
            (4, [rest]) => format!("/files/{rest}"),
            _ => unreachable!("{t} {params:?}"),
        };
        render(pattern, template, &path)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// One template: equal tags exactly when the parameters decode to equal bytes; the
        /// escaped part decodes back to them, holds nothing but letters, digits, `-._~` and
        /// escapes, and is what `escape_tag_param` gives for UTF-8 values.
        #[test]
        fn a_template_renders_equal_tags_only_for_equal_params(
            a in raw_param(false),
            b in raw_param(false),
        ) {
            let tag_a = render("/users/{id}", "user:{id}", &format!("/users/{a}"));
            let tag_b = render("/users/{id}", "user:{id}", &format!("/users/{b}"));
            prop_assert_eq!(tag_a == tag_b, decode(&a) == decode(&b), "{} and {}", tag_a, tag_b);
            let escaped = tag_a.strip_prefix("user:").expect("the literal comes first");
            prop_assert!(
                escaped.bytes().all(|c| c.is_ascii_alphanumeric() || b"-._~%".contains(&c)),
                "{escaped}"
            );
            prop_assert_eq!(decode(escaped), decode(&a));
            if let Ok(text) = String::from_utf8(decode(&a)) {
                prop_assert_eq!(escape_tag_param(&text), escaped);
            }
        }

        /// A parameter spelt another way gives the same tag: `/users/%31` is `/users/1`.
        #[test]
        fn respelt_params_give_the_same_tag(raw in raw_param(false), choice in any::<u64>()) {
            let respelt = respell(&raw, choice);
            prop_assert_eq!(decode(&respelt), decode(&raw));
            prop_assert_eq!(
                render("/users/{id}", "user:{id}", &format!("/users/{raw}")),
                render("/users/{id}", "user:{id}", &format!("/users/{respelt}"))
            );
        }

        /// Several templates: equal tags only from one template with parameters that decode
        /// the same; never a fixed tag; and distinct tags have distinct store keys of bounded
        /// length, long tags included.
        #[test]
        fn params_cannot_forge_another_templates_tag(
            mut renderings in prop::collection::vec(rendering(), 2..10),
            choices in prop::collection::vec(any::<u64>(), 0..6),
        ) {
            // Some of the same renderings with their parameters spelt another way.
            for (i, choice) in choices.iter().enumerate() {
                let (t, params) = renderings[i % renderings.len()].clone();
                renderings.push((t, params.iter().map(|p| respell(p, *choice)).collect()));
            }
            let tags: Vec<String> =
                renderings.iter().map(|(t, params)| render_raw(*t, params)).collect();
            for (i, tag) in tags.iter().enumerate() {
                prop_assert!(
                    !FIXED.contains(&tag.as_str()),
                    "{:?} rendered the fixed tag {}", &renderings[i], tag
                );
                let key = tag_key("c", tag);
                prop_assert!(
                    key.len() <= "c:v1:t:".len() + MAX_PLAIN_TAG,
                    "{} bytes: {}", key.len(), key
                );
                for (j, other) in tags.iter().enumerate().skip(i + 1) {
                    let (t_a, params_a) = &renderings[i];
                    let (t_b, params_b) = &renderings[j];
                    let same_params = params_a.len() == params_b.len()
                        && params_a.iter().zip(params_b).all(|(a, b)| decode(a) == decode(b));
                    let same = t_a == t_b && same_params;
                    prop_assert_eq!(
                        tag == other,
                        same,
                        "{:?} gave {}, {:?} gave {}", &renderings[i], tag, &renderings[j], other
                    );
                    prop_assert_eq!(tag == other, key == tag_key("c", other));
                }
            }
        }
    }
}
