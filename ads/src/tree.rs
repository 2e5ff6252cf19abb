//! A small element tree from XML, with limits: what the VAST and VMAP
//! readers walk. Names are local (namespace prefixes dropped, as VMAP's
//! `vmap:` is not always bound the same way).

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::{AdError, MAX_DOCUMENT};

/// Most elements in a document.
const MAX_NODES: usize = 20_000;
/// Deepest nesting.
const MAX_DEPTH: usize = 32;
/// Longest text of one element.
const MAX_TEXT: usize = 16 * 1024;

/// An element: its local name, attributes, text (CDATA included) and
/// children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) attrs: Vec<(String, String)>,
    pub(crate) text: String,
    pub(crate) children: Vec<Node>,
}

impl Node {
    /// An attribute's value.
    pub(crate) fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first child named `name`.
    pub(crate) fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child named `name`.
    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The trimmed text of the first child named `name`, if not empty.
    pub(crate) fn text_of(&self, name: &str) -> Option<String> {
        self.child(name)
            .map(|c| c.text.trim().to_string())
            .filter(|t| !t.is_empty())
    }
}

fn local(name: &[u8]) -> String {
    let name = name.rsplit(|b| *b == b':').next().unwrap_or(name);
    String::from_utf8_lossy(name).into_owned()
}

fn xml_err(e: impl std::fmt::Display) -> AdError {
    AdError::Xml(e.to_string())
}

/// The document's root element.
pub(crate) fn parse(doc: &[u8]) -> Result<Node, AdError> {
    if doc.len() > MAX_DOCUMENT {
        return Err(AdError::Xml(format!("larger than {MAX_DOCUMENT} bytes")));
    }
    let mut reader = Reader::from_reader(doc);
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let mut nodes = 0usize;
    let mut buf = Vec::new();
    let open =
        |e: &quick_xml::events::BytesStart<'_>, nodes: &mut usize| -> Result<Node, AdError> {
            *nodes += 1;
            if *nodes > MAX_NODES {
                return Err(AdError::Xml(format!("more than {MAX_NODES} elements")));
            }
            let mut attrs = Vec::new();
            for a in e.attributes() {
                let a = a.map_err(xml_err)?;
                let value = a.unescape_value().map_err(xml_err)?;
                attrs.push((local(a.key.as_ref()), value.into_owned()));
            }
            Ok(Node {
                name: local(e.name().as_ref()),
                attrs,
                ..Node::default()
            })
        };
    let push_text = |stack: &mut Vec<Node>, text: &str| -> Result<(), AdError> {
        if let Some(top) = stack.last_mut() {
            if top.text.len() + text.len() > MAX_TEXT {
                return Err(AdError::Xml("an element's text is too long".into()));
            }
            top.text.push_str(text);
        }
        Ok(())
    };
    loop {
        buf.clear();
        match reader.read_event_into(&mut buf).map_err(xml_err)? {
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(AdError::Xml(format!("nested deeper than {MAX_DEPTH}")));
                }
                let n = open(&e, &mut nodes)?;
                stack.push(n);
            }
            Event::Empty(e) => {
                let n = open(&e, &mut nodes)?;
                match stack.last_mut() {
                    Some(top) => top.children.push(n),
                    None if root.is_none() => root = Some(n),
                    None => return Err(AdError::Xml("more than one root element".into())),
                }
            }
            Event::End(_) => {
                let Some(n) = stack.pop() else {
                    return Err(AdError::Xml("a closing tag without its opening".into()));
                };
                match stack.last_mut() {
                    Some(top) => top.children.push(n),
                    None if root.is_none() => root = Some(n),
                    None => return Err(AdError::Xml("more than one root element".into())),
                }
            }
            Event::Text(t) => {
                let t = t.decode().map_err(xml_err)?;
                push_text(&mut stack, &t)?;
            }
            Event::CData(c) => {
                let c = c.decode().map_err(xml_err)?;
                push_text(&mut stack, &c)?;
            }
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref().map_err(xml_err)?.map(String::from)
                } else {
                    let name = r.decode().map_err(xml_err)?;
                    quick_xml::escape::unescape(&format!("&{name};"))
                        .ok()
                        .map(|s| s.into_owned())
                };
                match resolved {
                    Some(s) => push_text(&mut stack, &s)?,
                    None => return Err(AdError::Xml("an unknown entity".into())),
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(AdError::Xml("the document ends inside an element".into()));
    }
    root.ok_or_else(|| AdError::Xml("no root element".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_text_cdata_and_entities() {
        let n = parse(
            b"<a x=\"1&amp;2\"><b>one &amp; two</b><c><![CDATA[ http://x/?a=1&b=2 ]]></c><d/></a>",
        )
        .unwrap();
        assert_eq!(n.name, "a");
        assert_eq!(n.attr("x"), Some("1&2"));
        assert_eq!(n.text_of("b").as_deref(), Some("one & two"));
        assert_eq!(n.text_of("c").as_deref(), Some("http://x/?a=1&b=2"));
        assert!(n.child("d").is_some());
    }

    #[test]
    fn broken_and_oversized_documents_are_errors() {
        for bad in [
            &b"<a><b></a>"[..],
            b"<a>",
            b"",
            b"<a></a><b></b>",
            b"<a>&nope;</a>",
        ] {
            assert!(
                matches!(parse(bad), Err(AdError::Xml(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = "<a>".repeat(40) + &"</a>".repeat(40);
        assert!(parse(deep.as_bytes()).is_err());
        assert!(parse(&vec![b' '; MAX_DOCUMENT + 1]).is_err());
    }
}
