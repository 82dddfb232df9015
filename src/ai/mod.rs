//! The AI gateway's logic, independent of HTTP: one door to every configured model.
//!
//! - [`provider`]: provider kinds (contributed through the registry) and the providers the
//!   profile configures;
//! - [`wire`]: the OpenAI, Anthropic and Gemini formats and the translation between them;
//! - [`pricing`]: token usage and its cost in integer microdollars;
//! - [`budgets`]: per-user and per-group cost and token budgets in PostgreSQL;
//! - [`keys`]: provider keys from the secret store, cached as sensitive headers;
//! - [`sse`]: the event-stream reader and writer;
//! - [`exchange`]: one model request from the permission check to its `ai_requests` row;
//! - [`count`]: token counting, governed like a model request, counted by the provider.
//!
//! [`Ai`] holds what the profile configured ([`AiState`], swapped whole on reload), the
//! key cache and the one HTTP client every provider request goes through. The order of a
//! request is fixed and visible in `exchange`: route → **the permission check** (audited,
//! allow or deny) → rate limit → budgets → key → upstream → the `ai_requests` row and the
//! budget charge. Every request that reaches the permission check leaves a row, whatever
//! happens after.

pub mod budgets;
pub mod count;
pub mod exchange;
pub mod keys;
pub mod pricing;
pub mod provider;
pub mod sse;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use deadpool_postgres::Pool;
use indexmap::IndexMap;
use thiserror::Error;
use warden_actors::audit::Audit;

use crate::auth::Principal;
use crate::config::Config;
use crate::policy::{Permission, PolicyEngine};
use crate::secrets::SecretStore;
use budgets::BudgetRule;
pub use exchange::{AiError, Answer, Caller};
use keys::KeyCache;
use pricing::Price;
pub use provider::ProviderSettings;
use provider::{Provider, ProviderFactory};
use wire::Wire;

/// The validated `ai:` section.
#[derive(Clone, Debug, Default)]
pub struct AiConfig {
    /// What a model request needs unless its route names its own (default `ai:chat`).
    pub scopes: Vec<String>,
    pub providers: BTreeMap<String, ProviderSettings>,
    /// Alias → route, in profile order (the order `/v1/models` lists them in).
    pub models: IndexMap<String, ModelRoute>,
    /// Model name → price (picodollars per token).
    pub prices: BTreeMap<String, Price>,
    pub budgets: Vec<BudgetRule>,
    /// Tool types a provider runs itself allowed in relayed Responses requests
    /// (`ai.provider_tools`).
    pub provider_tools: Vec<String>,
    /// `ai.max_draining_streams`.
    pub max_draining_streams: usize,
}

/// `ai.models.<alias>`: the name a client asks for, and where it goes.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRoute {
    pub alias: String,
    pub provider: String,
    /// The provider's own name for the model.
    pub model: String,
    /// Replaces `ai.scopes` for this model.
    pub scopes: Option<Vec<String>>,
    /// The output limit a translated request gets when it names none (Anthropic's
    /// format requires one).
    pub default_max_tokens: Option<u64>,
}

/// Provider kind → its factory (from the registry).
pub type ProviderKinds = HashMap<String, ProviderFactory>;

/// Why a profile's `ai:` section cannot be applied.
#[derive(Debug, Error)]
pub enum SetupError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("the AI gateway's provider kinds are not registered yet")]
    NotStarted,
}

/// A model alias ready to serve: its provider built, its price looked up.
pub struct Route {
    pub alias: String,
    pub model: String,
    /// `ai.models.<alias>.default_max_tokens`.
    pub default_max_tokens: Option<u64>,
    pub provider_name: String,
    pub provider: Arc<dyn Provider>,
    pub settings: ProviderSettings,
}

impl Route {
    pub fn wire(&self) -> Wire {
        self.provider.wire()
    }
}

/// What the profile configured, swapped whole on reload.
pub struct AiState {
    pub routes: IndexMap<String, Arc<Route>>,
    pub prices: Arc<BTreeMap<String, Price>>,
    pub budgets: Arc<[BudgetRule]>,
    pub provider_tools: Arc<[String]>,
    /// Permits for streams read to their end after their client left (one per drain).
    pub drains: Arc<tokio::sync::Semaphore>,
}

impl Default for AiState {
    fn default() -> AiState {
        AiState {
            routes: IndexMap::new(),
            prices: Arc::default(),
            budgets: Arc::from([]),
            provider_tools: Arc::from([]),
            drains: Arc::new(tokio::sync::Semaphore::new(
                crate::config::ai::DEFAULT_MAX_DRAINING,
            )),
        }
    }
}

impl AiState {
    /// The price for an answer from `answered` (the model the provider says answered),
    /// else the route's model, else the alias.
    pub fn price(&self, answered: Option<&str>, route: &Route) -> Option<Price> {
        answered
            .and_then(|m| self.prices.get(m))
            .or_else(|| self.prices.get(&route.model))
            .or_else(|| self.prices.get(&route.alias))
            .copied()
    }
}

/// The AI gateway.
pub struct Ai {
    kinds: OnceLock<ProviderKinds>,
    pub(crate) state: ArcSwap<AiState>,
    keys: KeyCache,
    http: reqwest::Client,
    audit: Audit,
    pool: Pool,
    secrets: SecretStore,
    /// The tasks that write rows and drain streams after their request's future is gone;
    /// shutdown waits for them before the audit writer stops.
    tasks: tokio_util::task::TaskTracker,
    /// Cancelled at shutdown: no new drains, running ones stop with what they read.
    closing: tokio_util::sync::CancellationToken,
}

