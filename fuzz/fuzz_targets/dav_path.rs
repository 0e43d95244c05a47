//! `DavPath::parse`, `Namespace::new` and `CacheKey::new` on arbitrary text.
//!
//! Whatever is accepted must be what `src/path.rs` promises: a namespace of
//! `[A-Za-z0-9][A-Za-z0-9._-]*` (1-64 bytes, not reserved) and a key of non-empty `/`-separated
//! segments, each printable ASCII without `\`, never `.` or `..`. Parsing is deterministic,
//! agrees with the constructors, and a parsed path re-encodes to one that parses back the same.

#![no_main]

use hearth::path::{CacheKey, DavPath, Namespace, MAX_KEY_LEN, MAX_NAMESPACE_LEN};
use libfuzzer_sys::fuzz_target;
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};

/// Longest raw path `DavPath::parse` looks at (its own limit).
const MAX_RAW_LEN: usize = MAX_KEY_LEN + MAX_NAMESPACE_LEN + 64;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_parse(&text);
    // Most inputs do not start with `/`; give each a chance as an absolute path as well.
    check_parse(&format!("/{text}"));
    check_namespace(&text);
    check_key(&text);
});

/// What every accepted key segment must be.
fn assert_segment(segment: &str, context: &str) {
    assert!(!segment.is_empty(), "empty segment in {context:?}");
    assert!(segment != "." && segment != "..", "relative segment in {context:?}");
    assert!(!segment.contains('/'), "'/' inside segment {segment:?} of {context:?}");
    assert!(
        segment.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'),
        "non-printable, non-ASCII or backslash in segment {segment:?} of {context:?}"
    );
}

fn assert_namespace(ns: &Namespace, context: &str) {
    let name = ns.as_str();
    assert!(
        (1..=MAX_NAMESPACE_LEN).contains(&name.len()),
        "namespace length in {context:?}"
    );
    assert!(
        name.as_bytes()[0].is_ascii_alphanumeric(),
        "namespace start in {context:?}"
    );
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')),
        "namespace characters in {context:?}"
    );
    assert!(
        !["metrics", "healthz", "readyz"].contains(&name),
        "reserved namespace from {context:?}"
    );
    assert!(name != "." && name != "..");
    assert_eq!(
        Namespace::new(name).as_ref().ok(),
        Some(ns),
        "namespace not canonical: {context:?}"
    );
}

fn assert_key(key: &CacheKey, context: &str) {
    let text = key.as_str();
    assert!((1..=MAX_KEY_LEN).contains(&text.len()), "key length in {context:?}");
    for segment in text.split('/') {
        assert_segment(segment, context);
    }
    assert_eq!(
        key.is_client_probe(),
        text.rsplit('/').next() == Some(".sccache_check"),
        "probe detection of {text:?}"
    );
    assert_eq!(
        CacheKey::new(text).as_ref().ok(),
        Some(key),
        "key not canonical: {context:?}"
    );
}

/// The shortest encoding of a decoded segment that `parse` decodes back to it: only a `%` that
/// would start an escape needs one. Never longer than the raw segment it was decoded from (each
/// such `%` is followed by two characters that came from escapes themselves, or it would have
/// been decoded), so re-encoding a parsed path never crosses the length limit.
fn encode_minimal(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    for (i, c) in segment.char_indices() {
        let starts_escape =
            c == '%' && bytes.len() > i + 2 && bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit();
        if starts_escape {
            out.push_str("%25");
        } else {
            out.push(c);
        }
    }
    out
}

fn encode_all(segment: &str) -> String {
    utf8_percent_encode(segment, NON_ALPHANUMERIC).to_string()
}

fn rebuild(namespace: &Namespace, rest: &str, trailing_slash: bool, encode: fn(&str) -> String) -> String {
    let mut path = format!("/{}", encode(namespace.as_str()));
    if !rest.is_empty() {
        for segment in rest.split('/') {
            path.push('/');
            path.push_str(&encode(segment));
        }
    }
    if trailing_slash {
        path.push('/');
    }
    path
}

