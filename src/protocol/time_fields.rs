//! The response fields that say when: `Date`, `Expires` and `Last-Modified` (HTTP-dates) and
//! `Age` (delta-seconds), read to the letter of RFC 9110 and RFC 9111.
//!
//! - An HTTP-date is accepted in all three of its forms (RFC 9110 section 5.6.7): IMF-fixdate
//!   (`Sun, 06 Nov 1994 08:49:37 GMT`), the obsolete RFC 850 form (`Sunday, 06-Nov-94 08:49:37
//!   GMT`) and asctime (`Sun Nov  6 08:49:37 1994`). Names are matched in any letter case, as
//!   RFC 9111 section 4.2 asks of caches. A two-digit RFC 850 year is the one that is not more
//!   than 50 years ahead of now.
//! - These date fields are singletons: two lines that differ make the field invalid (RFC 9111
//!   section 4.2.1 lets a cache consider such a response stale). An invalid `Expires` means
//!   "already expired" (section 5.3).
//! - `Age` is `1*DIGIT`. A list, or several lines, count by their first member (section 5.1),
//!   and a first member that is not delta-seconds (`old`, `-1`, `+5`, `1.5`) makes the response
//!   stale. RFC 9111 only asks a cache to ignore such a field, which would read the response
//!   as fresh from the start; refusing to store it is the side that can never serve one past
//!   its freshness.
//!
//! The parsing of each form is `httpdate`'s; this module only decides what reaches it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue, AGE};

use super::cache_control::MAX_DELTA_SECS;

/// A field whose value breaks its grammar, or a singleton field with two different values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Invalid;

/// The singleton date field `name` of `headers`: `None` when absent. `now` dates two-digit
/// years.
pub(crate) fn date_field(
    headers: &HeaderMap,
    name: &HeaderName,
    now: SystemTime,
) -> Option<Result<SystemTime, Invalid>> {
    let mut lines = headers.get_all(name).iter();
    let first = lines.next()?;
    if lines.any(|line| line.as_bytes().trim_ascii() != first.as_bytes().trim_ascii()) {
        return Some(Err(Invalid));
    }
    Some(http_date(first, now).ok_or(Invalid))
}

/// The `Age` of a response: zero without one.
pub(crate) fn age(headers: &HeaderMap) -> Result<Duration, Invalid> {
    let Some(first) = headers.get(AGE) else { return Ok(Duration::ZERO) };
    let member = first.as_bytes().split(|&b| b == b',').next().unwrap_or_default();
    delta_seconds(member.trim_ascii()).map(Duration::from_secs).ok_or(Invalid)
}

/// `1*DIGIT`, saturated at [`MAX_DELTA_SECS`] (RFC 9111 section 1.2.2).
fn delta_seconds(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let seconds = digits
        .iter()
        .fold(0u64, |seconds, &digit| (seconds * 10 + u64::from(digit - b'0')).min(MAX_DELTA_SECS));
    Some(seconds)
}

/// An HTTP-date in any of its three forms and any letter case.
pub(crate) fn http_date(value: &HeaderValue, now: SystemTime) -> Option<SystemTime> {
    let text = value.to_str().ok()?.trim();
    // At most `Wednesday, 06-Nov-94 08:49:37 GMT`: 33 bytes.
    if text.len() > 40 {
        return None;
    }
    let text = canonical_case(text);
    let text = match rfc850_as_imf_fixdate(&text, now) {
        Some(fixdate) => fixdate,
        None => text,
    };
    httpdate::parse_http_date(&text).ok()
}

/// `text` with each word in the case `httpdate` expects: `Sun`, `Nov`, `Sunday`, `GMT`.
fn canonical_case(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word_start = true;
    for c in text.chars() {
        if c.is_ascii_alphabetic() {
            out.push(if word_start { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() });
            word_start = false;
        } else {
            out.push(c);
            word_start = true;
        }
    }
    out.replace("Gmt", "GMT")
}

