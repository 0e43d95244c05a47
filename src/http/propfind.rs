//! `207 Multi-Status` bodies for PROPFIND. Only what WebDAV clients read is rendered:
//! `resourcetype`, `getlastmodified` (sccache goes read-only without it), and for objects
//! `getcontentlength` and `getetag`.

use crate::time::http_date;
use std::fmt::Write;

/// What a PROPFIND describes.
pub enum Resource<'a> {
    Collection { modified: i64 },
    Object { modified: i64, size: u64, etag: &'a str },
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A multistatus with a single response for `href` (the request path as received).
pub fn multistatus(href: &str, resource: &Resource<'_>) -> String {
    let mut props = String::new();
    match resource {
        Resource::Collection { modified } => {
            props.push_str("<D:resourcetype><D:collection/></D:resourcetype>");
            let _ = write!(props, "<D:getlastmodified>{}</D:getlastmodified>", http_date(*modified));
        }
        Resource::Object { modified, size, etag } => {
            props.push_str("<D:resourcetype/>");
            let _ = write!(props, "<D:getlastmodified>{}</D:getlastmodified>", http_date(*modified));
            let _ = write!(props, "<D:getcontentlength>{size}</D:getcontentlength>");
            let _ = write!(props, "<D:getetag>\"{}\"</D:getetag>", escape(etag));
        }
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <D:multistatus xmlns:D=\"DAV:\"><D:response><D:href>{}</D:href>\
         <D:propstat><D:prop>{props}</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>\
         </D:response></D:multistatus>\n",
        escape(href)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_has_lastmodified_and_collection_type() {
        let xml = multistatus("/ns/0/a/7/", &Resource::Collection { modified: 0 });
        assert!(xml.contains("<D:href>/ns/0/a/7/</D:href>"));
        assert!(xml.contains("<D:collection/>"));
        assert!(xml.contains("<D:getlastmodified>Thu, 01 Jan 1970 00:00:00 GMT</D:getlastmodified>"));
        assert!(xml.contains("HTTP/1.1 200 OK"));
    }

    #[test]
    fn hrefs_are_escaped() {
        let xml = multistatus(
            "/ns/a&b<c>",
            &Resource::Object {
                modified: 0,
                size: 3,
                etag: "x",
            },
        );
        assert!(xml.contains("/ns/a&amp;b&lt;c&gt;"));
        assert!(xml.contains("<D:getcontentlength>3</D:getcontentlength>"));
    }
}
