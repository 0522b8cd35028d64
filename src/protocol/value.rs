//! Header values written on the stack (with `write!`, or `itoa` for numbers), then copied once
//! into the value.
//!
//! `HeaderValue::from` an integer, or `HeaderValue::try_from` a `String`, allocates twice (the
//! text, then the shared buffer it becomes); every hit writes `Age` and `Cache-Status`.

use std::fmt;

use http::HeaderValue;
use smallvec::SmallVec;

/// A header value being written; [`ValueText::finish`] makes it a [`HeaderValue`].
#[derive(Default)]
pub(crate) struct ValueText(SmallVec<[u8; 128]>);

impl ValueText {
    /// The value written so far; `None` when it holds bytes a header value may not.
    pub(crate) fn finish(&self) -> Option<HeaderValue> {
        HeaderValue::from_bytes(&self.0).ok()
    }
}

impl fmt::Write for ValueText {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.0.extend_from_slice(text.as_bytes());
        Ok(())
    }
}

/// The value of a number, such as `Age`'s seconds.
pub(crate) fn number(n: u64) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    HeaderValue::from_str(digits.format(n)).expect("digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use super::*;

    #[test]
    fn values_are_what_was_written() {
        assert_eq!(number(0), "0");
        assert_eq!(number(u64::MAX), u64::MAX.to_string().as_str());
        let mut text = ValueText::default();
        write!(text, "cache; hit; ttl={}", 59).unwrap();
        assert_eq!(text.finish().unwrap(), "cache; hit; ttl=59");
        let mut long = ValueText::default();
        write!(long, "{}", "x".repeat(300)).unwrap();
        assert_eq!(long.finish().unwrap().len(), 300, "longer values move to the heap");
        let mut bad = ValueText::default();
        write!(bad, "line\nbreak").unwrap();
        assert!(bad.finish().is_none());
    }
}
