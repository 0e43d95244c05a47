//! Who is calling, and what the namespace allows: the server side of [`crate::auth`].
//!
//! Token, mode and namespace lookups are cached in memory for [`CACHE_TTL`], so the hot path
//! does not query the database for them on every request. That is also how long a token
//! created or revoked by the CLI (in another process) takes to be seen by a running server;
//! changes made through this server's admin API apply at once.

use crate::auth::{self, Denied, Principal};
use crate::meta::{MetaStore, MetadataStore, NamespaceRow};
use crate::stats::StatsRecorder;
use crate::Result;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a token, mode or namespace lookup is trusted.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Cached lookups kept before the caches are emptied (bounds memory under a flood of bogus
/// tokens or namespace names).
const MAX_CACHED: usize = 10_000;

struct Cached<T> {
    value: T,
    at: Instant,
}

impl<T: Clone> Cached<T> {
    fn fresh(&self) -> Option<T> {
        (self.at.elapsed() < CACHE_TTL).then(|| self.value.clone())
    }
}

/// Authentication and namespace settings for every request.
pub struct AccessControl {
    meta: MetaStore,
    stats: Arc<StatsRecorder>,
    tokens: Mutex<HashMap<String, Cached<Option<Principal>>>>,
    secured: Mutex<Option<Cached<bool>>>,
    namespaces: Mutex<HashMap<String, Cached<Option<NamespaceRow>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn remember<T>(map: &Mutex<HashMap<String, Cached<T>>>, key: String, value: T) {
    let mut map = lock(map);
    if map.len() >= MAX_CACHED {
        map.clear();
    }
    map.insert(
        key,
        Cached {
            value,
            at: Instant::now(),
        },
    );
}

impl AccessControl {
    pub fn new(meta: MetaStore, stats: Arc<StatsRecorder>) -> AccessControl {
        AccessControl {
            meta,
            stats,
            tokens: Mutex::default(),
            secured: Mutex::default(),
            namespaces: Mutex::default(),
        }
    }

    /// The caller behind a presented secret: `Ok(None)` for no secret, `Denied` for a secret
    /// that is unknown or revoked.
    pub async fn principal(&self, secret: Option<&str>) -> Result<Result<Option<Principal>, Denied>> {
        let Some(secret) = secret else { return Ok(Ok(None)) };
        let hash = auth::secret_hash(secret);
        let cached = lock(&self.tokens).get(&hash).and_then(Cached::fresh);
        let principal = match cached {
            Some(p) => p,
            None => {
                let found = self.meta.token_by_hash(&hash).await?;
                let principal = found.and_then(|(row, stored_hash)| {
                    let usable = row.revoked_at.is_none() && auth::secret_matches(secret, &stored_hash);
                    usable.then_some(Principal {
                        token_id: row.id,
                        label: row.label,
                        scope: row.scope,
                        namespace: row.namespace,
                    })
                });
                remember(&self.tokens, hash, principal.clone());
                principal
            }
        };
        match principal {
            Some(p) => {
                self.stats.token_used(p.token_id);
                Ok(Ok(Some(p)))
            }
            None => Ok(Err(Denied::Unauthenticated("invalid or revoked token"))),
        }
    }

    /// True once any token exists (secured mode); false in open mode.
    pub async fn secured(&self) -> Result<bool> {
        if let Some(fresh) = lock(&self.secured).as_ref().and_then(Cached::fresh) {
            return Ok(fresh);
        }
        let secured = self.meta.secured().await?;
        *lock(&self.secured) = Some(Cached {
            value: secured,
            at: Instant::now(),
        });
        Ok(secured)
    }

    /// A namespace's settings, `None` if it does not exist.
    pub async fn namespace(&self, name: &str) -> Result<Option<NamespaceRow>> {
        if let Some(fresh) = lock(&self.namespaces).get(name).and_then(Cached::fresh) {
            return Ok(fresh);
        }
        let row = self.meta.namespace(name).await?;
        remember(&self.namespaces, name.to_string(), row.clone());
        Ok(row)
    }

    /// Forgets every cached lookup (after this server changed tokens or namespaces).
    pub fn invalidate(&self) {
        lock(&self.tokens).clear();
        *lock(&self.secured) = None;
        lock(&self.namespaces).clear();
    }
}

impl std::fmt::Debug for AccessControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessControl").finish_non_exhaustive()
    }
}
