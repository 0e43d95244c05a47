//! Tokens and the rules of who may do what.
//!
//! A token is a random 256-bit secret shown once at creation; only its blake3 hash is stored.
//! Clients present it as `Authorization: Bearer <secret>` (sccache's `SCCACHE_WEBDAV_TOKEN`)
//! or as the password of Basic auth (`SCCACHE_WEBDAV_USERNAME`/`PASSWORD`, ccache URL
//! userinfo). Lookups go by hash, and the final comparison is blake3's constant-time equality.
//!
//! Without any token defined hearth runs in open mode: everyone may read and write, and
//! namespaces appear on first write. The first token switches it to secured mode.

use base64::Engine;
use rand::RngCore;
use std::fmt;
use std::str::FromStr;

/// Prefix of every secret, so that leaked tokens are recognisable (e.g. by secret scanners).
pub const SECRET_PREFIX: &str = "hth_";
/// Longest `Authorization` header value considered; anything longer is malformed.
const MAX_AUTHORIZATION_LEN: usize = 4096;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// GET, HEAD, PROPFIND.
    Read,
    /// Read, and PUT, MKCOL, DELETE.
    Write,
    /// Everything, including the admin API.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(format!("unknown scope {other:?} (expected read, write or admin)")),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Admin,
}

/// A valid (not revoked) token, as the server sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub token_id: i64,
    pub label: String,
    pub scope: Scope,
    /// `None`: every namespace.
    pub namespace: Option<String>,
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No usable credentials where some are required: 401 with `WWW-Authenticate`.
    Unauthenticated(&'static str),
    /// Credentials fine, rights missing: 403.
    Forbidden(&'static str),
}

/// A new random secret: the prefix and 32 random bytes, base64url.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The stored form of a secret.
pub fn secret_hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// Constant-time check of a presented secret against a stored hash.
pub fn secret_matches(secret: &str, stored_hash: &str) -> bool {
    match blake3::Hash::from_hex(stored_hash) {
        // blake3::Hash's equality is constant-time.
        Ok(stored) => blake3::hash(secret.as_bytes()) == stored,
        Err(_) => false,
    }
}

/// Extracts the secret from an `Authorization` header value. `Ok(None)` without a header;
/// `Err` with a short reason for a header that is present but unusable (answered 400).
pub fn presented_secret(header: Option<&[u8]>) -> Result<Option<String>, &'static str> {
    let Some(raw) = header else { return Ok(None) };
    if raw.len() > MAX_AUTHORIZATION_LEN {
        return Err("Authorization header too long");
    }
    let text = std::str::from_utf8(raw)
        .map_err(|_| "Authorization header is not UTF-8")?
        .trim();
    let (scheme, value) = text.split_once(' ').ok_or("Authorization header has no credentials")?;
    let value = value.trim();
    if value.is_empty() {
        return Err("Authorization header has empty credentials");
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("malformed bearer token");
        }
        return Ok(Some(value.to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        // Bazel encodes Basic credentials with the URL-safe alphabet; accept both, padded or not.
        let trimmed = value.trim_end_matches('=');
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(trimmed)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed))
            .map_err(|_| "malformed Basic credentials (not base64)")?;
        let pair = String::from_utf8(decoded).map_err(|_| "malformed Basic credentials (not UTF-8)")?;
        let (user, password) = pair.split_once(':').ok_or("malformed Basic credentials (no ':')")?;
        // The token is the password; a token given as the user name alone works too.
        let secret = if password.is_empty() { user } else { password };
        if secret.is_empty() {
            return Err("Basic credentials carry no token");
        }
        return Ok(Some(secret.to_string()));
    }
    Err("unsupported Authorization scheme (use Bearer or Basic)")
}

