//! Namespace and token administration, shared by the CLI (`hearth namespace …`,
//! `hearth token …`) and the admin API, so both apply the same rules.

use crate::auth::{self, Scope};
use crate::meta::{MetaStore, MetadataStore, NamespaceRow, NewToken, TokenRow};
use crate::path::Namespace;
use crate::time::unix_now;
use crate::{Error, Result};
use serde::Serialize;

/// Longest token label.
const MAX_LABEL_LEN: usize = 64;

/// Creates a namespace; [`Error::Conflict`] if it exists.
pub async fn create_namespace(
    meta: &MetaStore,
    name: &str,
    quota_bytes: Option<u64>,
    anonymous_read: bool,
) -> Result<NamespaceRow> {
    let name = Namespace::new(name)?;
    let row = NamespaceRow {
        name: name.as_str().to_string(),
        quota_bytes: quota_bytes.map(|q| q as i64),
        anonymous_read,
        created_at: unix_now(),
    };
    if !meta.create_namespace(&row).await? {
        return Err(Error::Conflict(format!("namespace {:?} exists already", row.name)));
    }
    Ok(row)
}

/// Deletes a namespace, its entries and its tokens; [`Error::NotFound`] if it does not exist.
pub async fn delete_namespace(meta: &MetaStore, name: &str) -> Result<()> {
    if !meta.delete_namespace(name).await? {
        return Err(Error::NotFound(format!("namespace {name:?} does not exist")));
    }
    Ok(())
}

/// A token just created: the only time its secret is known.
#[derive(Debug, Serialize)]
pub struct CreatedToken {
    pub token: TokenRow,
    pub secret: String,
}

/// Creates a token for one namespace (`Some`) or all (`None`).
pub async fn create_token(
    meta: &MetaStore,
    namespace: Option<&str>,
    scope: Scope,
    label: &str,
) -> Result<CreatedToken> {
    if label.is_empty() || label.len() > MAX_LABEL_LEN || !label.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Error::InvalidPath(format!(
            "label {label:?} must be 1-{MAX_LABEL_LEN} printable characters without spaces"
        )));
    }
    if label.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::InvalidPath(format!(
            "label {label:?} must not be a number (numbers name token ids)"
        )));
    }
    if let Some(ns) = namespace {
        Namespace::new(ns)?;
    }
    let secret = auth::new_secret();
    let hash = auth::secret_hash(&secret);
    let now = unix_now();
    let id = meta
        .create_token(&NewToken {
            namespace,
            scope,
            secret_hash: &hash,
            label,
            now,
        })
        .await?;
    let token = TokenRow {
        id,
        namespace: namespace.map(str::to_string),
        scope,
        label: label.to_string(),
        created_at: now,
        last_used_at: None,
        revoked_at: None,
    };
    Ok(CreatedToken { token, secret })
}

/// What `revoke` did.
#[derive(Debug, Serialize)]
pub struct Revoked {
    pub token: TokenRow,
    /// Entries deleted because this token wrote them (with `purge`).
    pub purged_entries: u64,
}

/// Revokes the token named by id or by label (an active token's label), and with `purge`
/// deletes every entry it wrote. Purging an already revoked token is allowed.
pub async fn revoke_token(meta: &MetaStore, id_or_label: &str, purge: bool) -> Result<Revoked> {
    let tokens = meta.list_tokens().await?;
    let token = match id_or_label.parse::<i64>() {
        Ok(id) => tokens.into_iter().find(|t| t.id == id),
        Err(_) => {
            let mut matching: Vec<TokenRow> = tokens.into_iter().filter(|t| t.label == id_or_label).collect();
            // Prefer the active token with that label; else the newest revoked one.
            matching.sort_by_key(|t| (t.revoked_at.is_none(), t.id));
            matching.pop()
        }
    }
    .ok_or_else(|| Error::NotFound(format!("no token {id_or_label:?}")))?;
    let now = unix_now();
    meta.revoke_token(token.id, now).await?;
    let purged_entries = if purge {
        meta.purge_token_entries(token.id).await?
    } else {
        0
    };
    let token = TokenRow {
        revoked_at: token.revoked_at.or(Some(now)),
        ..token
    };
    Ok(Revoked { token, purged_entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_lifecycle_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let settings = crate::meta::PoolSettings {
            max_connections: 2,
            acquire_timeout: std::time::Duration::from_secs(5),
        };
        let meta = MetaStore::connect(&url, &settings).await.unwrap();
        meta.migrate().await.unwrap();
        create_namespace(&meta, "team", None, false).await.unwrap();
        assert!(matches!(
            create_namespace(&meta, "team", None, false).await,
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            create_namespace(&meta, "../x", None, false).await,
            Err(Error::InvalidPath(_))
        ));
        let ci = create_token(&meta, Some("team"), Scope::Write, "ci").await.unwrap();
        assert!(ci.secret.starts_with(auth::SECRET_PREFIX));
        assert!(matches!(
            create_token(&meta, None, Scope::Read, "ci").await,
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            create_token(&meta, Some("nope"), Scope::Read, "x").await,
            Err(Error::NotFound(_))
        ));
        assert!(create_token(&meta, None, Scope::Read, "has space").await.is_err());
        let revoked = revoke_token(&meta, "ci", true).await.unwrap();
        assert_eq!(revoked.token.id, ci.token.id);
        assert!(revoked.token.revoked_at.is_some());
        // The label is free again once revoked.
        create_token(&meta, Some("team"), Scope::Write, "ci").await.unwrap();
        assert!(matches!(
            revoke_token(&meta, "999", false).await,
            Err(Error::NotFound(_))
        ));
        delete_namespace(&meta, "team").await.unwrap();
        assert!(matches!(delete_namespace(&meta, "team").await, Err(Error::NotFound(_))));
    }
}
