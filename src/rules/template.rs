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
}
