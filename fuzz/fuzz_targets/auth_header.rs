//! `presented_secret` on arbitrary `Authorization` header bytes, and the secret hashing that
//! follows it.
//!
//! Accepted secrets are non-empty; a Bearer secret is printable ASCII (no whitespace) and is
//! the header's value as written; a Basic secret is the password (or the user name alone) of a
//! base64 `user:password` pair. Over-long and non-UTF-8 headers are refused. Presenting a
//! secret again in either scheme yields it unchanged, and only its own hash matches it.

#![no_main]

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use hearth::auth::{presented_secret, secret_hash, secret_matches};
use libfuzzer_sys::fuzz_target;

/// `auth.rs`'s limit on the header's length.
const MAX_AUTHORIZATION_LEN: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let result = presented_secret(Some(data));
    assert_eq!(result, presented_secret(Some(data)), "not deterministic");

    if data.len() > MAX_AUTHORIZATION_LEN {
        assert!(result.is_err(), "over-long header ({} bytes) accepted", data.len());
    }
    let secret = match result {
        Ok(None) => panic!("a present header yielded no credentials"),
        Err(reason) => {
            assert!(!reason.is_empty());
            return;
        }
        Ok(Some(secret)) => secret,
    };
    let text = std::str::from_utf8(data).expect("accepted, so UTF-8").trim();
    assert!(!secret.is_empty(), "empty secret from {text:?}");

    let (scheme, value) = text.split_once(' ').expect("accepted, so scheme and credentials");
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        assert!(
            secret.bytes().all(|b| b.is_ascii_graphic()),
            "bearer secret {secret:?} has whitespace, control or non-ASCII characters"
        );
        assert_eq!(secret, value, "bearer secret is not the header's value");
    } else if scheme.eq_ignore_ascii_case("basic") {
        let unpadded = value.trim_end_matches('=');
        let pair = STANDARD_NO_PAD
            .decode(unpadded)
            .or_else(|_| URL_SAFE_NO_PAD.decode(unpadded))
            .expect("accepted, so base64");
        let pair = String::from_utf8(pair).expect("accepted, so UTF-8");
        let (user, password) = pair.split_once(':').expect("accepted, so user:password");
        let expected = if password.is_empty() { user } else { password };
        assert_eq!(secret, expected, "basic secret of {pair:?}");
    } else {
        panic!("scheme {scheme:?} accepted");
    }

    // Presenting the secret again gives it back unchanged.
    if secret.bytes().all(|b| b.is_ascii_graphic()) {
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let header = format!("{scheme} {secret}");
            assert_eq!(
                presented_secret(Some(header.as_bytes())),
                Ok(Some(secret.clone())),
                "{header:?}"
            );
        }
    }
    for user in ["", "ci"] {
        let header = format!("Basic {}", STANDARD.encode(format!("{user}:{secret}")));
        if header.len() <= MAX_AUTHORIZATION_LEN {
            assert_eq!(
                presented_secret(Some(header.as_bytes())),
                Ok(Some(secret.clone())),
                "{header:?}"
            );
        }
    }

    // Only the secret's own hash matches it.
    let stored = secret_hash(&secret);
    assert_eq!(stored.len(), 64, "hash {stored:?}");
    assert!(
        stored.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "hash {stored:?}"
    );
    assert_eq!(stored, secret_hash(&secret), "hashing is not deterministic");
    assert!(secret_matches(&secret, &stored), "secret does not match its own hash");
    let mut other = secret.clone();
    other.push('x');
    assert!(
        !secret_matches(&secret, &secret_hash(&other)),
        "matches another secret's hash"
    );
    assert!(!secret_matches(&other, &stored), "another secret matches");
    for garbage in ["", "not hex", &stored[..63], &format!("{stored}0"), &secret, text] {
        if garbage != stored {
            assert!(!secret_matches(&secret, garbage), "matches garbage hash {garbage:?}");
        }
    }
    // One flipped hex digit.
    let mut flipped = stored.clone().into_bytes();
    flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).expect("hex");
    assert!(!secret_matches(&secret, &flipped), "matches a different hash");
});
