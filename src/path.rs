//! Turns a request path into a namespace and a key, rejecting anything that is not one.
//!
//! `//` collapses (sccache joins its endpoint and key prefix verbatim); every segment is
//! percent-decoded once and must then be printable ASCII other than `\`, and neither `.` nor
//! `..`; an encoded `/` is refused rather than decoded, so a key can never change shape.

use crate::{Error, Result};
use percent_encoding::percent_decode_str;
use std::borrow::Cow;
use std::fmt;

/// Longest accepted key in bytes: sccache's keys are ~75 bytes with a prefix, ccache's ~40.
pub const MAX_KEY_LEN: usize = 1024;
/// Longest namespace name.
pub const MAX_NAMESPACE_LEN: usize = 64;
/// Names that would shadow hearth's own endpoints.
const RESERVED_NAMESPACES: &[&str] = &["metrics", "healthz", "readyz"];

/// A validated namespace name: `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 64 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(String);

/// A validated cache key inside a namespace: `/`-separated non-empty segments.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

/// What a request path points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DavPath {
    /// `/`: above every namespace.
    Root,
    /// A directory-shaped path (trailing `/`, or the namespace itself). Directories are
    /// virtual: every one of them exists.
    Collection { namespace: Namespace, prefix: String },
    /// An object.
    Object { namespace: Namespace, key: CacheKey },
}

