//! Resource subscriptions: which subscribers want `notifications/resources/updated` for
//! which resource of which server.
//!
//! Clients subscribe to Warden; Warden subscribes to the upstream once per resource,
//! whoever and however many ask, and keeps that subscription while at least one
//! subscriber wants it. [`Subscriptions::add`] and [`Subscriptions::remove`] say when the
//! upstream must hear `resources/subscribe` or `resources/unsubscribe`; the gateway
//! (`mod.rs`) sends them, re-subscribes when a server restarts (a new process knows
//! nothing of the old one's subscriptions), and fans updates out.
//!
//! Subscribers are client sessions (handshake era, `resources/subscribe`). A subscriber
//! that goes away without unsubscribing (its session ends) is removed whole by
//! [`Subscriptions::remove_all`].

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// One resource of one server.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Resource {
    pub server: String,
    pub uri: String,
}

/// Who wants a resource's updates: a client session, by id.
pub type Subscriber = String;

#[derive(Default)]
pub struct Subscriptions {
    table: Mutex<HashMap<Resource, HashSet<Subscriber>>>,
}

impl Subscriptions {
    /// Adds `who` to `resource`'s subscribers; true when it is the first (Warden must
    /// subscribe at the upstream).
    pub fn add(&self, resource: &Resource, who: &str) -> bool {
        let mut table = self.lock();
        let subscribers = table.entry(resource.clone()).or_default();
        subscribers.insert(who.to_owned());
        subscribers.len() == 1
    }

    /// Removes `who` from `resource`'s subscribers; true when it was the last (Warden
    /// must unsubscribe at the upstream).
    pub fn remove(&self, resource: &Resource, who: &str) -> bool {
        let mut table = self.lock();
        let Some(subscribers) = table.get_mut(resource) else {
            return false;
        };
        if !subscribers.remove(who) || !subscribers.is_empty() {
            return false;
        }
        table.remove(resource);
        true
    }

    /// Removes `who` everywhere; returns the resources nobody wants any more.
    pub fn remove_all(&self, who: &str) -> Vec<Resource> {
        let mut table = self.lock();
        let mut abandoned = Vec::new();
        table.retain(|resource, subscribers| {
            if subscribers.remove(who) && subscribers.is_empty() {
                abandoned.push(resource.clone());
                return false;
            }
            true
        });
        abandoned
    }

    /// Who wants `resource`'s updates.
    pub fn subscribers(&self, resource: &Resource) -> HashSet<Subscriber> {
        self.lock().get(resource).cloned().unwrap_or_default()
    }

    /// The resources of `server` someone wants.
    pub fn uris_of(&self, server: &str) -> Vec<String> {
        self.lock()
            .keys()
            .filter(|resource| resource.server == server)
            .map(|resource| resource.uri.clone())
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Resource, HashSet<Subscriber>>> {
        // Every change is one insert or one remove: the table stays consistent across a
        // panic elsewhere.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
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

    #[test]
    fn the_upstream_is_subscribed_by_the_first_and_unsubscribed_by_the_last() {
        let subscriptions = Subscriptions::default();
        let a = resource("file:///a");
        assert!(subscriptions.add(&a, "s1"), "the first subscribes upstream");
        assert!(!subscriptions.add(&a, "s2"));
        assert!(!subscriptions.add(&a, "s2"), "subscribing twice is once");
        assert!(!subscriptions.remove(&a, "s1"));
        assert!(!subscriptions.remove(&a, "s1"), "nor is leaving twice");
        assert!(!subscriptions.remove(&a, "nobody"));
        assert_eq!(
            subscriptions.subscribers(&a),
            HashSet::from(["s2".to_owned()])
        );
        assert!(
            subscriptions.remove(&a, "s2"),
            "the last unsubscribes upstream"
        );
        assert!(subscriptions.subscribers(&a).is_empty());
        assert!(subscriptions.add(&a, "s3"), "and the next subscribes again");
    }

    #[test]
    fn a_subscriber_that_goes_away_leaves_every_resource() {
        let subscriptions = Subscriptions::default();
        let (a, b) = (resource("file:///a"), resource("file:///b"));
        subscriptions.add(&a, "s1");
        subscriptions.add(&b, "s1");
        subscriptions.add(&b, "s2");
        assert_eq!(subscriptions.remove_all("s1"), std::slice::from_ref(&a));
        assert_eq!(subscriptions.uris_of("srv"), ["file:///b"]);
        assert!(subscriptions.uris_of("other").is_empty());
        assert!(subscriptions.remove_all("s1").is_empty());
    }
}
