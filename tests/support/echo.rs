//! An origin that answers with everything it read of a request, for the transparency tests: a
//! response served to any request it was not made for shows in its body.
//!
//! It reads a request as an application would: the method (`HEAD` as `GET`, as axum routes it),
//! the host (the target's authority, else `Host`, case folded) and every `Host` line, the path
//! percent-decoded, the query as name → values in order (form-decoded), the body, and the
//! values of some headers: the forwarding headers and credentials always (every key holds them),
//! the headers it `Vary`s on, and those the query asks it to reflect. The content negotiation
//! headers are read as RFC 9110 defines them (case-insensitive, whitespace and empty members
//! meaning nothing, `Accept-Encoding` weights by coding); every other value as it is.
//!
//! The query also says how to answer: `vary=a,b` (the `Vary` field), `cc=...` (`Cache-Control`),
//! `reflect=x-client` (also copied into `X-Reflect-X-Client`, as the outside probe's origin
//! did) and `pad=N` (N more bytes of body).

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;

/// Headers it always reads: the default `key_headers`, which every key holds, and the
/// credentials, which it says it varies on (below).
const ALWAYS: [&str; 4] = ["authorization", "cookie", "forwarded", "x-forwarded-host"];

/// What every answer varies on besides what the query asks: the credentials it reflects. An
/// origin that says `public` or `s-maxage` of an answer made for its requester, without this,
/// lets a shared cache give that answer to anyone (RFC 9111 section 3.5).
const VARIES_ON_CREDENTIALS: [&str; 2] = ["authorization", "cookie"];

/// The origin, as a function from a request to its response.
pub async fn echo(request: Request<Body>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let query = parts.uri.query().unwrap_or("");
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let control = |name: &str| pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let list = |name: &str| -> Vec<String> {
        let value = control(name).unwrap_or_default();
        value.split(',').map(|n| n.trim().to_ascii_lowercase()).filter(|n| !n.is_empty()).collect()
    };
    let (vary, reflect) = (list("vary"), list("reflect"));
    let mut by_name: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, value) in &pairs {
        by_name.entry(name).or_default().push(value);
    }

    let method = if parts.method == Method::HEAD { Method::GET } else { parts.method.clone() };
    let lower = |bytes: &[u8]| String::from_utf8_lossy(bytes).to_ascii_lowercase();
    let hosts: Vec<String> =
        parts.headers.get_all(header::HOST).iter().map(|h| lower(h.as_bytes())).collect();
    let host = match parts.uri.authority() {
        Some(authority) => authority.as_str().to_ascii_lowercase(),
        None => hosts.first().cloned().unwrap_or_default(),
    };
    let path = percent_encoding::percent_decode_str(parts.uri.path()).decode_utf8_lossy();
    let mut seen = format!(
        "method={method}\nhost={host}\nhosts={hosts:?}\npath={path}\nquery={by_name:?}\nbody={:?}\n",
        String::from_utf8_lossy(&body)
    );
    let mut read: Vec<&str> = ALWAYS.to_vec();
    read.extend(vary.iter().chain(&reflect).map(String::as_str));
    read.sort_unstable();
    read.dedup();
    for name in read {
        seen.push_str(&format!("{name}={:?}\n", values(&parts.headers, name)));
    }
    let pad: usize = control("pad").and_then(|n| n.parse().ok()).unwrap_or(0);
    seen.push_str(&"x".repeat(pad.min(64 * 1024)));

    let mut response = Response::new(Body::from(seen));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    let mut varies: Vec<&str> = VARIES_ON_CREDENTIALS.to_vec();
    varies.extend(vary.iter().map(String::as_str));
    headers.insert(header::VARY, HeaderValue::from_str(&varies.join(", ")).unwrap());
    if let Some(cc) = control("cc").and_then(|cc| HeaderValue::from_str(&cc).ok()) {
        headers.insert(header::CACHE_CONTROL, cc);
    }
    for name in &reflect {
        let reflected = HeaderName::from_bytes(format!("x-reflect-{name}").as_bytes());
        let value = parts.headers.get(name.as_str()).cloned();
        if let (Ok(reflected), Some(value)) = (reflected, value) {
            headers.insert(reflected, value);
        }
    }
    response
}

/// The values of the header `name` as the origin reads them.
fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    let raw = headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()));
    match name {
        "accept" | "accept-charset" | "accept-language" => {
            raw.map(|v| negotiation_list(&v)).collect()
        }
        "accept-encoding" => {
            raw.map(|v| codings(&v).unwrap_or_else(|| v.trim().to_owned())).collect()
        }
        _ => raw.map(|v| v.trim_matches([' ', '\t']).to_owned()).collect(),
    }
}

/// A negotiation list's members, without whitespace around `,` and `;` or empty members, in
/// lower case.
fn negotiation_list(value: &str) -> String {
    let members = value.split(',').map(|m| m.trim_matches([' ', '\t'])).filter(|m| !m.is_empty());
    let members = members.map(|m| {
        let pieces: Vec<String> =
            m.split(';').map(|p| p.trim_matches([' ', '\t']).to_ascii_lowercase()).collect();
        pieces.join(";")
    });
    members.collect::<Vec<_>>().join(",")
}

/// `Accept-Encoding` as coding → weight in thousandths (`x-gzip` is `gzip`); `None` when a
/// member does not parse or a coding comes twice, for the origin reads such a list as it is.
fn codings(value: &str) -> Option<String> {
    let mut weights = BTreeMap::new();
    for member in value.split(',').map(|m| m.trim_matches([' ', '\t'])).filter(|m| !m.is_empty()) {
        let (coding, weight) = match member.split_once(';') {
            None => (member, 1000),
            Some((coding, q)) => {
                let q = q.trim_matches([' ', '\t']);
                let q = q.strip_prefix("q=").or_else(|| q.strip_prefix("Q="))?;
                let thousandths = match q.split_once('.') {
                    None => q.parse::<u32>().ok()?.saturating_mul(1000),
                    Some((whole, fraction)) if fraction.len() <= 3 => {
                        let fraction = format!("{fraction:0<3}").parse::<u32>().ok()?;
                        whole.parse::<u32>().ok()?.saturating_mul(1000).saturating_add(fraction)
                    }
                    Some(_) => return None,
                };
                (coding.trim_matches([' ', '\t']), thousandths)
            }
        };
        if weight > 1000 || coding.is_empty() || coding.contains([' ', '\t']) {
            return None;
        }
        let coding = match coding.to_ascii_lowercase().as_str() {
            "x-gzip" => "gzip".to_owned(),
            "x-compress" => "compress".to_owned(),
            other => other.to_owned(),
        };
        if weights.insert(coding, weight).is_some() {
            return None;
        }
    }
    Some(format!("{weights:?}"))
}
