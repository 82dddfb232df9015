//! The composition root's shared state: what every HTTP handler and background task can
//! reach. Built once by `warden serve` (see `cli/serve.rs`); fields are added as the
//! surfaces that need them land.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;
use warden_actors::audit::scrub::{Scrubber, ScrubberCell};
use warden_actors::audit::{AuditEvent, AuditRecord};
use warden_actors::reconciler::Diff;
use warden_actors::tree::Tree;

use crate::auth::{Authenticator, Identity};
use crate::config::Config;
use crate::gateway::{Gateway, Rules};
use crate::policy::PolicyEngine;
use crate::policy::hooks::Hooks;
use crate::policy::limits::RateLimiter;
use crate::policy::quotas::QuotaRule;
use crate::secrets::{MasterKey, SecretStore};

/// Applies a new log filter (`logging.level`) without a restart.
pub type LogLevelSetter = Box<dyn Fn(&str) -> bool + Send + Sync>;

pub struct App {
    /// The profile in force; replaced whole on reload.
    pub config: Arc<ArcSwap<Config>>,
    pub db: Pool,
    pub master_key: Arc<MasterKey>,
    pub secrets: SecretStore,
    pub readiness: Readiness,
    pub metrics: Option<PrometheusHandle>,
    pub tree: Tree,
    pub gateway: Arc<Gateway>,
    /// The audit trail's queue (every surface records through it).
    pub audit: warden_actors::audit::Audit,
    /// The redaction rules the audit writer applies (`audit.redact` and the secret
    /// store's values); see `audit::refresh_redaction`.
    pub redaction: ScrubberCell,
    pub authenticator: Arc<dyn Authenticator>,
    /// Identity: tokens, users, the OAuth authorization server (also `authenticator`).
    pub identity: Arc<Identity>,
    /// The permission rules (shared with identity; swapped whole on reload).
    pub policy: Arc<ArcSwap<PolicyEngine>>,
    /// Rate limits, hooks and quotas from the profile; replaced whole on reload.
    pub limits: ArcSwap<RateLimiter>,
    pub hooks: ArcSwap<Hooks>,
    pub quotas: ArcSwap<Vec<QuotaRule>>,
    pub log_level: Option<LogLevelSetter>,
    /// The AI gateway: providers, routes, prices, budgets, provider keys.
    pub ai: crate::ai::Ai,
    /// Stateless clients' calls waiting for their answer to an upstream's request.
    pub awaiting_input: crate::http::mrtr::AwaitingInput<crate::http::mcp::Suspended>,
    /// One reload at a time (SIGHUP and `POST /admin/reload` may race).
    reload_lock: tokio::sync::Mutex<()>,
}

