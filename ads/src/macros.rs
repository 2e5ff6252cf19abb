//! Ad tag and beacon URL macros: `[CACHEBUSTING]`, `[ERRORCODE]` and the
//! others of VAST 4, plus Cascade's own targeting ones. Values are
//! percent-encoded; a macro not given is left as it is.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// What a URL's macros are replaced with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Macros {
    values: Vec<(&'static str, String)>,
}

/// Characters left as they are in a value: RFC 3986's unreserved ones.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl Macros {
    /// No values.
    pub fn new() -> Macros {
        Macros::default()
    }

    /// Sets `[NAME]` (an upper-case macro name, such as `CACHEBUSTING`,
    /// `ERRORCODE`, `TIMESTAMP`, `BREAKPOSITION`, or Cascade's `VIEWER`,
    /// `TITLE`, `GENRE`, `DEVICE`, `COUNTRY`, `BREAKDURATION`).
    pub fn set(mut self, name: &'static str, value: impl Into<String>) -> Macros {
        self.values.retain(|(n, _)| *n != name);
        self.values.push((name, value.into()));
        self
    }
}

/// `template` with every macro it has a value for replaced.
pub fn expand(template: &str, macros: &Macros) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find(']') {
            Some(close) => {
                let name = &after[..close];
                match macros.values.iter().find(|(n, _)| *n == name) {
                    Some((_, v)) => out.extend(utf8_percent_encode(v, VALUE)),
                    None => {
                        out.push('[');
                        out.push_str(name);
                        out.push(']');
                    }
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macros_are_replaced_and_encoded_and_unknown_ones_kept() {
        let m = Macros::new()
            .set("CACHEBUSTING", "12345678")
            .set("TITLE", "The Final & More")
            .set("COUNTRY", "IN")
            .set("COUNTRY", "NP");
        assert_eq!(
            expand(
                "https://ads.example/v?t=[TITLE]&c=[COUNTRY]&cb=[CACHEBUSTING]&x=[UNKNOWN]&y=[oops",
                &m
            ),
            "https://ads.example/v?t=The%20Final%20%26%20More&c=NP&cb=12345678&x=[UNKNOWN]&y=[oops"
        );
        assert_eq!(expand("no macros", &m), "no macros");
    }
}
