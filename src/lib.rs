//! Warden: an AI governance control plane in one binary.
//!
//! Platform teams put Warden between AI clients and the tools and models they use. Every
//! MCP tool call and model request passes one permission check, one rate limiter and the
//! lifecycle hooks, and lands as a row in the operator's PostgreSQL with the identity and
//! trace that authorised it.
//!
//! The library is organised by concern (see `docs/architecture.md`): `config` reads the
//! profile, `db` owns PostgreSQL, `http` the one listener, `secrets` the master key and
//! redaction, `audit` the trail's read side, `ai` the AI gateway (providers, translation,
//! costs, budgets), `extension` the registries everything is assembled from; the supervision
//! tree lives in the `warden-actors` crate. Data flows one way: `http` → `policy` →
//! actors; nothing below `http` imports it.

pub mod ai;
pub mod app;
pub mod audit;
pub mod auth;
pub mod builtin;
pub mod cli;
pub mod config;
pub mod db;
pub mod export;
pub mod extension;
pub mod gateway;
pub mod http;
pub mod policy;
pub mod secrets;
pub mod skills;
pub mod systemd;

/// Version, git revision and build profile, as `warden version` prints them.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_REVISION: &str = env!("WARDEN_GIT_REVISION");
pub const BUILD_PROFILE: &str = env!("WARDEN_BUILD_PROFILE");

/// The built-in contributions, registered like any extension's.
pub(crate) fn builtins() -> impl extension::Extension {
    Builtins
}

struct Builtins;

impl extension::Extension for Builtins {
    fn name(&self) -> &'static str {
        "warden"
    }

    fn register(&self, registry: &mut extension::Registry) {
        registry.migrations(db::migrate::builtin());
        registry.routes("warden", http::health::routes);
        registry.routes("warden", http::metrics::routes);
        registry.routes("warden", http::admin::routes);
        registry.routes("warden", http::mcp::routes);
        registry.routes("warden", http::audit::routes);
        registry.jobs("warden", audit::retention::job);
        registry.routes("warden", http::wellknown::routes);
        registry.routes("warden", http::oauth::routes);
        registry.routes("warden", http::account::routes);
        registry.routes("warden", http::hooks::routes);
        registry.routes("warden", http::ai::routes);
        registry.routes("warden", http::skills::routes);
        ai::provider::register_builtins(registry);
    }
}
