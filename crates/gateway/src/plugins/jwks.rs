//! JWKS key sets fetched by URL, for the plugins that verify tokens with them (`jwt-auth`'s
//! `jwks_uri`, `openid-connect`'s `use_jwks`).
//!
//! Sets are cached for the whole process (they outlive configuration changes), refreshed in
//! the background once older than their time to live, fetched at once for a key id not yet
//! seen (a rotation, at most every few seconds), and kept when the endpoint is down — so a
//! provider's outage does not stop the gateway verifying tokens signed with keys it has.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;

use crate::client::fetch;
use crate::client::pool::Pool;

/// A verification key (debug output leaves its bytes out).
pub struct Key(pub DecodingKey);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Why no key could be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySetError {
    /// The set was never fetched (the endpoint is down or answers nonsense).
    Unavailable,
    /// The set has no key with the token's key id.
    NoSuchKey,
}

/// Fetched JWKS key sets by URL (and whether its certificate is verified), for the whole
/// process, with the connections they are fetched over.
#[derive(Debug, Default)]
pub struct KeySets {
    sets: Mutex<HashMap<(String, bool), Arc<KeySet>>>,
    pool: Arc<Pool>,
}

/// How long one fetch of a key set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest key set taken.
const MAX_SET_BYTES: usize = 1024 * 1024;
/// The least time between two fetches of a key set for key ids it does not have, so tokens
/// with made-up key ids cannot make the gateway hammer the identity provider.
const MIN_REFETCH: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct KeySet {
    state: RwLock<Fetched>,
    /// Held while fetching, so one request fetches and the others wait for its result.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Fetched {
    keys: Vec<(Option<String>, Arc<Key>)>,
    fetched_at: Option<Instant>,
    tried_at: Option<Instant>,
    /// Set while the endpoint fails, so an outage is logged once.
    failing: bool,
}

impl Fetched {
    fn matching(&self, kid: Option<&str>) -> Vec<Arc<Key>> {
        self.keys
            .iter()
            .filter(|(id, _)| kid.is_none() || id.as_deref() == kid)
            .map(|(_, key)| key.clone())
            .collect()
    }

    fn tried_within(&self, period: Duration) -> bool {
        self.tried_at.is_some_and(|t| t.elapsed() < period)
    }
}

impl KeySets {
    /// The keys of the set at `uri` that may have signed a token with key id `kid`.
    pub async fn keys(
        &self,
        uri: &str,
        verify: bool,
        ttl: Duration,
        kid: Option<&str>,
    ) -> Result<Vec<Arc<Key>>, KeySetError> {
        let set = {
            let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
            sets.entry((uri.to_string(), verify)).or_default().clone()
        };
        let source = KeySource { uri, verify };
        let (known, stale, never_fetched, tried_lately) = {
            let state = set.state.read().unwrap_or_else(|e| e.into_inner());
            (
                state.matching(kid),
                state.fetched_at.is_none_or(|t| t.elapsed() >= ttl),
                state.fetched_at.is_none(),
                state.tried_within(MIN_REFETCH),
            )
        };
        if !known.is_empty() {
            if stale && !tried_lately {
                // Serve from the cache; refresh behind this request.
                let (set, pool, uri) = (set.clone(), self.pool.clone(), uri.to_string());
                tokio::spawn(async move {
                    let source = KeySource { uri: &uri, verify };
                    set.refresh(&pool, source, MIN_REFETCH).await
                });
            }
            return Ok(known);
        }
        // A key id not seen yet (the provider rotated its keys), or nothing fetched so far.
        set.refresh(&self.pool, source, MIN_REFETCH).await;
        let state = set.state.read().unwrap_or_else(|e| e.into_inner());
        let known = state.matching(kid);
        match (
            known.is_empty(),
            never_fetched && state.fetched_at.is_none(),
        ) {
            (false, _) => Ok(known),
            (true, true) => Err(KeySetError::Unavailable),
            (true, false) => Err(KeySetError::NoSuchKey),
        }
    }
}

impl KeySet {
    /// Fetches the set again unless another request did within `period`.
    async fn refresh(&self, pool: &Arc<Pool>, source: KeySource<'_>, period: Duration) {
        let Ok(_fetching) = self.fetching.try_lock() else {
            // Another request is fetching: wait for it and use what it got.
            let _ = self.fetching.lock().await;
            return;
        };
        if self
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .tried_within(period)
        {
            return;
        }
        let uri = source.uri;
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, fetch(pool, source))
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.tried_at = Some(Instant::now());
        match fetched {
            Ok(keys) => {
                if state.failing {
                    tracing::info!(uri, "the key set is reachable again");
                }
                state.keys = keys;
                state.fetched_at = Some(Instant::now());
                state.failing = false;
            }
            Err(e) => {
                if !state.failing {
                    tracing::warn!(uri, error = %e, "cannot fetch the key set; keeping the keys fetched before");
                }
                state.failing = true;
            }
        }
    }
}

/// Where a key set is fetched from.
#[derive(Debug, Clone, Copy)]
struct KeySource<'a> {
    uri: &'a str,
    /// Whether an `https` server's certificate is verified.
    verify: bool,
}

async fn fetch(
    pool: &Arc<Pool>,
    source: KeySource<'_>,
) -> Result<Vec<(Option<String>, Arc<Key>)>, String> {
    let mut call = fetch::Call::get(source.uri, source.verify);
    call.timeout = FETCH_TIMEOUT;
    call.max_bytes = MAX_SET_BYTES;
    let set: JwkSet = fetch::json(pool, call).await?;
    let keys: Vec<_> = set
        .keys
        .iter()
        .filter_map(|jwk| {
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some((jwk.common.key_id.clone(), Arc::new(Key(key))))
        })
        .collect();
    if keys.is_empty() && !set.keys.is_empty() {
        return Err("no usable key in the set".into());
    }
    Ok(keys)
}
