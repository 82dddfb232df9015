//! Resource subscriptions: which subscribers want `notifications/resources/updated` for
//! which resource of which server, and whether Warden holds the upstream's subscription.
//!
//! Clients subscribe to Warden; Warden subscribes to the upstream once per resource,
//! whoever and however many ask, and keeps that subscription while at least one
//! subscriber wants it. Subscribers are client sessions (handshake era,
//! `resources/subscribe`, keyed by session id) and stateless `subscriptions/listen`
//! streams (keyed `listen-…`); one that goes away without unsubscribing is removed whole
//! by [`Subscriptions::remove_all`].
//!
//! The upstream is brought in line by [`Subscriptions::sync`]: one request at a time per
//! server, each decided from the table as it stands when its turn comes, so requests
//! reach the upstream in the order they were decided and the last word is always the
//! table's (a subscribe and an unsubscribe racing on two tasks cannot leave the upstream
//! unsubscribed while the table wants it). A request whose answer was never seen leaves
//! the state unknown, and the next turn settles it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// One resource of one server.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Resource {
    pub server: String,
    pub uri: String,
}

/// Whether the upstream holds Warden's subscription to a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upstream {
    No,
    Yes,
    /// A request went out and its answer was not seen.
    Unknown,
}

struct Entry {
    subscribers: HashSet<String>,
    upstream: Upstream,
}

/// A subscriber asked for more resources than it may hold.
#[derive(Debug, PartialEq, Eq)]
pub struct TooMany(pub usize);

/// The subscriptions, indexed so that no operation on one subscriber or one update
/// walks everyone else's: a session that ends, a subscribe counted against its limit,
/// and an update matched to its subscribers cost what that subscriber or that URI
/// holds, not what the table holds.
#[derive(Default)]
struct Table {
    /// Server → URI → who wants it, and what the upstream holds.
    servers: HashMap<String, HashMap<String, Entry>>,
    /// Subscriber → the resources it is subscribed to.
    held: HashMap<String, HashSet<Resource>>,
}

impl Table {
    fn get(&self, resource: &Resource) -> Option<&Entry> {
        self.servers.get(&resource.server)?.get(&resource.uri)
    }

    fn get_mut(&mut self, resource: &Resource) -> Option<&mut Entry> {
        self.servers
            .get_mut(&resource.server)?
            .get_mut(&resource.uri)
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.held.is_empty()
    }

    /// Takes `who` off `resource`'s subscribers; true when it was one.
    fn unsubscribe(&mut self, resource: &Resource, who: &str) -> bool {
        let removed = self
            .get_mut(resource)
            .is_some_and(|entry| entry.subscribers.remove(who));
        if let Some(held) = self.held.get_mut(who) {
            held.remove(resource);
            if held.is_empty() {
                self.held.remove(who);
            }
        }
        removed
    }

    /// Drops `resource`'s entry once nobody wants it and the upstream holds nothing.
    fn forget_if_settled(&mut self, resource: &Resource) {
        let Some(uris) = self.servers.get_mut(&resource.server) else {
            return;
        };
        if uris
            .get(&resource.uri)
            .is_some_and(|entry| entry.subscribers.is_empty() && entry.upstream == Upstream::No)
        {
            uris.remove(&resource.uri);
            if uris.is_empty() {
                self.servers.remove(&resource.server);
            }
        }
    }
}