impl App {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        db: Pool,
        master_key: Arc<MasterKey>,
        metrics: Option<PrometheusHandle>,
        tree: Tree,
        gateway: Gateway,
        identity: Arc<Identity>,
        log_level: Option<LogLevelSetter>,
    ) -> App {
        let secrets =
            SecretStore::new(db.clone(), master_key.clone()).with_audit(gateway.audit.clone());
        App {
            ai: crate::ai::Ai::new(db.clone(), secrets.clone(), gateway.audit.clone()),
            secrets,
            redaction: Scrubber::new(&config.audit.redact, &[]).into_cell(),
            limits: ArcSwap::from_pointee(RateLimiter::new(config.policy.limits.clone())),
            hooks: ArcSwap::from_pointee(Hooks::new(config.policy.hooks.clone())),
            quotas: ArcSwap::from_pointee(config.policy.quotas.clone()),
            config: Arc::new(ArcSwap::from_pointee(config)),
            db,
            master_key,
            readiness: Readiness::default(),
            metrics,
            tree,
            audit: gateway.audit.clone(),
            gateway: Arc::new(gateway),
            authenticator: identity.clone(),
            policy: identity.policy(),
            identity,
            log_level,
            awaiting_input: Default::default(),
            reload_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The rules in force, as one snapshot (a reload between two loads cannot mix them).
    pub fn rules(&self) -> Rules {
        Rules {
            policy: self.policy.load_full(),
            limits: self.limits.load_full(),
            hooks: self.hooks.load_full(),
            quotas: self.quotas.load_full(),
        }
    }

    /// True when a pooled connection answers within the pool's timeouts.
    pub async fn database_reachable(&self) -> bool {
        match self.db.get().await {
            Ok(client) => client.simple_query("").await.is_ok(),
            Err(_) => false,
        }
    }

    /// The RFC 9728 metadata URL for the MCP resource, named in `WWW-Authenticate`.
    pub fn resource_metadata_url(&self) -> String {
        format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            self.config.load().server.public_url
        )
    }

    /// Re-reads the profile from its file and applies what can change live: servers
    /// (reconciled), the log level, and everything read per request. What needs a restart
    /// is logged as such. A profile with errors is refused whole; the running one stays.
    pub async fn reload(&self) -> Result<Diff, String> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let current = self.config.load_full();
        let path = current
            .source
            .clone()
            .ok_or_else(|| "the profile was not read from a file; nothing to reload".to_owned())?;
        let new = match Config::load(&path) {
            Ok(new) => new,
            Err(e) => {
                tracing::error!("profile reload refused, keeping the running one:\n{e}");
                self.record_reload(&path, Err(&e.to_string())).await;
                return Err(e.to_string());
            }
        };
        for (key, changed) in [
            ("server.listen", new.server.listen != current.server.listen),
            (
                "server.state_dir",
                new.server.state_dir != current.server.state_dir,
            ),
            ("database", new.database.url != current.database.url),
            // The files' contents are picked up live; which files, and whether, is not.
            ("server.tls", new.server.tls != current.server.tls),
            (
                "server.header_read_timeout",
                new.server.header_read_timeout != current.server.header_read_timeout,
            ),
        ] {
            if changed {
                tracing::warn!(key, "changed in the profile; takes effect after a restart");
            }
        }
        // Everything that uses the public URL reads it from the running profile, so it
        // changes at once — and with it the default issuer and audience of Warden's own
        // tokens, which is worth a word in the log.
        if new.server.public_url != current.server.public_url {
            tracing::warn!(
                old = %current.server.public_url,
                new = %new.server.public_url,
                "server.public_url changed: applied now; access tokens issued for the old URL (its issuer and audience) are no longer accepted unless identity.issuer and identity.audience pin them"
            );
        }
        if new.logging.level != current.logging.level
            && let Some(set) = &self.log_level
            && set(&new.logging.level)
        {
            tracing::info!(level = %new.logging.level, "log level changed");
        }
        let ai = match self.ai.prepare(&new) {
            Ok(ai) => ai,
            Err(e) => {
                let message = format!("{}: {e}", path.display());
                tracing::error!("profile reload refused, keeping the running one:\n{message}");
                self.record_reload(&path, Err(&message)).await;
                return Err(message);
            }
        };
        let servers = new.servers.clone();
        self.gateway
            .sessions
            .set_limits(crate::gateway::session::SessionLimits {
                idle_timeout: new.sessions.idle_timeout,
                max_total: new.sessions.max_total,
                max_per_principal: new.sessions.max_per_principal,
            });
        if new.policy.limits != *self.limits.load().config() {
            tracing::info!("rate limits changed; applying them now");
            self.limits
                .store(Arc::new(RateLimiter::new(new.policy.limits.clone())));
        }
        self.hooks
            .store(Arc::new(Hooks::new(new.policy.hooks.clone())));
        self.quotas.store(Arc::new(new.policy.quotas.clone()));
        self.identity.reconfigure(&new);
        self.ai.install(ai);
        self.config.store(Arc::new(new));
        crate::audit::refresh_redaction(&self.redaction, &self.config.load(), &self.secrets).await;
        let diff = self
            .tree
            .reconcile(servers)
            .await
            .map_err(|e| e.to_string());
        self.record_reload(&path, diff.as_ref().map_err(String::as_str))
            .await;
        let diff = diff?;
        tracing::info!(profile = %path.display(), "profile reloaded");
        Ok(diff)
    }

    /// The `config.reload` audit event.
    async fn record_reload(&self, path: &std::path::Path, outcome: Result<&Diff, &str>) {
        let mut event = AuditEvent::new("config.reload", "system");
        event.subject = Some(path.display().to_string());
        event.decision = None;
        match outcome {
            Ok(diff) => {
                event.reason = Some("applied".into());
                event.attributes = serde_json::json!({ "applied": true, "servers": serde_json::to_value(diff).unwrap_or_default() });
            }
            Err(error) => {
                event.reason = Some(error.to_owned());
                event.attributes = serde_json::json!({ "applied": false });
            }
        }
        if let Err(error) = self.audit.record(AuditRecord::Event(Box::new(event))).await {
            tracing::error!(%error, "the profile reload could not be audited");
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