fn check_parse(raw: &str) {
    let first = DavPath::parse(raw);
    let second = DavPath::parse(raw);
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "parse is not deterministic for {raw:?}"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "parse is not deterministic for {raw:?}"),
        _ => panic!("parse is not deterministic for {raw:?}"),
    }
    let Ok(path) = first else { return };

    assert!(raw.starts_with('/'), "relative path accepted: {raw:?}");
    assert!(raw.len() <= MAX_RAW_LEN, "over-long path accepted: {} bytes", raw.len());
    // Nothing outside printable ASCII survives, even where an escape could not have made it.
    assert!(
        raw.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'),
        "raw garbage accepted: {raw:?}"
    );

    // The raw segments, each decoded once, are exactly the namespace and then the key's.
    let raw_segments: Vec<&str> = raw.split('/').filter(|s| !s.is_empty()).collect();
    let decoded: Vec<String> = raw_segments
        .iter()
        .map(|s| {
            percent_decode_str(s)
                .decode_utf8()
                .expect("accepted, so UTF-8")
                .into_owned()
        })
        .collect();

    match &path {
        DavPath::Root => {
            assert!(raw_segments.is_empty(), "{raw:?} parsed as the root");
            assert_eq!(path.namespace(), None);
        }
        DavPath::Collection { namespace, prefix } => {
            assert_namespace(namespace, raw);
            assert!(
                raw.ends_with('/') || prefix.is_empty(),
                "{raw:?} is not directory-shaped"
            );
            assert!(prefix.len() <= MAX_KEY_LEN, "over-long prefix from {raw:?}");
            if !prefix.is_empty() {
                for segment in prefix.split('/') {
                    assert_segment(segment, raw);
                }
            }
            assert_eq!(decoded[0], namespace.as_str(), "namespace of {raw:?}");
            assert_eq!(decoded[1..].join("/"), *prefix, "prefix of {raw:?}");
            assert_eq!(path.namespace(), Some(namespace));
            for trailing_slash in [true, false] {
                if !trailing_slash && !prefix.is_empty() {
                    continue; // That is an object.
                }
                let again = rebuild(namespace, prefix, trailing_slash, encode_minimal);
                assert_eq!(DavPath::parse(&again).ok().as_ref(), Some(&path), "{raw:?} → {again:?}");
            }
            let encoded = rebuild(namespace, prefix, true, encode_all);
            if encoded.len() <= MAX_RAW_LEN {
                assert_eq!(
                    DavPath::parse(&encoded).ok().as_ref(),
                    Some(&path),
                    "{raw:?} → {encoded:?}"
                );
            }
        }
        DavPath::Object { namespace, key } => {
            assert_namespace(namespace, raw);
            assert_key(key, raw);
            assert!(!raw.ends_with('/'), "directory-shaped {raw:?} parsed as an object");
            assert_eq!(decoded[0], namespace.as_str(), "namespace of {raw:?}");
            assert_eq!(decoded[1..].join("/"), key.as_str(), "key of {raw:?}");
            assert_eq!(path.namespace(), Some(namespace));
            let again = rebuild(namespace, key.as_str(), false, encode_minimal);
            assert_eq!(DavPath::parse(&again).ok().as_ref(), Some(&path), "{raw:?} → {again:?}");
            let encoded = rebuild(namespace, key.as_str(), false, encode_all);
            if encoded.len() <= MAX_RAW_LEN {
                assert_eq!(
                    DavPath::parse(&encoded).ok().as_ref(),
                    Some(&path),
                    "{raw:?} → {encoded:?}"
                );
            }
        }
    }
}

fn check_namespace(name: &str) {
    let result = Namespace::new(name);
    assert_eq!(
        result.as_ref().ok(),
        Namespace::new(name).as_ref().ok(),
        "Namespace::new is not deterministic for {name:?}"
    );
    let Ok(ns) = result else { return };
    assert_eq!(ns.as_str(), name);
    assert_eq!(ns.to_string(), name);
    assert_namespace(&ns, name);
    // A namespace is addressable as the collection of its own name.
    for raw in [format!("/{name}"), format!("/{name}/"), format!("//{name}//")] {
        assert_eq!(
            DavPath::parse(&raw).ok(),
            Some(DavPath::Collection {
                namespace: ns.clone(),
                prefix: String::new()
            }),
            "{raw:?}"
        );
    }
}

fn check_key(text: &str) {
    let result = CacheKey::new(text);
    assert_eq!(
        result.as_ref().ok(),
        CacheKey::new(text).as_ref().ok(),
        "CacheKey::new is not deterministic for {text:?}"
    );
    let ns = Namespace::new("ns").expect("valid namespace");
    let raw = rebuild(&ns, text, false, encode_minimal);
    let via_path = DavPath::parse(&raw);
    match result {
        Ok(key) => {
            assert_eq!(key.as_str(), text);
            assert_eq!(key.to_string(), text);
            assert_key(&key, text);
            // A valid key is reachable through a request path, unless escaping its literal
            // `%XX` sequences (as `%25XX`) pushes the path over parse's raw-length limit.
            if raw.len() <= MAX_RAW_LEN {
                assert_eq!(
                    via_path.ok(),
                    Some(DavPath::Object { namespace: ns, key }),
                    "valid key {text:?} does not round-trip through {raw:?}"
                );
            }
        }
        Err(_) => {
            // A key the constructor refuses never comes out of a path either.
            if let Ok(DavPath::Object { key, .. }) = via_path {
                assert_ne!(
                    key.as_str(),
                    text,
                    "path accepted key {text:?} that CacheKey::new refuses"
                );
            }
        }
    }
}
