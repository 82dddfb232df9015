//! The seams an extension plugs into. Warden is also a library: an integrator adds it as
//! a dependency, implements [`Extension`], and ships one binary. Everything an extension
//! may contribute is assembled through the [`Registry`], and the built-ins register
//! themselves exactly the same way, so there is no hard-wired list an extension would
//! have to patch.
//!
//! The trait is deliberately small and unstable for now (the public, versioned trait
//! comes later); what matters today is that every contribution point is a registry.

use std::sync::Arc;

use axum::Router;
use warden_actors::scheduler::Job;

use crate::app::App;
use crate::db::Migration;
use crate::http::AppState;

/// Something that contributes to Warden. Every method has a default, so an extension
/// implements only what it adds.
pub trait Extension: Send + Sync + 'static {
    /// A short identifier (used in logs and as the migration namespace).
    fn name(&self) -> &'static str;

    /// Adds this extension's contributions.
    fn register(&self, registry: &mut Registry);
}

/// Builds the routes an extension serves, given the shared application state.
pub type RouteFactory = Box<dyn Fn() -> Router<AppState> + Send + Sync>;

/// Builds a background job for the Scheduler from the running Warden; `None` when the
/// profile does not enable it.
pub type JobFactory = Box<dyn Fn(&Arc<App>) -> Option<Arc<dyn Job>> + Send + Sync>;

/// Everything the running Warden is assembled from.
#[derive(Default)]
pub struct Registry {
    pub(crate) routes: Vec<(&'static str, RouteFactory)>,
    pub(crate) migrations: Vec<Migration>,
    pub(crate) jobs: Vec<(&'static str, JobFactory)>,
}

impl Registry {
    /// The registry with every built-in registered, then each extension in order.
    pub fn with(extensions: &[&dyn Extension]) -> Registry {
        let mut registry = Registry::default();
        crate::builtins().register(&mut registry);
        for extension in extensions {
            extension.register(&mut registry);
        }
        registry
    }

    /// Adds HTTP routes (merged into the one listener, behind the same middleware).
    pub fn routes(
        &mut self,
        owner: &'static str,
        factory: impl Fn() -> Router<AppState> + Send + Sync + 'static,
    ) {
        self.routes.push((owner, Box::new(factory)));
    }

    /// Adds SQL migrations; each extension uses its own namespace.
    pub fn migrations(&mut self, migrations: impl IntoIterator<Item = Migration>) {
        self.migrations.extend(migrations);
    }

    pub fn all_migrations(&self) -> &[Migration] {
        &self.migrations
    }

    /// Adds a background job, run by the Scheduler on one replica at a time.
    pub fn jobs(
        &mut self,
        owner: &'static str,
        factory: impl Fn(&Arc<App>) -> Option<Arc<dyn Job>> + Send + Sync + 'static,
    ) {
        self.jobs.push((owner, Box::new(factory)));
    }

    /// The jobs the profile enables.
    pub fn build_jobs(&self, app: &Arc<App>) -> Vec<Arc<dyn Job>> {
        self.jobs
            .iter()
            .filter_map(|(_, factory)| factory(app))
            .collect()
    }
}
