//! `multistatus` with an arbitrary href, size, modification time and etag.
//!
//! The body must be well-formed XML in the `DAV:` namespace with one response whose `href`
//! and `getetag` texts are exactly the input (after XML unescaping), whose `getcontentlength`
//! is the size, whose `getlastmodified` is an HTTP date, and whose `resourcetype` says
//! collection exactly for collections.
//!
//! Hrefs come in two shapes: what an HTTP request path can hold (visible ASCII, 0x21..=0x7E;
//! hyper refuses the rest), and any XML character except CR (which XML parsers normalise to
//! LF by design, so it could not round-trip through any XML document).

#![no_main]

use arbitrary::Arbitrary;
use hearth::http::propfind::{multistatus, Resource};
use libfuzzer_sys::fuzz_target;

const DAV: &str = "DAV:";

#[derive(Debug, Arbitrary)]
struct Input {
    href: Text,
    etag: Text,
    modified: i64,
    size: u64,
    collection: bool,
}

#[derive(Debug, Arbitrary)]
enum Text {
    /// Bytes mapped onto 0x21..=0x7E, like a request path that hyper let through.
    Visible(Vec<u8>),
    /// Any string, less the characters XML cannot carry.
    Unicode(String),
}

impl Text {
    fn render(&self) -> String {
        match self {
            Text::Visible(bytes) => bytes.iter().map(|b| char::from(0x21 + b % 94)).collect(),
            Text::Unicode(text) => text.chars().filter(|&c| is_xml_char(c) && c != '\r').collect(),
        }
    }
}

/// XML 1.0's `Char` production.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> roxmltree::Node<'a, 'i> {
    let mut matches = node
        .children()
        .filter(|n| n.is_element() && n.tag_name().namespace() == Some(DAV) && n.tag_name().name() == name);
    let found = matches
        .next()
        .unwrap_or_else(|| panic!("no D:{name} in <{:?}>", node.tag_name()));
    assert!(matches.next().is_none(), "more than one D:{name}");
    found
}

/// The element's text content, entities resolved (`None` for an empty element).
fn text<'a>(node: roxmltree::Node<'a, '_>) -> String {
    assert!(
        node.children().all(|n| n.is_text()),
        "<{:?}> has markup inside",
        node.tag_name()
    );
    node.text().unwrap_or_default().to_string()
}

fuzz_target!(|input: Input| {
    let href = input.href.render();
    let etag = input.etag.render();
    let modified = input.modified;
    let resource = if input.collection {
        Resource::Collection { modified }
    } else {
        Resource::Object {
            modified,
            size: input.size,
            etag: &etag,
        }
    };
    let xml = multistatus(&href, &resource);
    assert_eq!(xml, multistatus(&href, &resource), "not deterministic");

    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("not well-formed XML ({e}):\n{xml}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().namespace(), Some(DAV));
    assert_eq!(root.tag_name().name(), "multistatus");
    let response = child(root, "response");
    assert_eq!(text(child(response, "href")), href, "href does not round-trip:\n{xml}");
    let propstat = child(response, "propstat");
    assert_eq!(text(child(propstat, "status")), "HTTP/1.1 200 OK");
    let prop = child(propstat, "prop");

    let modified_text = text(child(prop, "getlastmodified"));
    let parsed = httpdate::parse_http_date(&modified_text)
        .unwrap_or_else(|e| panic!("getlastmodified {modified_text:?} is not an HTTP date: {e}"));
    // Times the format cannot express are clamped (`httpdate` panicked on them once).
    let clamped = modified.clamp(0, hearth::time::MAX_HTTP_DATE);
    let expected = std::time::UNIX_EPOCH + std::time::Duration::from_secs(clamped as u64);
    assert_eq!(parsed, expected, "getlastmodified of {modified}");

    let resourcetype = child(prop, "resourcetype");
    let is_collection = resourcetype
        .children()
        .any(|n| n.is_element() && n.tag_name().namespace() == Some(DAV) && n.tag_name().name() == "collection");
    assert_eq!(is_collection, input.collection, "resourcetype:\n{xml}");

    let object_props = ["getcontentlength", "getetag"];
    if input.collection {
        for name in object_props {
            assert!(
                !prop.children().any(|n| n.is_element() && n.tag_name().name() == name),
                "collection has {name}"
            );
        }
    } else {
        assert_eq!(text(child(prop, "getcontentlength")), input.size.to_string());
        assert_eq!(
            text(child(prop, "getetag")),
            format!("\"{etag}\""),
            "etag does not round-trip:\n{xml}"
        );
    }
});