impl Ai {
    /// An AI gateway with nothing configured; [`Ai::start`] adds the provider kinds and
    /// the profile's section.
    pub fn new(pool: Pool, secrets: SecretStore, audit: Audit) -> Ai {
        let http = warden_actors::upstream::http::client_builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            // Building fails only when the TLS backend cannot initialise; the default
            // client then fails each request with that error instead.
            .unwrap_or_default();
        Ai {
            kinds: OnceLock::new(),
            state: ArcSwap::from_pointee(AiState::default()),
            keys: KeyCache::default(),
            http,
            audit,
            pool,
            secrets,
            tasks: tokio_util::task::TaskTracker::new(),
            closing: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// At the start of shutdown: no stream starts being read on for its usage any more
    /// (the ones the server's grace cuts off record what was relayed), and running
    /// drains stop, recording what they read.
    pub fn stop_draining(&self) {
        self.closing.cancel();
    }

    /// At shutdown, once no request is served any more: waits, at most `grace`, for every
    /// row still being written (after [`Ai::stop_draining`]).
    pub async fn finish_tasks(&self, grace: Duration) {
        self.stop_draining();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.tasks.len(),
                "model requests were still being recorded when the shutdown grace ran out"
            );
        }
    }

    /// Registers the provider kinds (once) and applies `config`'s `ai:` section.
    pub fn start(&self, kinds: ProviderKinds, config: &Config) -> Result<(), SetupError> {
        let _ = self.kinds.set(kinds);
        let state = self.prepare(config)?;
        self.install(state);
        Ok(())
    }

    /// Builds the state `config` describes without applying it (a reload checks every
    /// part of a new profile before applying any).
    pub fn prepare(&self, config: &Config) -> Result<AiState, SetupError> {
        let kinds = self.kinds.get().ok_or(SetupError::NotStarted)?;
        prepare(kinds, &config.ai)
    }

    /// Applies a prepared state; keys are read again under the new settings.
    pub fn install(&self, state: AiState) {
        self.state.store(Arc::new(state));
        self.keys.clear();
    }

    /// Called when a secret changed (in any process): keys read from it are read again.
    pub fn secret_changed(&self, secret: &str) {
        self.keys.forget_secret(secret);
    }

    /// Called when the change listener reconnected (a change may have been missed).
    pub fn forget_keys(&self) {
        self.keys.clear();
    }

    /// The aliases `principal` may use, with their provider, in profile order.
    pub fn models_for(
        &self,
        policy: &PolicyEngine,
        principal: &Principal,
    ) -> Vec<(String, String)> {
        self.state
            .load()
            .routes
            .values()
            .filter(|route| {
                policy
                    .check(
                        principal,
                        &Permission::UseModel {
                            model: &route.alias,
                        },
                    )
                    .is_ok()
            })
            .map(|route| (route.alias.clone(), route.provider_name.clone()))
            .collect()
    }
}

/// Checks the profile's providers against the registered kinds (`warden config check`
/// runs this too).
pub fn prepare(kinds: &ProviderKinds, ai: &AiConfig) -> Result<AiState, SetupError> {
    let mut providers: HashMap<&str, Arc<dyn Provider>> = HashMap::new();
    for (name, settings) in &ai.providers {
        let factory = kinds.get(&settings.kind).ok_or_else(|| {
            let mut known: Vec<&str> = kinds.keys().map(String::as_str).collect();
            known.sort_unstable();
            SetupError::Invalid {
                path: format!("ai.providers.{name}.kind"),
                message: format!(
                    "unknown provider kind `{}`; expected one of {}",
                    settings.kind,
                    known.join(", ")
                ),
            }
        })?;
        let provider = factory(settings).map_err(|message| SetupError::Invalid {
            path: format!("ai.providers.{name}"),
            message,
        })?;
        provider::check_responses_setting(settings, provider.as_ref()).map_err(|message| {
            SetupError::Invalid {
                path: format!("ai.providers.{name}.responses"),
                message,
            }
        })?;
        providers.insert(name.as_str(), provider);
    }
    let mut routes = IndexMap::new();
    for (alias, route) in &ai.models {
        let (Some(provider), Some(settings)) = (
            providers.get(route.provider.as_str()),
            ai.providers.get(&route.provider),
        ) else {
            return Err(SetupError::Invalid {
                path: format!("ai.models.{alias}.provider"),
                message: format!("no provider named `{}`", route.provider),
            });
        };
        routes.insert(
            alias.clone(),
            Arc::new(Route {
                alias: alias.clone(),
                model: route.model.clone(),
                default_max_tokens: route.default_max_tokens,
                provider_name: route.provider.clone(),
                provider: provider.clone(),
                settings: settings.clone(),
            }),
        );
    }
    Ok(AiState {
        routes,
        prices: Arc::new(ai.prices.clone()),
        budgets: ai.budgets.clone().into(),
        provider_tools: ai.provider_tools.clone().into(),
        drains: Arc::new(tokio::sync::Semaphore::new(ai.max_draining_streams)),
    })
}