/// An RFC 850 date (`Sunday, 06-Nov-94 08:49:37 GMT`) rewritten as an IMF-fixdate with the
/// century RFC 9110 section 5.6.7 gives it: the most recent year with those last two digits
/// that is not more than 50 years after `now`. (`httpdate` alone reads `70`–`99` as the 1900s
/// whatever the date.) `None` for other forms.
fn rfc850_as_imf_fixdate(text: &str, now: SystemTime) -> Option<String> {
    let (weekday, rest) = text.split_once(", ")?;
    let (date, time) = rest.split_once(' ')?;
    let mut parts = date.split('-');
    let (day, month, year) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || year.len() != 2 || weekday.len() < 6 {
        return None;
    }
    let two_digits: u64 = year.parse().ok()?;
    let this_year = 1970 + now.duration_since(UNIX_EPOCH).ok()?.as_secs() / 31_556_952;
    let mut full = this_year - this_year % 100 + two_digits;
    if full > this_year + 50 {
        full -= 100;
    } else if full + 100 <= this_year + 50 {
        full += 100;
    }
    Some(format!("{}, {day} {month} {full} {time}", weekday.get(..3)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::header_map as map;

    /// 2026-12-07, when these tests were written; dates are read relative to it.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_796_601_600)
    }

    fn date(text: &str) -> Option<u64> {
        let value = HeaderValue::from_str(text).unwrap();
        http_date(&value, now()).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs())
    }

    const NOV_6_1994: u64 = 784_111_777;

    #[test]
    fn the_three_date_forms_are_read_alike() {
        assert_eq!(date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(NOV_6_1994));
        assert_eq!(date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(NOV_6_1994));
        assert_eq!(date("Sun Nov  6 08:49:37 1994"), Some(NOV_6_1994));
    }

    #[test]
    fn dates_are_read_in_any_letter_case() {
        assert_eq!(date("sun, 06 nov 1994 08:49:37 gmt"), Some(NOV_6_1994));
        assert_eq!(date("SUNDAY, 06-NOV-94 08:49:37 GMT"), Some(NOV_6_1994));
        assert_eq!(date("sUN nOV  6 08:49:37 1994"), Some(NOV_6_1994));
    }

    #[test]
    fn a_two_digit_year_is_never_more_than_50_years_ahead() {
        // From 2026: `70` is 2070, `76` is 2076 (50 years ahead), `77` is 1977.
        let year_of = |text: &str| date(text).map(|secs| 1970 + secs / 31_556_952);
        assert_eq!(year_of("Tuesday, 01-Jul-70 00:00:00 GMT"), Some(2070));
        assert_eq!(year_of("Wednesday, 01-Jul-76 00:00:00 GMT"), Some(2076));
        assert_eq!(year_of("Friday, 01-Jul-77 00:00:00 GMT"), Some(1977));
        assert_eq!(year_of("Thursday, 01-Jul-27 00:00:00 GMT"), Some(2027));
        // The weekday must be the date's.
        assert_eq!(date("Wednesday, 01-Jul-70 00:00:00 GMT"), None, "1970's weekday, not 2070's");
    }

    #[test]
    fn what_is_no_date_is_none() {
        for text in [
            "0",
            "-1",
            "",
            "tomorrow",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT junk",
        ] {
            assert_eq!(date(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_singleton_date_with_two_different_lines_is_invalid() {
        let name = http::header::EXPIRES;
        let one = map(&[("expires", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        let same = map(&[
            ("expires", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("expires", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let two = map(&[
            ("expires", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("expires", "Mon, 07 Nov 1994 08:49:37 GMT"),
        ]);
        let expected = Some(Ok(UNIX_EPOCH + Duration::from_secs(NOV_6_1994)));
        assert_eq!(date_field(&one, &name, now()), expected);
        assert_eq!(date_field(&same, &name, now()), expected);
        assert_eq!(date_field(&two, &name, now()), Some(Err(Invalid)));
        assert_eq!(date_field(&map(&[("expires", "0")]), &name, now()), Some(Err(Invalid)));
        assert_eq!(date_field(&map(&[]), &name, now()), None);
    }

    #[test]
    fn age_counts_by_its_first_member_and_must_be_digits() {
        let age_of = |lines: &[&'static str]| {
            let pairs: Vec<_> = lines.iter().map(|&line| ("age", line)).collect();
            age(&map(&pairs)).map(|age| age.as_secs())
        };
        assert_eq!(age_of(&[]), Ok(0));
        assert_eq!(age_of(&["30"]), Ok(30));
        assert_eq!(age_of(&["30, 0"]), Ok(30));
        assert_eq!(age_of(&["30", "0"]), Ok(30));
        assert_eq!(age_of(&["0", "30"]), Ok(0));
        assert_eq!(age_of(&["99999999999999999999999"]), Ok(MAX_DELTA_SECS));
        for invalid in ["old, 0", "-1", "+5", "1.5", "", "0x10", "5 s"] {
            assert_eq!(age_of(&[invalid]), Err(Invalid), "{invalid:?}");
        }
        assert_eq!(age_of(&["old", "0"]), Err(Invalid));
    }
}