#[derive(Default)]
pub struct Subscriptions {
    table: Mutex<Table>,
    /// Whose turn it is to talk to each server (see [`Subscriptions::sync`]).
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Subscriptions {
    /// Adds `who` to `resource`'s subscribers; true when it was not one yet. At most
    /// `max` resources per subscriber.
    pub fn add(&self, resource: &Resource, who: &str, max: usize) -> Result<bool, TooMany> {
        let mut table = self.lock();
        if table
            .get(resource)
            .is_some_and(|entry| entry.subscribers.contains(who))
        {
            return Ok(false);
        }
        if table.held.get(who).map_or(0, HashSet::len) >= max {
            return Err(TooMany(max));
        }
        table
            .held
            .entry(who.to_owned())
            .or_default()
            .insert(resource.clone());
        let entry = table
            .servers
            .entry(resource.server.clone())
            .or_default()
            .entry(resource.uri.clone())
            .or_insert_with(|| Entry {
                subscribers: HashSet::new(),
                upstream: Upstream::No,
            });
        Ok(entry.subscribers.insert(who.to_owned()))
    }

    /// Removes `who` from `resource`'s subscribers; true when it was one.
    pub fn remove(&self, resource: &Resource, who: &str) -> bool {
        let mut table = self.lock();
        let removed = table.unsubscribe(resource, who);
        table.forget_if_settled(resource);
        removed
    }

    /// Removes `who` everywhere; returns the resources it was subscribed to.
    pub fn remove_all(&self, who: &str) -> Vec<Resource> {
        let mut table = self.lock();
        let left: Vec<Resource> = table.held.remove(who).into_iter().flatten().collect();
        for resource in &left {
            if let Some(entry) = table.get_mut(resource) {
                entry.subscribers.remove(who);
            }
            table.forget_if_settled(resource);
        }
        left
    }

    /// Who wants to hear that `resource` was updated: the subscribers of that resource
    /// and of any resource of the same server it lies under (the protocol lets an
    /// update name a sub-resource of the one subscribed to; see [`parents`]).
    pub fn subscribers(&self, resource: &Resource) -> HashSet<String> {
        let table = self.lock();
        let mut who = HashSet::new();
        let Some(uris) = table.servers.get(&resource.server) else {
            return who;
        };
        let uri = resource.uri.as_str();
        // Each parent is hashed whole, so looking them all up costs the square of the
        // URI's length; a server with fewer subscribed URIs than that URI has parents
        // is cheaper to scan (the URI comes from the upstream, its length is not ours).
        if uris.len() <= parents(uri).count() {
            for (subscribed, entry) in uris {
                if subscribed == uri || lies_under(uri, subscribed) {
                    who.extend(entry.subscribers.iter().cloned());
                }
            }
        } else {
            for candidate in parents(uri).chain([uri]) {
                if let Some(entry) = uris.get(candidate) {
                    who.extend(entry.subscribers.iter().cloned());
                }
            }
        }
        who
    }

    /// The resources `who` is subscribed to (not the sub-resources under them).
    pub fn held_by(&self, who: &str) -> Vec<Resource> {
        let table = self.lock();
        table.held.get(who).into_iter().flatten().cloned().collect()
    }

    /// `server` is a new process: it holds none of Warden's subscriptions. Returns the
    /// resources someone wants from it (to [`sync`](Self::sync) again).
    pub fn upstream_restarted(&self, server: &str) -> Vec<Resource> {
        let mut table = self.lock();
        let Some(uris) = table.servers.get_mut(server) else {
            return Vec::new();
        };
        uris.retain(|_, entry| {
            entry.upstream = Upstream::No;
            !entry.subscribers.is_empty()
        });
        let wanted = uris
            .keys()
            .map(|uri| Resource {
                server: server.to_owned(),
                uri: uri.clone(),
            })
            .collect();
        if uris.is_empty() {
            table.servers.remove(server);
        }
        wanted
    }

    /// Brings the upstream's subscription to `resource` in line with its subscribers,
    /// sending `resources/subscribe` or `resources/unsubscribe` through `send`, after
    /// every request for the same server decided before it. Fails when a subscribe
    /// was refused (an unsubscribe that fails counts as done: the subscription is no
    /// use to the upstream either way).
    pub async fn sync<F, Fut, E>(&self, resource: &Resource, send: F) -> Result<(), E>
    where
        F: Fn(&'static str) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let turn = self.turn(&resource.server);
        let _turn = turn.lock().await;
        loop {
            let method = {
                let mut table = self.lock();
                let Some(entry) = table.get_mut(resource) else {
                    return Ok(());
                };
                let wanted = !entry.subscribers.is_empty();
                let method = match (wanted, entry.upstream) {
                    (true, Upstream::Yes) | (false, Upstream::No) => return Ok(()),
                    (true, _) => "resources/subscribe",
                    (false, _) => "resources/unsubscribe",
                };
                entry.upstream = Upstream::Unknown;
                method
            };
            let outcome = send(method).await;
            let mut table = self.lock();
            let subscribed = method == "resources/subscribe" && outcome.is_ok();
            if let Some(entry) = table.get_mut(resource) {
                entry.upstream = if subscribed {
                    Upstream::Yes
                } else {
                    Upstream::No
                };
            }
            table.forget_if_settled(resource);
            match outcome {
                Err(error) if method == "resources/subscribe" => return Err(error),
                Err(error) => tracing::info!(
                    server = %resource.server,
                    uri = %resource.uri,
                    %error,
                    "the upstream refused an unsubscribe; Warden holds nothing there either way"
                ),
                Ok(()) => {}
            }
        }
    }

    fn turn(&self, server: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        turns.entry(server.to_owned()).or_default().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every change leaves the table consistent: it survives a panic elsewhere.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `uri` names a part of the resource `parent` (one of [`parents`] of `uri`).
fn lies_under(uri: &str, parent: &str) -> bool {
    let Some(rest) = uri.strip_prefix(parent) else {
        return false;
    };
    !rest.is_empty() && (parent.ends_with('/') || rest.starts_with(['/', '?', '#']))
}

/// The resources `uri` names a part of: each prefix of it followed by a path, query or
/// fragment (`file:///a` and `file:///a/` for `file:///a/b`, `file:///a` for
/// `file:///a?rev=2`). Prefixes that stop in the middle of a name do not count
/// (`file:///ab` is not under `file:///a`). Shortest first; `uri` itself is not one.
fn parents(uri: &str) -> impl Iterator<Item = &str> {
    let bytes = uri.as_bytes();
    // Every position looked at follows an ASCII `/` or holds one of `/?#`, so it is a
    // character boundary and the slice cannot panic.
    (1..bytes.len())
        .filter(move |&i| bytes[i - 1] == b'/' || matches!(bytes[i], b'/' | b'?' | b'#'))
        .map(move |i| &uri[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(uri: &str) -> Resource {
        Resource {
            server: "srv".into(),
            uri: uri.into(),
        }
    }

    /// An upstream that records what it was sent and refuses subscribes while `refuse`.
    #[derive(Default)]
    struct Upstream {
        sent: Mutex<Vec<&'static str>>,
        refuse: std::sync::atomic::AtomicBool,
    }

    impl Upstream {
        async fn send(&self, method: &'static str) -> Result<(), String> {
            self.sent.lock().unwrap().push(method);
            let refused = self.refuse.load(std::sync::atomic::Ordering::SeqCst);
            if refused && method == "resources/subscribe" {
                return Err("refused".into());
            }
            Ok(())
        }

        fn sent(&self) -> Vec<&'static str> {
            std::mem::take(&mut self.sent.lock().unwrap())
        }
    }

    #[test]
    fn an_update_of_a_sub_resource_reaches_the_subscribers_of_the_resource_it_lies_under() {
        let subscriptions = Subscriptions::default();
        for (uri, who) in [
            ("file:///a", "whole"),
            ("file:///a/", "dir"),
            ("file:///a/b", "exact"),
            ("file:///ab", "sibling"),
        ] {
            assert_eq!(subscriptions.add(&resource(uri), who, 10), Ok(true));
        }
        let other_server = Resource {
            server: "other".into(),
            uri: "file:///a".into(),
        };
        assert_eq!(subscriptions.add(&other_server, "elsewhere", 10), Ok(true));
        let heard = |uri: &str| {
            let mut who: Vec<String> = subscriptions
                .subscribers(&resource(uri))
                .into_iter()
                .collect();
            who.sort();
            who
        };
        assert_eq!(heard("file:///a/b"), ["dir", "exact", "whole"]);
        assert_eq!(heard("file:///a/b/c"), ["dir", "exact", "whole"]);
        assert_eq!(heard("file:///a"), ["whole"]);
        assert_eq!(heard("file:///a?rev=2"), ["whole"]);
        assert_eq!(heard("file:///a/"), ["dir", "whole"]);
        assert_eq!(heard("file:///abc"), Vec::<String>::new());
        assert_eq!(heard("file:///ab/x"), ["sibling"]);
    }

    #[test]
    fn looking_up_parents_and_scanning_find_the_same_subscribers() {
        // Few URIs subscribed: scanned. Many: looked up. Both must agree.
        for extra in [0, 64] {
            let subscriptions = Subscriptions::default();
            for (uri, who) in [
                ("file:///a", "whole"),
                ("file:///a/", "dir"),
                ("file:///ab", "sibling"),
            ] {
                subscriptions.add(&resource(uri), who, 100).unwrap();
            }
            for i in 0..extra {
                subscriptions
                    .add(&resource(&format!("file:///z/{i}")), "filler", 100)
                    .unwrap();
            }
            let mut heard: Vec<String> = subscriptions
                .subscribers(&resource("file:///a/b/c"))
                .into_iter()
                .collect();
            heard.sort();
            assert_eq!(heard, ["dir", "whole"], "with {extra} more URIs");
            for (uri, parent) in [("file:///a/b", "file:///a"), ("file:///a?x", "file:///a")] {
                assert!(lies_under(uri, parent));
                assert!(parents(uri).any(|p| p == parent));
            }
            assert!(!lies_under("file:///ab", "file:///a"));
            assert!(!lies_under("file:///a", "file:///a"));
        }
    }

    /// Every subscriber of an entry holds it, and everything held is an entry's.
    fn assert_indexes_agree(subscriptions: &Subscriptions) {
        let table = subscriptions.lock();
        let mut from_entries: HashMap<String, HashSet<Resource>> = HashMap::new();
        for (server, uris) in &table.servers {
            assert!(!uris.is_empty(), "an empty server map is kept");
            for (uri, entry) in uris {
                for who in &entry.subscribers {
                    from_entries
                        .entry(who.clone())
                        .or_default()
                        .insert(Resource {
                            server: server.clone(),
                            uri: uri.clone(),
                        });
                }
            }
        }
        assert_eq!(from_entries, table.held);
    }

    #[test]
    fn the_two_indexes_agree_after_any_sequence_of_changes() {
        let subscriptions = Subscriptions::default();
        // A fixed pseudo-random sequence (xorshift), so a failure repeats.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for _ in 0..5000 {
            let resource = Resource {
                server: format!("s{}", next(3)),
                uri: format!("file:///{}", next(6)),
            };
            let who = format!("c{}", next(5));
            match next(10) {
                0..=4 => {
                    let _ = subscriptions.add(&resource, &who, 4);
                }
                5..=7 => {
                    subscriptions.remove(&resource, &who);
                }
                8 => {
                    subscriptions.remove_all(&who);
                }
                _ => {
                    subscriptions.upstream_restarted(&resource.server);
                }
            }
            assert_indexes_agree(&subscriptions);
            for (who, held) in &subscriptions.lock().held {
                assert!(held.len() <= 4, "{who} holds more than its limit");
            }
        }
    }

    #[test]
    fn parents_are_the_prefixes_that_end_at_a_separator() {
        let all = |uri| parents(uri).collect::<Vec<_>>();
        assert_eq!(
            all("file:///a/b?x#y"),
            [
                "file:",
                "file:/",
                "file://",
                "file:///",
                "file:///a",
                "file:///a/",
                "file:///a/b",
                "file:///a/b?x"
            ]
        );
        assert_eq!(
            all("fixture://hello"),
            ["fixture:", "fixture:/", "fixture://"]
        );
        assert!(all("x").is_empty());
        assert_eq!(
            all("é/ü"),
            ["é", "é/"],
            "multi-byte characters are never split"
        );
    }

    #[test]
    fn a_subscriber_s_limit_counts_what_it_holds_now() {
        let subscriptions = Subscriptions::default();
        let (a, b) = (resource("file:///a"), resource("file:///b"));
        subscriptions.add(&a, "s1", 1).unwrap();
        assert_eq!(subscriptions.add(&b, "s1", 1), Err(TooMany(1)));
        assert!(subscriptions.remove(&a, "s1"));
        assert_eq!(subscriptions.add(&b, "s1", 1), Ok(true), "a freed place");
        assert_eq!(subscriptions.remove_all("s1"), std::slice::from_ref(&b));
        assert_eq!(subscriptions.add(&a, "s1", 1), Ok(true));
        assert!(subscriptions.remove_all("nobody").is_empty());
    }

    #[tokio::test]
    async fn the_upstream_is_subscribed_once_and_unsubscribed_after_the_last() {
        let (subscriptions, upstream) = (Subscriptions::default(), Upstream::default());
        let a = resource("file:///a");
        let send = |method| upstream.send(method);
        assert_eq!(subscriptions.add(&a, "s1", 10), Ok(true));
        subscriptions.sync(&a, send).await.unwrap();
        assert_eq!(subscriptions.add(&a, "s2", 10), Ok(true));
        assert_eq!(subscriptions.add(&a, "s2", 10), Ok(false), "twice is once");
        subscriptions.sync(&a, send).await.unwrap();
        assert_eq!(upstream.sent(), ["resources/subscribe"]);
        assert!(subscriptions.remove(&a, "s1"));
        assert!(!subscriptions.remove(&a, "s1"));
        subscriptions.sync(&a, send).await.unwrap();
        assert!(upstream.sent().is_empty(), "s2 still wants it");
        assert_eq!(subscriptions.remove_all("s2"), std::slice::from_ref(&a));
        subscriptions.sync(&a, send).await.unwrap();
        assert_eq!(upstream.sent(), ["resources/unsubscribe"]);
        assert!(subscriptions.lock().is_empty(), "nothing left to remember");
    }

    #[tokio::test]
    async fn a_refused_subscribe_is_tried_again_for_whoever_still_wants_it() {
        let (subscriptions, upstream) = (Subscriptions::default(), Upstream::default());
        let a = resource("file:///a");
        let send = |method| upstream.send(method);
        subscriptions.add(&a, "s1", 10).unwrap();
        subscriptions.add(&a, "s2", 10).unwrap();
        upstream
            .refuse
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(subscriptions.sync(&a, send).await.is_err());
        subscriptions.remove(&a, "s1");
        upstream
            .refuse
            .store(false, std::sync::atomic::Ordering::SeqCst);
        // s2 was told nothing yet; its own turn subscribes.
        subscriptions.sync(&a, send).await.unwrap();
        assert_eq!(
            upstream.sent(),
            ["resources/subscribe", "resources/subscribe"]
        );
        assert_eq!(
            subscriptions.subscribers(&a),
            HashSet::from(["s2".to_owned()])
        );
    }

    #[tokio::test]
    async fn a_restarted_upstream_is_subscribed_again_and_limits_hold() {
        let (subscriptions, upstream) = (Subscriptions::default(), Upstream::default());
        let (a, b) = (resource("file:///a"), resource("file:///b"));
        let send = |method| upstream.send(method);
        subscriptions.add(&a, "s1", 1).unwrap();
        assert_eq!(subscriptions.add(&b, "s1", 1), Err(TooMany(1)));
        assert_eq!(subscriptions.add(&b, "s2", 1), Ok(true));
        for resource in [&a, &b] {
            subscriptions.sync(resource, send).await.unwrap();
        }
        upstream.sent();
        let again = subscriptions.upstream_restarted("srv");
        assert_eq!(again.len(), 2);
        for resource in &again {
            subscriptions.sync(resource, send).await.unwrap();
        }
        assert_eq!(
            upstream.sent(),
            ["resources/subscribe", "resources/subscribe"]
        );
        assert!(subscriptions.upstream_restarted("other").is_empty());
    }
}