impl Namespace {
    /// Validates a namespace name.
    pub fn new(name: &str) -> Result<Namespace> {
        let valid_chars = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        let starts_alnum = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        if name.is_empty() || name.len() > MAX_NAMESPACE_LEN || !valid_chars || !starts_alnum {
            return Err(Error::InvalidPath(format!(
                "namespace {name:?} must be 1-{MAX_NAMESPACE_LEN} characters of [A-Za-z0-9._-], starting with a letter or digit"
            )));
        }
        if RESERVED_NAMESPACES.contains(&name) {
            return Err(Error::InvalidPath(format!("namespace {name:?} is reserved")));
        }
        Ok(Namespace(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl CacheKey {
    /// Validates a key given as already-decoded segments joined by `/`.
    pub fn new(key: &str) -> Result<CacheKey> {
        if key.is_empty() {
            return Err(Error::InvalidPath("empty key".into()));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(Error::InvalidPath(format!("key longer than {MAX_KEY_LEN} bytes")));
        }
        for segment in key.split('/') {
            check_segment(segment)?;
        }
        Ok(CacheKey(key.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// sccache's start-up probe (`[prefix/].sccache_check`): traffic, not cache use.
    pub fn is_client_probe(&self) -> bool {
        self.0.rsplit('/').next() == Some(".sccache_check")
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_segment(segment: &str) -> Result<()> {
    if segment.is_empty() {
        return Err(Error::InvalidPath("empty path segment".into()));
    }
    if segment == "." || segment == ".." {
        return Err(Error::InvalidPath(
            "relative path segments (. and ..) are not allowed".into(),
        ));
    }
    // Bytes first: the common, valid case needs no UTF-8 decoding.
    if segment.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
        return Ok(());
    }
    let c = segment
        .chars()
        .find(|c| !c.is_ascii_graphic() || *c == '\\')
        .expect("some character failed the byte check");
    Err(Error::InvalidPath(format!(
        "character {c:?} is not allowed in keys (printable ASCII only, no backslash)"
    )))
}

/// A segment percent-decoded and checked; borrowed when it holds no escape (sccache's and
/// ccache's keys never do), so parsing a path allocates only the key.
fn decode_segment(raw: &str) -> Result<Cow<'_, str>> {
    let decoded = if raw.contains('%') {
        percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| Error::InvalidPath("path is not valid UTF-8 after percent-decoding".into()))?
    } else {
        Cow::Borrowed(raw)
    };
    if decoded.contains('/') {
        return Err(Error::InvalidPath(
            "encoded '/' is not allowed in a path segment".into(),
        ));
    }
    check_segment(&decoded)?;
    Ok(decoded)
}

impl DavPath {
    /// The namespace the path is in (`None` for `/`).
    pub fn namespace(&self) -> Option<&Namespace> {
        match self {
            DavPath::Root => None,
            DavPath::Collection { namespace, .. } | DavPath::Object { namespace, .. } => Some(namespace),
        }
    }

    /// Parses the path component of a request URI (still percent-encoded, without the query).
    pub fn parse(raw: &str) -> Result<DavPath> {
        if !raw.starts_with('/') {
            return Err(Error::InvalidPath("path must be absolute".into()));
        }
        if raw.len() > MAX_KEY_LEN + MAX_NAMESPACE_LEN + 64 {
            return Err(Error::InvalidPath(format!("path longer than {MAX_KEY_LEN} bytes")));
        }
        let directory_shaped = raw.ends_with('/');
        let mut segments = raw.split('/').filter(|s| !s.is_empty());
        let Some(first) = segments.next() else {
            return Ok(DavPath::Root);
        };
        let namespace = Namespace::new(&decode_segment(first)?)?;
        let mut joined = String::with_capacity(raw.len());
        for segment in segments {
            if !joined.is_empty() {
                joined.push('/');
            }
            joined.push_str(&decode_segment(segment)?);
        }
        if joined.len() > MAX_KEY_LEN {
            return Err(Error::InvalidPath(format!("key longer than {MAX_KEY_LEN} bytes")));
        }
        if directory_shaped || joined.is_empty() {
            Ok(DavPath::Collection {
                namespace,
                prefix: joined,
            })
        } else {
            Ok(DavPath::Object {
                namespace,
                key: CacheKey(joined),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(raw: &str) -> (String, String) {
        match DavPath::parse(raw).unwrap() {
            DavPath::Object { namespace, key } => (namespace.0, key.0),
            other => panic!("{raw}: {other:?}"),
        }
    }

    #[test]
    fn sccache_paths() {
        let key = "0a7a256559d9d3f9ed0df4ac87d3809e86ec2395c9c27daed766078cc5258d9b";
        assert_eq!(
            object(&format!("/team/0/a/7/{key}")),
            ("team".into(), format!("0/a/7/{key}"))
        );
        // The endpoint + key prefix join yields `//`.
        assert_eq!(
            object("/team//proj/.sccache_check"),
            ("team".into(), "proj/.sccache_check".into())
        );
    }

    #[test]
    fn collections() {
        assert_eq!(DavPath::parse("/").unwrap(), DavPath::Root);
        assert_eq!(DavPath::parse("//").unwrap(), DavPath::Root);
        let ns = Namespace::new("team").unwrap();
        assert_eq!(
            DavPath::parse("/team/").unwrap(),
            DavPath::Collection {
                namespace: ns.clone(),
                prefix: String::new()
            }
        );
        assert_eq!(
            DavPath::parse("/team").unwrap(),
            DavPath::Collection {
                namespace: ns.clone(),
                prefix: String::new()
            }
        );
        assert_eq!(
            DavPath::parse("/team//0/a/7/").unwrap(),
            DavPath::Collection {
                namespace: ns,
                prefix: "0/a/7".into()
            }
        );
    }

    #[test]
    fn sccache_probes_are_recognised() {
        assert!(CacheKey::new(".sccache_check").unwrap().is_client_probe());
        assert!(CacheKey::new("team/proj/.sccache_check").unwrap().is_client_probe());
        assert!(!CacheKey::new("0/a/7/abc").unwrap().is_client_probe());
        assert!(!CacheKey::new(".sccache_check/x").unwrap().is_client_probe());
    }

    #[test]
    fn percent_encoding_is_decoded_once() {
        assert_eq!(object("/ns/a%2Bb"), ("ns".into(), "a+b".into()));
        assert_eq!(object("/ns/%2541"), ("ns".into(), "%41".into()));
    }

    #[test]
    fn traversal_and_garbage_are_rejected() {
        for bad in [
            "/ns/../etc/passwd",
            "/ns/a/./b",
            "/ns/%2e%2e/x",
            "/ns/%2E%2E/x",
            "/ns/a%2fb",
            "/ns/a%2F..%2Fb",
            "/../x",
            "/ns/a%00b",
            "/ns/a%0ab",
            "/ns/a%7fb",
            "/ns/a%5cb",
            "/ns/a\\b",
            "/ns/%ff",
            "/ns/caf%C3%A9",
            "ns/relative",
            "/-ns/x",
            "/.hidden/x",
            "/metrics/x",
        ] {
            assert!(DavPath::parse(bad).is_err(), "{bad} accepted");
        }
        let long = format!("/ns/{}", "a".repeat(MAX_KEY_LEN + 1));
        assert!(DavPath::parse(&long).is_err());
        let long_ns = format!("/{}/k", "n".repeat(MAX_NAMESPACE_LEN + 1));
        assert!(DavPath::parse(&long_ns).is_err());
    }
}
