//! Byte ranges (RFC 9110 §14): one range per request is served; a request
//! for several ranges gets the whole object, which the RFC allows.

use http::{HeaderName, HeaderValue, StatusCode};

use crate::Response;

/// A satisfiable range: first and last byte, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSpan {
    /// First byte.
    pub first: u64,
    /// Last byte (inclusive).
    pub last: u64,
}

impl ByteSpan {
    /// Bytes in the span.
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    /// Never empty; here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Reads a `Range` header against an object of `size` bytes. `Ok(None)`:
/// serve the whole object (no header, several ranges, or a unit or syntax
/// we ignore). `Err(())`: unsatisfiable (416).
#[allow(clippy::result_unit_err)]
pub fn parse_range(header: Option<&str>, size: u64) -> Result<Option<ByteSpan>, ()> {
    let Some(header) = header else {
        return Ok(None);
    };
    // Syntax and other units are ignored (the whole object), as RFC 9110
    // §14.2 allows.
    let Ok(parsed) = http_range_header::parse_range_header(header.trim()) else {
        return Ok(None);
    };
    match parsed.validate(size) {
        Ok(spans) => match spans.as_slice() {
            [one] => Ok(Some(ByteSpan {
                first: *one.start(),
                last: *one.end(),
            })),
            // Several ranges: the whole object, also allowed.
            _ => Ok(None),
        },
        Err(_) => Err(()),
    }
}

/// Cuts a whole (200) response down to the requested range: a 206 with
/// `Content-Range`, a 416 when the range lies outside, or the response
/// unchanged when there is no range or it is not a 200.
pub fn apply_range(mut resp: Response, range: Option<&str>) -> Response {
    // A body still streaming in is sent whole: a valid answer to a range.
    if resp.status != StatusCode::OK || resp.stream.is_some() {
        return resp;
    }
    resp.headers.insert(
        http::header::ACCEPT_RANGES,
        HeaderValue::from_static("bytes"),
    );
    let size = resp.body.len() as u64;
    match parse_range(range, size) {
        Ok(None) => resp,
        Ok(Some(span)) => {
            // The span lies within the body: parse_range clamps it.
            let (first, last) = (span.first as usize, span.last as usize);
            resp.body = resp.body.slice(first..=last);
            resp.status = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) =
                HeaderValue::from_str(&format!("bytes {}-{}/{size}", span.first, span.last))
            {
                resp.headers.insert(http::header::CONTENT_RANGE, v);
            }
            resp
        }
        Err(()) => {
            let mut r = Response::error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "bad_range",
                "the range lies outside the object",
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers
                    .insert(HeaderName::from_static("content-range"), v);
            }
            if let Some(cs) = resp.headers.get("cache-status") {
                r.headers.insert("cache-status", cs.clone());
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let s = |f, l| Ok(Some(ByteSpan { first: f, last: l }));
        assert_eq!(parse_range(Some("bytes=0-9"), 100), s(0, 9));
        assert_eq!(parse_range(Some("bytes=90-"), 100), s(90, 99));
        assert_eq!(parse_range(Some("bytes=-10"), 100), s(90, 99));
        assert_eq!(parse_range(Some("bytes=-1000"), 100), s(0, 99));
        assert_eq!(parse_range(Some("bytes=50-1000"), 100), s(50, 99));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=-0"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=9-1"), 100), Ok(None));
        assert_eq!(parse_range(Some("items=0-1"), 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=+1-2"), 100), Ok(None));
        assert_eq!(parse_range(None, 100), Ok(None));
    }

    #[test]
    fn applies_to_whole_responses() {
        let r = Response::new(StatusCode::OK, "video/mp4", &b"0123456789"[..]);
        let r = apply_range(r, Some("bytes=2-4"));
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(&r.body[..], b"234");
        assert_eq!(r.headers["content-range"], "bytes 2-4/10");
        let r = Response::new(StatusCode::OK, "video/mp4", &b"0123456789"[..]);
        assert_eq!(
            apply_range(r, Some("bytes=10-")).status,
            StatusCode::RANGE_NOT_SATISFIABLE
        );
    }
}
