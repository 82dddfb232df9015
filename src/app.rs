//! The composition root's shared state: what every HTTP handler and background task can
//! reach. Built once by `warden serve` (see `cli/serve.rs`); fields are added as the
//! surfaces that need them land.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::secrets::MasterKey;

pub struct App {
    /// The profile in force; replaced whole on reload.
    pub config: ArcSwap<Config>,
    pub db: Pool,
    pub master_key: Arc<MasterKey>,
    pub readiness: Readiness,
    pub metrics: Option<PrometheusHandle>,
}

impl App {
    /// True when a pooled connection answers within the pool's timeouts.
    pub async fn database_reachable(&self) -> bool {
        match self.db.get().await {
            Ok(client) => client.simple_query("").await.is_ok(),
            Err(_) => false,
        }
    }
}

/// What `/readyz` reports besides the database.
#[derive(Default)]
pub struct Readiness {
    tree_up: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    pub fn set_tree_up(&self, up: bool) {
        self.tree_up.store(up, Ordering::Release);
    }

    pub fn is_tree_up(&self) -> bool {
        self.tree_up.load(Ordering::Acquire)
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}