/// Decides whether `principal` (or an anonymous caller) may perform `access` on `namespace`.
/// `secured`: at least one token exists. `anonymous_read`: the namespace's setting.
pub fn authorize(
    principal: Option<&Principal>,
    namespace: Option<&str>,
    access: Access,
    secured: bool,
    anonymous_read: bool,
) -> Result<(), Denied> {
    if !secured {
        return Ok(());
    }
    let Some(p) = principal else {
        return match access {
            Access::Read if anonymous_read => Ok(()),
            _ => Err(Denied::Unauthenticated("a token is required")),
        };
    };
    if let (Some(limit), Some(ns)) = (&p.namespace, namespace) {
        if limit != ns {
            return Err(Denied::Forbidden("this token is for another namespace"));
        }
    }
    if p.namespace.is_some() && namespace.is_none() && access == Access::Admin {
        return Err(Denied::Forbidden("administration needs a token for all namespaces"));
    }
    let needed = match access {
        Access::Read => Scope::Read,
        Access::Write => Scope::Write,
        Access::Admin => Scope::Admin,
    };
    if p.scope < needed {
        return Err(Denied::Forbidden(match needed {
            Scope::Write => "this token is read-only",
            _ => "this needs an admin token",
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    fn principal(scope: Scope, namespace: Option<&str>) -> Principal {
        Principal {
            token_id: 1,
            label: "t".into(),
            scope,
            namespace: namespace.map(Into::into),
        }
    }

    #[test]
    fn secrets_are_random_and_only_their_hash_matches() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == 47, "{a}");
        let stored = secret_hash(&a);
        assert!(!stored.contains(&a[4..]));
        assert!(secret_matches(&a, &stored));
        assert!(!secret_matches(&b, &stored));
        assert!(!secret_matches(&a, "not hex"));
    }

    #[test]
    fn authorization_headers() {
        assert_eq!(presented_secret(None), Ok(None));
        assert_eq!(presented_secret(Some(b"Bearer hth_abc")), Ok(Some("hth_abc".into())));
        assert_eq!(
            presented_secret(Some(b"bearer   hth_abc  ")),
            Ok(Some("hth_abc".into()))
        );
        let basic = format!("Basic {}", STANDARD.encode("alice:hth_x+/y"));
        assert_eq!(presented_secret(Some(basic.as_bytes())), Ok(Some("hth_x+/y".into())));
        let url_safe = format!("Basic {}", URL_SAFE.encode("ci:s3cr?t>>"));
        assert_eq!(presented_secret(Some(url_safe.as_bytes())), Ok(Some("s3cr?t>>".into())));
        let user_only = format!("Basic {}", STANDARD.encode("hth_tok:"));
        assert_eq!(presented_secret(Some(user_only.as_bytes())), Ok(Some("hth_tok".into())));
        for bad in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Basic",
            b"Basic !!!notbase64",
            b"Digest abc",
            b"Basic \xff\xfe",
            b"\xff\xfe",
            b"Bearer a\x01b",
        ] {
            assert!(
                presented_secret(Some(bad)).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let no_colon = format!("Basic {}", STANDARD.encode("justtext"));
        assert!(presented_secret(Some(no_colon.as_bytes())).is_err());
        let empty = format!("Basic {}", STANDARD.encode(":"));
        assert!(presented_secret(Some(empty.as_bytes())).is_err());
        let huge = format!("Bearer {}", "a".repeat(10_000));
        assert!(presented_secret(Some(huge.as_bytes())).is_err());
    }

    #[test]
    fn open_mode_allows_everything() {
        assert_eq!(authorize(None, Some("ns"), Access::Write, false, false), Ok(()));
        assert_eq!(authorize(None, None, Access::Admin, false, false), Ok(()));
    }

    #[test]
    fn secured_mode_rules() {
        use Denied::*;
        let read = principal(Scope::Read, Some("a"));
        let write = principal(Scope::Write, Some("a"));
        let admin_all = principal(Scope::Admin, None);
        let write_all = principal(Scope::Write, None);
        // Anonymous.
        assert!(matches!(
            authorize(None, Some("a"), Access::Read, true, false),
            Err(Unauthenticated(_))
        ));
        assert_eq!(authorize(None, Some("a"), Access::Read, true, true), Ok(()));
        assert!(matches!(
            authorize(None, Some("a"), Access::Write, true, true),
            Err(Unauthenticated(_))
        ));
        // Read-only tokens read, never write.
        assert_eq!(authorize(Some(&read), Some("a"), Access::Read, true, false), Ok(()));
        assert!(matches!(
            authorize(Some(&read), Some("a"), Access::Write, true, false),
            Err(Forbidden(_))
        ));
        // Namespace limits.
        assert_eq!(authorize(Some(&write), Some("a"), Access::Write, true, false), Ok(()));
        assert!(matches!(
            authorize(Some(&write), Some("b"), Access::Read, true, true),
            Err(Forbidden(_))
        ));
        assert_eq!(
            authorize(Some(&write_all), Some("b"), Access::Write, true, false),
            Ok(())
        );
        // Administration.
        assert!(matches!(
            authorize(Some(&write_all), None, Access::Admin, true, false),
            Err(Forbidden(_))
        ));
        assert!(matches!(
            authorize(
                Some(&principal(Scope::Admin, Some("a"))),
                None,
                Access::Admin,
                true,
                false
            ),
            Err(Forbidden(_))
        ));
        assert_eq!(authorize(Some(&admin_all), None, Access::Admin, true, false), Ok(()));
        assert_eq!(
            authorize(Some(&admin_all), Some("z"), Access::Write, true, false),
            Ok(())
        );
    }
}
