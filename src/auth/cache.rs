//! Verified tokens, by the SHA-256 of the token, until they expire: the steady-state cost
//! of authenticating a call is one hash and one map lookup under a read lock.
//!
//! Revocation (a `jti`, a refresh family, a disabled account, a revoked API key) and a
//! profile reload clear entries, in this process at once and in every other replica
//! through PostgreSQL `NOTIFY` (see `service`). The map is bounded: at the limit, expired
//! entries are dropped, and if that is not enough the whole cache is.
//!
//! A verification that read the account's state before an invalidation must not land in
//! the cache after it (it would outlive the revocation): every clear and invalidation
//! bumps a generation, and [`TokenCache::insert_unless_changed`] inserts only if the
//! generation is still the one read before verifying.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use super::Principal;
use super::tokens::unix_now;

/// A SHA-256 is already uniformly distributed: its first eight bytes are the hash.
#[derive(Default)]
pub struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(word);
    }

    fn write_usize(&mut self, _length: usize) {}
}

type Map = HashMap<[u8; 32], Entry, BuildHasherDefault<PrefixHasher>>;

#[derive(Clone)]
struct Entry {
    principal: Arc<Principal>,
    /// Unix seconds after which the entry is void.
    expires_at: u64,
    /// The refresh family of the token, if any.
    family: Option<Arc<str>>,
}

/// The verified-token cache.
pub struct TokenCache {
    map: RwLock<Map>,
    max_entries: usize,
    /// Bumped, under the map's write lock, by every clear and invalidation.
    generation: AtomicU64,
}

/// The cache key of a token.
pub fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenCache {
    pub fn new(max_entries: usize) -> TokenCache {
        TokenCache {
            map: RwLock::new(Map::default()),
            max_entries: max_entries.max(1),
            generation: AtomicU64::new(0),
        }
    }

    /// The current generation: read it before verifying a token, and pass it to
    /// [`TokenCache::insert_unless_changed`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remembers a verified token until `expires_at` (unix seconds), unless the cache
    /// was cleared or invalidated since `generation` was read: the verification may
    /// predate a revocation.
    pub fn insert_unless_changed(
        &self,
        generation: u64,
        key: [u8; 32],
        principal: Arc<Principal>,
        expires_at: u64,
        family: Option<&str>,
    ) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if map.len() >= self.max_entries {
            let now = unix_now();
            map.retain(|_, e| e.expires_at > now);
            if map.len() >= self.max_entries {
                map.clear();
            }
        }
        map.insert(
            key,
            Entry {
                principal,
                expires_at,
                family: family.map(Arc::from),
            },
        );
    }

    /// The principal of a token verified earlier and not yet expired.
    pub fn get(&self, key: &[u8; 32]) -> Option<Arc<Principal>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let entry = map.get(key)?;
        (entry.expires_at > unix_now()).then(|| entry.principal.clone())
    }

    /// Drops the entries of one token id, one subject or one refresh family.
    pub fn invalidate(&self, token_id: Option<&str>, subject: Option<&str>, family: Option<&str>) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.retain(|_, e| {
            let by_id = token_id.is_some() && e.principal.token_id.as_deref() == token_id;
            let by_subject = subject.is_some_and(|s| e.principal.subject == s);
            let by_family = family.is_some() && e.family.as_deref() == family;
            !(by_id || by_subject || by_family)
        });
    }

    pub fn clear(&self) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.clear();
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_are_bounded_and_invalidate() {
        let cache = TokenCache::new(2);
        let mut alice = Principal::anonymous();
        alice.subject = "alice".into();
        alice.token_id = Some("j1".into());
        let alice = Arc::new(alice);
        cache.insert_unless_changed(
            cache.generation(),
            key("t1"),
            alice.clone(),
            unix_now() + 60,
            Some("fam"),
        );
        assert!(cache.get(&key("t1")).is_some());
        assert!(cache.get(&key("t2")).is_none());
        cache.insert_unless_changed(
            cache.generation(),
            key("old"),
            alice.clone(),
            unix_now() - 1,
            None,
        );
        assert!(cache.get(&key("old")).is_none());
        cache.insert_unless_changed(
            cache.generation(),
            key("t3"),
            alice.clone(),
            unix_now() + 60,
            None,
        );
        assert!(cache.len() <= 2);
        cache.invalidate(None, None, Some("fam"));
        assert!(cache.get(&key("t1")).is_none());
        cache.insert_unless_changed(cache.generation(), key("t4"), alice, unix_now() + 60, None);
        cache.invalidate(None, Some("alice"), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_verification_older_than_an_invalidation_is_not_cached() {
        let cache = TokenCache::new(10);
        let alice = Arc::new(Principal::anonymous());
        let before = cache.generation();
        cache.clear();
        cache.insert_unless_changed(before, key("t1"), alice.clone(), unix_now() + 60, None);
        assert!(cache.get(&key("t1")).is_none());
        let before = cache.generation();
        cache.invalidate(Some("j9"), None, None);
        cache.insert_unless_changed(before, key("t1"), alice.clone(), unix_now() + 60, None);
        assert!(cache.get(&key("t1")).is_none());
        let now = cache.generation();
        cache.insert_unless_changed(now, key("t1"), alice, unix_now() + 60, None);
        assert!(cache.get(&key("t1")).is_some());
    }
}
