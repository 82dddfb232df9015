//! The MCP gateway's logic, independent of HTTP: naming and routing (`routes`), tool
//! pinning (`pins`), client sessions (`session`), and [`Gateway`], which takes one
//! authorised client request to the upstream that owns it.
//!
//! The order of a `tools/call` is fixed and every step is visible in [`Gateway::call_tool`]:
//! route → **the permission check** (its decision audited, allow or deny) → the server's
//! instance (per-user instances start here) → the concurrency bound → the upstream call
//! with its deadline → the `mcp_tool_executions` row. A call that is refused at any step
//! still leaves its row.

pub mod actor;
pub mod pins;
pub mod routes;
pub mod session;
pub mod subscriptions;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use metrics::SharedString;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warden_actors::audit::{
    Audit, AuditEvent, AuditRecord, AuditRefused, ToolCallRecord, ToolStatus,
};
use warden_actors::directory::{Directory, Instance, LimitError, ServerEntry, ServerStatus};
use warden_actors::jsonrpc::{RpcError, code};
use warden_actors::spec::Isolation;
use warden_actors::trace::TraceContext;
use warden_actors::tree::Tree;
use warden_actors::upstream::{CallError, CallOptions, UpcallSink};

use crate::auth::Principal;
use crate::config::Config;
use crate::policy::hooks::{HookContext, HookEvent, HookReport, Hooks};
use crate::policy::limits::{RateLimited, RateLimiter, Surface};
use crate::policy::quotas::{self, QuotaError, QuotaRule, QuotaSubject};
use crate::policy::{Denial, Permission, PolicyEngine};
use pins::Pins;
use routes::RouteTable;
use session::{Session, SessionManager};
use subscriptions::{Resource, Subscriptions, TooMany};

/// The lists a client can be told changed (`notifications/{kind}/list_changed`).
pub const LIST_KINDS: [&str; 3] = ["tools", "resources", "prompts"];

/// Who is asking, on whose behalf, and where upcalls go.
pub struct CallContext {
    pub principal: Arc<Principal>,
    pub session: Option<Arc<Session>>,
    pub trace: TraceContext,
    /// `Some(server)` on `/mcp/{server}`: names are the upstream's own.
    pub scope: Option<Arc<str>>,
    pub sink: Option<UpcallSink>,
    pub cancel: CancellationToken,
}

impl CallContext {
    /// A request that hears nothing from the upstream while it runs and that nothing
    /// but its own end cancels: subscriptions, hooks around sessions and events.
    pub fn without_stream(
        principal: Arc<Principal>,
        session: Option<Arc<Session>>,
        trace: TraceContext,
        scope: Option<Arc<str>>,
    ) -> CallContext {
        CallContext {
            principal,
            session,
            trace,
            scope,
            sink: None,
            cancel: CancellationToken::new(),
        }
    }

    fn session_id(&self) -> Option<String> {
        self.session.as_ref().map(|s| s.id.clone())
    }

    /// Whom a stdio upstream's upcalls during this call may go to: the client session,
    /// or for a stateless request that can hear them, the request itself (a key no other
    /// call of this process shares).
    fn attribution(&self) -> Option<Arc<str>> {
        static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);
        match (&self.session, &self.sink) {
            (Some(session), _) => Some(Arc::from(session.id.as_str())),
            (None, Some(_)) => {
                let n = NEXT_REQUEST.fetch_add(1, Ordering::Relaxed);
                Some(Arc::from(format!("request-{n}")))
            }
            (None, None) => None,
        }
    }
}

/// Every rule a governed call passes, as one consistent snapshot of the profile.
#[derive(Clone)]
pub struct Rules {
    pub policy: Arc<PolicyEngine>,
    pub limits: Arc<RateLimiter>,
    pub hooks: Arc<Hooks>,
    pub quotas: Arc<Vec<QuotaRule>>,
}

/// Why a request did not reach (or come back from) its upstream. The HTTP layer maps
/// each to a JSON-RPC error; the messages name the server and the limit involved.
#[derive(Debug, Error)]
pub enum GatewayError {
    #[error("unknown tool `{0}`")]
    UnknownTool(String),
    #[error("unknown prompt `{0}`")]
    UnknownPrompt(String),
    #[error("no server offers resource `{0}`")]
    UnknownResource(String),
    #[error("no server named `{0}`")]
    UnknownServer(String),
    #[error("invalid params: {0}")]
    InvalidParams(String),
    #[error("server `{server}` is not ready (state: {state})")]
    NotReady {
        server: String,
        state: String,
        detail: Option<String>,
    },
    #[error(
        "server `{server}` is at its limit of {max_concurrent} concurrent calls with {max_queued} queued \
         (max_concurrent_calls / max_queued_calls); try again shortly"
    )]
    Overloaded {
        server: String,
        max_concurrent: usize,
        max_queued: usize,
    },
    #[error(
        "server `{server}` did not answer `{method}` within {after:?} (call_timeout); the call was cancelled"
    )]
    Timeout {
        server: String,
        method: String,
        after: Duration,
    },
    #[error("the request was cancelled")]
    Cancelled,
    #[error("permission denied: {0}")]
    Denied(Denial),
    #[error(
        "tool `{tool}` of server `{server}` changed its definition since it was approved; \
         it is withheld until an operator approves the change"
    )]
    Withheld { server: String, tool: String },
    #[error("{0}")]
    Upstream(RpcError),
    #[error("server `{server}` stopped answering during the call: {reason}")]
    Lost { server: String, reason: String },
    #[error("{0}")]
    Audit(AuditRefused),
    #[error("{0}")]
    RateLimited(RateLimited),
    #[error("{0}")]
    Quota(QuotaError),
    #[error("blocked by hook `{hook}`: {reason}")]
    HookDenied { hook: String, reason: String },
}

impl GatewayError {
    /// The JSON-RPC error a client receives.
    pub fn to_rpc(&self) -> RpcError {
        match self {
            GatewayError::UnknownTool(_)
            | GatewayError::UnknownPrompt(_)
            | GatewayError::UnknownServer(_)
            | GatewayError::InvalidParams(_) => RpcError::new(code::INVALID_PARAMS, self.to_string()),
            GatewayError::UnknownResource(uri) => {
                RpcError::new(-32002, self.to_string()).with_data(json!({ "uri": uri }))
            }
            GatewayError::NotReady { server, state, detail } => RpcError::new(code::SERVER_UNAVAILABLE, self.to_string())
                .with_data(json!({"server": server, "state": state, "last_error": detail})),
            GatewayError::Overloaded {
                server,
                max_concurrent,
                max_queued,
            } => RpcError::new(code::SERVER_UNAVAILABLE, self.to_string()).with_data(
                json!({"server": server, "max_concurrent_calls": max_concurrent, "max_queued_calls": max_queued}),
            ),
            GatewayError::Timeout { server, after, .. } => RpcError::new(code::TIMEOUT, self.to_string())
                .with_data(json!({"server": server, "timeout_ms": after.as_millis() as u64})),
            GatewayError::Cancelled => RpcError::new(code::CANCELLED, self.to_string()),
            GatewayError::Denied(_) => RpcError::new(code::FORBIDDEN, self.to_string()),
            GatewayError::Withheld { server, tool } => {
                RpcError::new(code::FORBIDDEN, self.to_string()).with_data(json!({"server": server, "tool": tool}))
            }
            GatewayError::Upstream(error) => error.clone(),
            GatewayError::Lost { server, .. } => {
                RpcError::new(code::SERVER_UNAVAILABLE, self.to_string()).with_data(json!({ "server": server }))
            }
            GatewayError::Audit(_) => RpcError::new(code::AUDIT_UNAVAILABLE, self.to_string()),
            GatewayError::RateLimited(limited) => RpcError::new(code::RATE_LIMITED, self.to_string()).with_data(json!({
                "scope": limited.scope,
                "limit": limited.limit,
                "tier": limited.tier,
                "retry_after_ms": limited.retry_after.as_millis() as u64,
                "retry_after_secs": limited.retry_after_secs(),
            })),
            GatewayError::Quota(QuotaError::Exhausted { rule, retry_after, .. }) => {
                RpcError::new(code::RATE_LIMITED, self.to_string())
                    .with_data(json!({"quota": rule, "retry_after_secs": retry_after.as_secs().max(1)}))
            }
            GatewayError::Quota(QuotaError::Unavailable { .. }) => RpcError::new(code::SERVER_UNAVAILABLE, self.to_string()),
            GatewayError::HookDenied { hook, .. } => {
                RpcError::new(code::HOOK_DENIED, self.to_string()).with_data(json!({ "hook": hook }))
            }
        }
    }

    fn status(&self) -> ToolStatus {
        match self {
            GatewayError::Denied(_)
            | GatewayError::Withheld { .. }
            | GatewayError::HookDenied { .. } => ToolStatus::Denied,
            GatewayError::RateLimited(_) | GatewayError::Quota(QuotaError::Exhausted { .. }) => {
                ToolStatus::RateLimited
            }
            GatewayError::Timeout { .. } => ToolStatus::Timeout,
            GatewayError::Cancelled => ToolStatus::Cancelled,
            _ => ToolStatus::Error,
        }
    }
}

/// What a 2026-07-28 `subscriptions/listen` stream asked to hear about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenFilter {
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
}

impl ListenFilter {
    /// Whether the stream asked for `notifications/{kind}/list_changed`.
    fn wants(&self, kind: &str) -> bool {
        match kind {
            "tools" => self.tools,
            "prompts" => self.prompts,
            "resources" => self.resources,
            _ => false,
        }
    }
}

/// What a call is counted under in the metrics: its server and tool once resolved, and
/// only a tool the upstream listed. A name a client made up is never a label, or any
/// string it sends would make a new series: a call refused before its tool was resolved
/// has both empty, and one for a tool its server did not list (the per-server route
/// passes such names on) has an empty `tool`.
#[derive(Default)]
struct CallLabels {
    server: Option<Arc<str>>,
    tool: Option<String>,
}

impl CallLabels {
    fn of(target: &Target) -> CallLabels {
        CallLabels {
            server: Some(target.server.clone()),
            tool: target.listed.then(|| target.upstream.clone()),
        }
    }
}

/// A finished call in the metrics: `warden_mcp_tool_calls_total{server,tool,status}` and
/// `warden_mcp_tool_call_seconds{server}`. The server's name is shared, not copied: this
/// runs for every call.
fn count_call(labels: CallLabels, row: &ToolCallRecord) {
    let server = labels
        .server
        .map_or(SharedString::const_str(""), SharedString::from);
    let tool = labels
        .tool
        .map_or(SharedString::const_str(""), SharedString::from);
    metrics::counter!("warden_mcp_tool_calls_total", "server" => server.clone(),
        "tool" => tool, "status" => row.status.as_str())
    .increment(1);
    metrics::histogram!("warden_mcp_tool_call_seconds", "server" => server)
        .record(row.duration_us as f64 / 1e6);
}

/// `notifications/{kind}/list_changed` as a session hears it.
fn list_changed(kind: &str) -> Arc<str> {
    let notification =
        json!({"jsonrpc": "2.0", "method": format!("notifications/{kind}/list_changed")});
    Arc::from(notification.to_string())
}

/// `notifications/{kind}/list_changed` as a listen stream hears it: naming its
/// subscription. Whether the stream is still open.
fn tell_listener(listener: &Listener, kind: &str) -> bool {
    let notification = json!({
        "jsonrpc": "2.0",
        "method": format!("notifications/{kind}/list_changed"),
        "params": {"_meta": {"io.modelcontextprotocol/subscriptionId": listener.id}},
    });
    !matches!(
        listener
            .sender
            .try_send(Arc::from(notification.to_string())),
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_))
    )
}

/// One open `subscriptions/listen` stream.
pub struct Listener {
    /// The JSON-RPC id of the request that opened it (the subscription id).
    pub id: Value,
    pub principal: Arc<Principal>,
    pub scope: Option<Arc<str>>,
    pub filter: ListenFilter,
    pub sender: tokio::sync::mpsc::Sender<Arc<str>>,
    /// Its key in [`Gateway::subscriptions`] when it asked for resources' updates.
    pub subscriber: Option<String>,
}

/// The gateway: routing table, pins and sessions over the supervision tree.
pub struct Gateway {
    pub directory: Arc<Directory>,
    tree: Tree,
    routes: ArcSwap<RouteTable>,
    rebuild: std::sync::Mutex<()>,
    pub pins: Arc<Pins>,
    pub sessions: SessionManager,
    pub audit: Audit,
    /// Open `subscriptions/listen` streams (stateless clients' change notifications).
    listeners: std::sync::Mutex<Vec<Listener>>,
    /// Client sessions' resource subscriptions, and so Warden's own at the upstreams.
    pub subscriptions: Arc<Subscriptions>,
    /// Per server, when its shared instance had become ready the last time Warden
    /// renewed its subscriptions there ([`Gateway::renew_subscriptions`]): a later time
    /// means an instance whose subscriptions are owed.
    renewed: std::sync::Mutex<HashMap<String, Option<Instant>>>,
    /// Cancelled when Warden shuts down; listen streams then end gracefully.
    pub closing: CancellationToken,
    /// For quota counters.
    pool: deadpool_postgres::Pool,
    /// For webhook hooks.
    http: reqwest::Client,
    /// The current skills, served as prompts on `/mcp` (loaded by `warden serve`).
    pub skills: Arc<crate::skills::catalog::SkillCatalog>,
}

/// A resolved tool: where it goes and what the permission check needs to know.
/// The annotations an unlisted tool is checked with: nothing says what it does.
static UNLISTED_TOOL: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(|| json!({"destructiveHint": true}));

struct Target {
    server: Arc<str>,
    upstream: String,
    annotations: Option<Value>,
    withheld: bool,
    /// The upstream listed the tool (on the per-server route a client may name any).
    listed: bool,
}

impl Gateway {
    pub fn new(
        tree: Tree,
        pins: Arc<Pins>,
        sessions: SessionManager,
        audit: Audit,
        pool: deadpool_postgres::Pool,
    ) -> Gateway {
        Gateway {
            directory: tree.directory.clone(),
            tree,
            routes: ArcSwap::from_pointee(RouteTable {
                built_for: (u64::MAX, u64::MAX, u64::MAX),
                ..RouteTable::default()
            }),
            rebuild: std::sync::Mutex::new(()),
            pins,
            sessions,
            audit,
            listeners: std::sync::Mutex::new(Vec::new()),
            closing: CancellationToken::new(),
            subscriptions: Arc::default(),
            renewed: std::sync::Mutex::default(),
            pool,
            http: warden_actors::upstream::http::client_builder()
                .connect_timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            skills: Arc::default(),
        }
    }

    /// The skills changed: every client of the aggregate endpoint (where they are
    /// prompts) hears that its prompt list may have. The notification names no skill.
    pub fn announce_skills_changed(&self) {
        self.sessions
            .broadcast(list_changed("prompts"), |session| session.scope.is_none());
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners.retain(|listener| {
            if listener.scope.is_some() || !listener.filter.wants("prompts") {
                return !listener.sender.is_closed();
            }
            tell_listener(listener, "prompts")
        });
    }

    /// The skills `principal` may read, as prompts of the aggregate endpoint.
    fn skill_prompts(
        &self,
        config: &Config,
        policy: &PolicyEngine,
        principal: &Principal,
    ) -> Vec<Value> {
        let separator = &config.gateway.separator;
        self.skills
            .all()
            .iter()
            .filter(|skill| crate::skills::may_read(policy, principal, &skill.info).is_ok())
            .map(|skill| {
                json!({
                    "name": format!("{}{separator}{}", crate::config::SKILL_PROMPT_PREFIX, skill.info.name),
                    "title": skill.info.name,
                    "description": skill.info.description,
                })
            })
            .collect()
    }

    /// The skill a prompt name of the aggregate endpoint names, if it names one.
    fn skill_named(
        &self,
        config: &Config,
        prompt: &str,
    ) -> Option<Arc<crate::skills::catalog::CatalogEntry>> {
        let name = prompt
            .strip_prefix(crate::config::SKILL_PROMPT_PREFIX)?
            .strip_prefix(config.gateway.separator.as_str())?;
        self.skills.get(name)
    }

    /// `prompts/get` of a skill's prompt: its `SKILL.md` as one user message. One the
    /// caller may not read is an unknown prompt, as one that does not exist.
    async fn get_skill_prompt(
        &self,
        policy: &PolicyEngine,
        ctx: &CallContext,
        requested: &str,
        skill: &crate::skills::catalog::CatalogEntry,
    ) -> Result<Box<RawValue>, GatewayError> {
        let unknown = || GatewayError::UnknownPrompt(requested.to_owned());
        let decision = crate::skills::may_read(policy, &ctx.principal, &skill.info);
        let subject = format!("skill/{}", skill.info.name);
        let mut event = decision_event(ctx, &subject, "prompts/get", &decision);
        event.attributes["version"] = json!(skill.info.version);
        self.record_event(event).await?;
        decision.map_err(|_| unknown())?;
        let result = json!({
            "description": skill.info.description,
            "messages": [{
                "role": "user",
                "content": { "type": "text", "text": skill.content },
            }],
            "_meta": { "warden/skillVersion": skill.info.version, "warden/skillSha256": skill.info.sha256 },
        });
        // A `Value` always serialises (its keys are strings); the error is never built.
        serde_json::value::to_raw_value(&result)
            .map_err(|e| GatewayError::InvalidParams(e.to_string()))
    }

    /// Tells the sessions and listen streams that can see `server` that its list of
    /// `kind` (one of [`LIST_KINDS`]) changed.
    pub fn announce_list_changed(&self, policy: &PolicyEngine, server: &str, kind: &str) {
        self.notify_listeners(policy, server, kind);
        self.sessions.broadcast(list_changed(kind), |session| {
            session.scope.as_deref().is_none_or(|s| s == server)
                && policy
                    .check(&session.principal, &Permission::List { server })
                    .is_ok()
        });
    }

    /// The HTTP client webhook hooks use.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Registers a `subscriptions/listen` stream.
    pub fn add_listener(&self, listener: Listener) {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(listener);
    }

    /// Sends `notifications/{kind}/list_changed` about `server` to every listen stream
    /// that asked for it and may see the server (closed streams are dropped).
    pub fn notify_listeners(&self, policy: &PolicyEngine, server: &str, kind: &str) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners.retain(|listener| {
            let visible = listener.scope.as_deref().is_none_or(|s| s == server)
                && policy
                    .check(&listener.principal, &Permission::List { server })
                    .is_ok();
            if !(listener.filter.wants(kind) && visible) {
                return !listener.sender.is_closed();
            }
            tell_listener(listener, kind)
        });
    }

    /// After a gap in the lifecycle events: every session and listen stream hears once
    /// per kind it follows that its lists may have changed. The notification names no
    /// server, so nobody learns of one it may not list.
    fn announce_every_list_changed(&self) {
        for kind in LIST_KINDS {
            self.sessions.broadcast(list_changed(kind), |_| true);
        }
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners.retain(|listener| {
            LIST_KINDS
                .iter()
                .filter(|kind| listener.filter.wants(kind))
                .all(|kind| tell_listener(listener, kind))
                && !listener.sender.is_closed()
        });
    }

    /// The current routing table, rebuilt first if a catalog, a pin or the profile
    /// changed. (The profile's generation is part of the key, so a request still holding
    /// the profile a reload replaced cannot leave a table of the old naming behind as
    /// if it were current.)
    pub fn routes(&self, config: &Config) -> Arc<RouteTable> {
        let wanted = (
            self.directory.version(),
            self.pins.generation(),
            config.generation,
        );
        let current = self.routes.load_full();
        if current.built_for == wanted {
            return current;
        }
        let _one_builder = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.routes.load_full();
        if current.built_for == wanted {
            return current;
        }
        let table = Arc::new(RouteTable::build(&self.directory, config, &self.pins));
        self.routes.store(table.clone());
        table
    }

    // -----------------------------------------------------------------------------------
    // Listing
    // -----------------------------------------------------------------------------------

    /// The tools `ctx.principal` may call, as the client should see them.
    pub async fn list_tools(
        &self,
        config: &Config,
        policy: &PolicyEngine,
        ctx: &CallContext,
    ) -> Result<Vec<Value>, GatewayError> {
        match &ctx.scope {
            Some(server) => {
                let instance = self.instance(ctx, server).await?;
                let catalog = instance.catalog();
                let pin_tools = config.naming.get(&**server).is_none_or(|n| n.pin_tools);
                Ok(catalog
                    .tools
                    .iter()
                    .filter(|tool| {
                        let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
                        let allowed = policy
                            .check(
                                &ctx.principal,
                                &Permission::CallTool {
                                    server,
                                    tool: name,
                                    annotations: tool.get("annotations"),
                                },
                            )
                            .is_ok();
                        allowed
                            && !(pin_tools
                                && self.pins.check(server, name, tool) == pins::PinCheck::Changed)
                    })
                    .cloned()
                    .collect())
            }
            None => {
                let unstarted = self.unstarted_user_instances(policy, ctx);
                self.start_user_instances(unstarted, ctx).await;
                let table = self.routes(config);
                Ok(table
                    .tool_order
                    .iter()
                    .filter_map(|name| table.tools.get(name))
                    .filter(|route| !route.withheld)
                    .filter(|route| {
                        policy
                            .check(
                                &ctx.principal,
                                &Permission::CallTool {
                                    server: &route.server,
                                    tool: &route.upstream,
                                    annotations: route.annotations(),
                                },
                            )
                            .is_ok()
                    })
                    .map(|route| (*route.definition).clone())
                    .collect())
            }
        }
    }

    /// The per-user servers the caller may list that have no instance for them yet.
    /// (One the caller may not use is never started for them: it would run a process
    /// under their identity, with their secrets, for nothing they may call.)
    fn unstarted_user_instances(
        &self,
        policy: &PolicyEngine,
        ctx: &CallContext,
    ) -> Vec<Arc<ServerEntry>> {
        self.directory
            .all()
            .iter()
            .filter(|entry| {
                matches!(entry.spec().isolation, Isolation::PerUser { .. })
                    && entry.user_instance(ctx.principal.user_id()).is_none()
                    && policy
                        .check(
                            &ctx.principal,
                            &Permission::List {
                                server: &entry.name,
                            },
                        )
                        .is_ok()
            })
            .cloned()
            .collect()
    }

    /// Per-user servers list the user's own instance: start it so its tools appear.
    async fn start_user_instances(&self, unstarted: Vec<Arc<ServerEntry>>, ctx: &CallContext) {
        for entry in unstarted {
            if let Ok(instance) = self
                .tree
                .instance_for(&entry.name, ctx.principal.user_id())
                .await
            {
                let _ = instance.wait_ready(entry.spec().startup_timeout).await;
            }
        }
    }

    pub async fn list_prompts(
        &self,
        config: &Config,
        policy: &PolicyEngine,
        ctx: &CallContext,
    ) -> Result<Vec<Value>, GatewayError> {
        let allowed = |server: &str, prompt: &str| {
            policy
                .check(&ctx.principal, &Permission::GetPrompt { server, prompt })
                .is_ok()
        };
        match &ctx.scope {
            Some(server) => {
                let catalog = self.instance(ctx, server).await?.catalog();
                Ok(catalog
                    .prompts
                    .iter()
                    .filter(|p| {
                        allowed(
                            server,
                            p.get("name").and_then(Value::as_str).unwrap_or_default(),
                        )
                    })
                    .cloned()
                    .collect())
            }
            None => {
                let table = self.routes(config);
                let mut prompts: Vec<Value> = table
                    .prompt_order
                    .iter()
                    .filter_map(|name| table.prompts.get(name))
                    .filter(|route| allowed(&route.server, &route.upstream))
                    .map(|route| (*route.definition).clone())
                    .collect();
                prompts.extend(self.skill_prompts(config, policy, &ctx.principal));
                Ok(prompts)
            }
        }
    }

    /// Resources (`templates: false`) or resource templates (`true`) visible to the caller.
    pub async fn list_resources(
        &self,
        config: &Config,
        policy: &PolicyEngine,
        ctx: &CallContext,
        templates: bool,
    ) -> Result<Vec<Value>, GatewayError> {
        let allowed = |server: &str| {
            policy
                .check(&ctx.principal, &Permission::List { server })
                .is_ok()
        };
        match &ctx.scope {
            Some(server) => {
                if !allowed(server) {
                    return Ok(Vec::new());
                }
                let catalog = self.instance(ctx, server).await?.catalog();
                Ok(if templates {
                    catalog.resource_templates.clone()
                } else {
                    catalog.resources.clone()
                })
            }
            None => {
                let table = self.routes(config);
                let list = if templates {
                    &table.template_list
                } else {
                    &table.resource_list
                };
                Ok(list
                    .iter()
                    .filter(|(server, _)| allowed(server))
                    .map(|(_, item)| item.clone())
                    .collect())
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // tools/call
    // -----------------------------------------------------------------------------------

    /// Calls a tool. Leaves one `mcp_tool_executions` row for every `tools/call` request
    /// — a malformed one (`name` not a string, `arguments` not an object) too, with its
    /// error and whatever it sent as the name — and one `permission.decision` event
    /// once the tool is known.
    pub async fn call_tool(
        &self,
        config: &Config,
        rules: &Rules,
        ctx: &CallContext,
        mut params: Map<String, Value>,
    ) -> Result<Box<RawValue>, GatewayError> {
        let started_at = SystemTime::now();
        let clock = Instant::now();
        let (requested, mut malformed) = match params.get("name") {
            Some(Value::String(name)) => (name.clone(), None),
            other => (
                other.map(Value::to_string).unwrap_or_default(),
                Some("`name` must be a string naming the tool"),
            ),
        };
        let arguments = params.get("arguments").cloned();
        if arguments.as_ref().is_some_and(|a| !a.is_object()) {
            malformed = malformed.or(Some("`arguments` must be an object"));
        }
        let mut row = ToolCallRecord {
            id: Uuid::now_v7(),
            trace_id: ctx.trace.trace_id_hex(),
            session_id: ctx.session_id(),
            user_id: Some(ctx.principal.user_id().to_owned()),
            client_id: ctx.principal.client_id.clone(),
            server_name: String::new(),
            tool_name: String::new(),
            requested_name: requested.clone(),
            input: arguments
                .as_ref()
                .and_then(|a| serde_json::value::to_raw_value(a).ok()),
            output: None,
            status: ToolStatus::Error,
            error: None,
            started_at,
            completed_at: started_at,
            duration_us: 0,
        };
        let mut labels = CallLabels::default();
        let resolved = match malformed {
            Some(message) => Err(GatewayError::InvalidParams(message.into())),
            None => {
                self.resolve_tool((config, &rules.policy), ctx, &requested)
                    .await
            }
        };
        let outcome = match resolved {
            Ok(target) => {
                row.server_name = target.server.to_string();
                row.tool_name = target.upstream.clone();
                labels = CallLabels::of(&target);
                self.call_tool_inner(config, rules, ctx, target, &mut params, &mut row)
                    .await
            }
            Err(error) => Err(error),
        };
        row.completed_at = SystemTime::now();
        row.duration_us = clock.elapsed().as_micros() as i64;
        match &outcome {
            Ok(result) => {
                row.status = if result_is_error(result) {
                    ToolStatus::Error
                } else {
                    ToolStatus::Success
                };
                row.output = Some(result.clone());
            }
            Err(error) => {
                row.status = error.status();
                row.error = Some(error.to_string());
            }
        }
        count_call(labels, &row);
        // `record_completed`: the call was admitted and ran, so its row is kept even while
        // the trail refuses new calls (audit work, docs/audit.md).
        if let Err(refused) = self
            .audit
            .record_completed(AuditRecord::ToolCall(Box::new(row)))
            .await
        {
            // The call already happened; the refusal is logged loudly (the trail's own
            // metrics count it) and the client still gets its answer.
            tracing::error!(error = %refused, "the tool call's audit row was refused");
        }
        outcome
    }

    async fn call_tool_inner(
        &self,
        config: &Config,
        rules: &Rules,
        ctx: &CallContext,
        target: Target,
        params: &mut Map<String, Value>,
        row: &mut ToolCallRecord,
    ) -> Result<Box<RawValue>, GatewayError> {
        let decision = rules.policy.check(
            &ctx.principal,
            &Permission::CallTool {
                server: &target.server,
                tool: &target.upstream,
                annotations: target.annotations.as_ref(),
            },
        );
        self.record_decision(
            ctx,
            &format!("{}/{}", target.server, target.upstream),
            "tools/call",
            &decision,
        )
        .await?;
        decision.map_err(GatewayError::Denied)?;
        if target.withheld {
            return Err(GatewayError::Withheld {
                server: target.server.to_string(),
                tool: target.upstream,
            });
        }
        self.limit(rules, ctx, &target).await?;
        let hook_ctx = |event| HookContext {
            event,
            server: Some(target.server.to_string()),
            tool: Some(target.upstream.clone()),
            exposed_tool: Some(row.requested_name.clone()),
            principal: ctx.principal.user_id().to_owned(),
            roles: ctx.principal.roles.clone(),
            scopes: ctx.principal.scopes.iter().map(str::to_owned).collect(),
            session_id: ctx.session_id(),
            trace_id: ctx.trace.trace_id_hex(),
        };
        if rules.hooks.any(HookEvent::PreToolUse) {
            let arguments = params
                .get("arguments")
                .cloned()
                .unwrap_or_else(|| json!({}));
            let verdict = rules
                .hooks
                .run(&hook_ctx(HookEvent::PreToolUse), &arguments, &self.http)
                .await;
            self.record_hooks(ctx, &verdict.reports, HookEvent::PreToolUse)
                .await;
            if let Some((hook, reason)) = verdict.denied {
                return Err(GatewayError::HookDenied { hook, reason });
            }
            if let Some(rewritten) = verdict.rewritten {
                row.input = serde_json::value::to_raw_value(&rewritten).ok();
                params.insert("arguments".into(), rewritten);
            }
        }
        params.insert("name".into(), Value::from(target.upstream.clone()));
        let entry = self.entry(&target.server)?;
        // `audit.ack: durable` (audit work, docs/audit.md): the call's "started" record is
        // durable — committed, or fsynced in the spool — before the tool is dispatched;
        // if the trail cannot make it durable the call is refused, not dispatched.
        if config.audit.ack == crate::config::AckMode::Durable {
            let mut started = AuditEvent::new("tool.started", ctx.principal.actor_kind());
            started.trace_id = Some(ctx.trace.trace_id_hex());
            started.actor_id = Some(ctx.principal.user_id().to_owned());
            started.subject = Some(format!("{}/{}", target.server, target.upstream));
            started.attributes = json!({
                "execution_id": row.id,
                "session_id": ctx.session.as_ref().map(|s| s.id.as_str()),
                "client_id": ctx.principal.client_id,
            });
            self.audit
                .record_durable(AuditRecord::Event(Box::new(started)))
                .await
                .map_err(GatewayError::Audit)?;
        }
        let spec = entry.spec();
        let timeout = spec
            .tools
            .get(&target.upstream)
            .and_then(|t| t.call_timeout)
            .unwrap_or(spec.call_timeout);
        let outcome = self
            .forward(
                ctx,
                &entry,
                "tools/call",
                Some(std::mem::take(params)),
                timeout,
            )
            .await;
        self.after_call(rules, outcome, &hook_ctx, ctx).await
    }

    /// Rate limits (surface, server, tool) and quotas; each refusal is an audit event.
    async fn limit(
        &self,
        rules: &Rules,
        ctx: &CallContext,
        target: &Target,
    ) -> Result<(), GatewayError> {
        let principal = &ctx.principal;
        let limited = rules
            .limits
            .check(
                Surface::Mcp,
                principal.user_id(),
                &principal.tier,
                Some(&target.server),
                Some(&target.upstream),
            )
            .map_err(GatewayError::RateLimited);
        let limited = match limited {
            Err(error) => Err(error),
            Ok(()) => {
                let who = QuotaSubject {
                    subject: principal.user_id(),
                    roles: &principal.roles,
                    scopes: principal.scopes.iter().collect(),
                    server: &target.server,
                    tool: &target.upstream,
                };
                if quotas::any_rule_for(&rules.quotas, &who) {
                    quotas::consume(&self.pool, &rules.quotas, &who)
                        .await
                        .map_err(GatewayError::Quota)
                } else {
                    Ok(())
                }
            }
        };
        if let Err(error) = &limited
            && matches!(
                error,
                GatewayError::RateLimited(_) | GatewayError::Quota(QuotaError::Exhausted { .. })
            )
        {
            let subject = format!("{}/{}", target.server, target.upstream);
            let mut event =
                crate::policy::rate_limited_event(principal, &subject, error.to_string());
            event.trace_id = Some(ctx.trace.trace_id_hex());
            event.attributes["error"] = json!(error.to_rpc().data);
            self.audit
                .record(AuditRecord::Event(Box::new(event)))
                .await
                .map_err(GatewayError::Audit)?;
        }
        limited
    }

    /// PostToolUseFailure (observes a failure), then PostToolUse on any result the client
    /// will read — an `isError` one too, whose content (a failed command's output) may
    /// hold what a hook withholds or redacts.
    async fn after_call(
        &self,
        rules: &Rules,
        outcome: Result<Box<RawValue>, GatewayError>,
        hook_ctx: &(dyn Fn(HookEvent) -> HookContext + Sync),
        ctx: &CallContext,
    ) -> Result<Box<RawValue>, GatewayError> {
        let failed = match &outcome {
            Ok(result) => result_is_error(result),
            Err(_) => true,
        };
        let observed = failed && rules.hooks.any(HookEvent::PostToolUseFailure);
        let rewritable = outcome.is_ok() && rules.hooks.any(HookEvent::PostToolUse);
        if !observed && !rewritable {
            return outcome;
        }
        // Parsed once for both events.
        let payload = match &outcome {
            Ok(result) => serde_json::from_str(result.get()).unwrap_or(Value::Null),
            Err(error) => json!({ "error": error.to_string() }),
        };
        if observed {
            let event = HookEvent::PostToolUseFailure;
            let verdict = rules
                .hooks
                .run(&hook_ctx(event), &payload, &self.http)
                .await;
            self.record_hooks(ctx, &verdict.reports, event).await;
        }
        if !rewritable {
            return outcome;
        }
        let event = HookEvent::PostToolUse;
        let verdict = rules
            .hooks
            .run(&hook_ctx(event), &payload, &self.http)
            .await;
        self.record_hooks(ctx, &verdict.reports, event).await;
        if let Some((hook, reason)) = verdict.denied {
            return Err(GatewayError::HookDenied { hook, reason });
        }
        match verdict.rewritten {
            Some(rewritten) => serde_json::value::to_raw_value(&rewritten).map_err(|e| {
                GatewayError::InvalidParams(format!("a hook produced an unusable result: {e}"))
            }),
            None => outcome,
        }
    }

    /// One `hook.outcome` audit event per hook that ran.
    pub async fn record_hooks(&self, ctx: &CallContext, reports: &[HookReport], event: HookEvent) {
        for report in reports {
            let mut audit = AuditEvent::new("hook.outcome", ctx.principal.actor_kind());
            audit.trace_id = Some(ctx.trace.trace_id_hex());
            audit.actor_id = Some(ctx.principal.user_id().to_owned());
            audit.subject = Some(report.hook.clone());
            audit.decision = match report.outcome {
                "deny" => Some("deny"),
                "error" => None,
                _ => Some("allow"),
            };
            audit.reason = report.reason.clone();
            audit.attributes = json!({
                "event": event.as_str(),
                "handler": report.handler,
                "outcome": report.outcome,
                "duration_us": report.duration_us,
            });
            if let Err(error) = self.audit.record(AuditRecord::Event(Box::new(audit))).await {
                tracing::error!(%error, hook = %report.hook, "recording a hook outcome failed");
            }
        }
    }

    async fn resolve_tool(
        &self,
        (config, policy): (&Config, &PolicyEngine),
        ctx: &CallContext,
        requested: &str,
    ) -> Result<Target, GatewayError> {
        match &ctx.scope {
            Some(server) => {
                let instance = self.instance(ctx, server).await?;
                let catalog = instance.catalog();
                let pin_tools = config.naming.get(&**server).is_none_or(|n| n.pin_tools);
                // The per-server route is transparent: a name the upstream did not list is
                // still passed on (after the permission check, by name) and the upstream
                // answers for it, as it would to a direct client.
                let listed = catalog.tool(requested);
                let (annotations, withheld) = match listed {
                    Some(tool) => (
                        tool.get("annotations").cloned(),
                        pin_tools
                            && self.pins.check(server, requested, tool) == pins::PinCheck::Changed,
                    ),
                    // Nothing says what an unlisted tool does: it is checked as one that
                    // may change things (the server's write scopes), never as a read.
                    None => (Some(UNLISTED_TOOL.clone()), false),
                };
                Ok(Target {
                    server: server.clone(),
                    upstream: requested.to_owned(),
                    annotations,
                    withheld,
                    listed: listed.is_some(),
                })
            }
            None => {
                let mut table = self.routes(config);
                if !table.tools.contains_key(requested) {
                    let unstarted = self.unstarted_user_instances(policy, ctx);
                    if !unstarted.is_empty() {
                        // A per-user server lists its tools once the caller's instance runs.
                        self.start_user_instances(unstarted, ctx).await;
                        table = self.routes(config);
                    }
                }
                let route = table
                    .tools
                    .get(requested)
                    .ok_or_else(|| GatewayError::UnknownTool(requested.to_owned()))?;
                Ok(Target {
                    server: route.server.clone(),
                    upstream: route.upstream.clone(),
                    annotations: route.annotations().cloned(),
                    withheld: route.withheld,
                    listed: true,
                })
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // resources and prompts
    // -----------------------------------------------------------------------------------

    pub async fn read_resource(
        &self,
        config: &Config,
        policy: &PolicyEngine,
        ctx: &CallContext,
        params: Map<String, Value>,
    ) -> Result<Box<RawValue>, GatewayError> {
        let Resource { server, uri } = self.resource_of(config, ctx, &params)?;
        let decision = policy.check(
            &ctx.principal,
            &Permission::ReadResource {
                server: &server,
                uri: &uri,
            },
        );
        self.record_decision(ctx, &format!("{server}/{uri}"), "resources/read", &decision)
            .await?;
        decision.map_err(GatewayError::Denied)?;
        let entry = self.entry(&server)?;
        let timeout = entry.spec().call_timeout;
        self.forward(ctx, &entry, "resources/read", Some(params), timeout)
            .await
    }

    pub async fn get_prompt(
        &self,
        config: &Config,
        policy: &PolicyEngine,
        ctx: &CallContext,
        mut params: Map<String, Value>,
    ) -> Result<Box<RawValue>, GatewayError> {
        let requested = params
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                GatewayError::InvalidParams("`name` must be a string naming the prompt".into())
            })?
            .to_owned();
        // No server's prompt is named like a skill's (`warden config check` sees to it),
        // so a name that is no skill's goes on to be an unknown prompt.
        if ctx.scope.is_none()
            && let Some(skill) = self.skill_named(config, &requested)
        {
            return self.get_skill_prompt(policy, ctx, &requested, &skill).await;
        }
        let (server, upstream) = match &ctx.scope {
            Some(server) => (server.clone(), requested.clone()),
            None => {
                let table = self.routes(config);
                let route = table
                    .prompts
                    .get(&requested)
                    .ok_or_else(|| GatewayError::UnknownPrompt(requested.clone()))?;
                (route.server.clone(), route.upstream.clone())
            }
        };
        let decision = policy.check(
            &ctx.principal,
            &Permission::GetPrompt {
                server: &server,
                prompt: &upstream,
            },
        );
        self.record_decision(
            ctx,
            &format!("{server}/{upstream}"),
            "prompts/get",
            &decision,
        )
        .await?;
        decision.map_err(GatewayError::Denied)?;
        params.insert("name".into(), Value::from(upstream));
        let entry = self.entry(&server)?;
        let timeout = entry.spec().call_timeout;
        self.forward(ctx, &entry, "prompts/get", Some(params), timeout)
            .await
    }

    /// `completion/complete`: routed by the prompt or resource it completes.
    pub async fn complete(
        &self,
        config: &Config,
        policy: &PolicyEngine,
        ctx: &CallContext,
        mut params: Map<String, Value>,
    ) -> Result<Box<RawValue>, GatewayError> {
        let reference = params.get("ref").cloned().unwrap_or(Value::Null);
        let kind = reference
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let (server, rewritten) = match (kind, &ctx.scope) {
            (_, Some(server)) => (server.clone(), None),
            ("ref/prompt", None) => {
                let name = reference
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if let Some(skill) = self.skill_named(config, name) {
                    // A skill's prompt takes no arguments: nothing to complete, for a
                    // caller who may read it; an unknown prompt for anyone else.
                    if crate::skills::may_read(policy, &ctx.principal, &skill.info).is_err() {
                        return Err(GatewayError::UnknownPrompt(name.to_owned()));
                    }
                    let empty = json!({"completion": {"values": [], "hasMore": false}});
                    return serde_json::value::to_raw_value(&empty)
                        .map_err(|e| GatewayError::InvalidParams(e.to_string()));
                }
                let table = self.routes(config);
                let route = table
                    .prompts
                    .get(name)
                    .ok_or_else(|| GatewayError::UnknownPrompt(name.to_owned()))?;
                (route.server.clone(), Some(route.upstream.clone()))
            }
            ("ref/resource", None) => {
                let uri = reference
                    .get("uri")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let server = self
                    .routes(config)
                    .resource_server(uri)
                    .ok_or_else(|| GatewayError::UnknownResource(uri.to_owned()))?;
                (server, None)
            }
            _ => {
                return Err(GatewayError::InvalidParams(
                    "`ref.type` must be `ref/prompt` or `ref/resource`".into(),
                ));
            }
        };
        let decision = policy.check(&ctx.principal, &Permission::List { server: &server });
        // Every governed request leaves its decision, allow or deny.
        let subject = match (&rewritten, reference.get("uri").and_then(Value::as_str)) {
            (Some(prompt), _) => format!("{server}/{prompt}"),
            (None, Some(uri)) => format!("{server}/{uri}"),
            (None, None) => server.to_string(),
        };
        self.record_decision(ctx, &subject, "completion/complete", &decision)
            .await?;
        decision.map_err(GatewayError::Denied)?;
        if let (Some(upstream), Some(Value::Object(reference))) = (rewritten, params.get_mut("ref"))
        {
            reference.insert("name".into(), Value::from(upstream));
        }
        let entry = self.entry(&server)?;
        let timeout = entry.spec().call_timeout;
        self.forward(ctx, &entry, "completion/complete", Some(params), timeout)
            .await
    }

    // -----------------------------------------------------------------------------------
    // plumbing
    // -----------------------------------------------------------------------------------

    fn entry(&self, server: &str) -> Result<Arc<ServerEntry>, GatewayError> {
        self.directory
            .get(server)
            .ok_or_else(|| GatewayError::UnknownServer(server.to_owned()))
    }

    /// The instance serving this caller: the shared one, or the caller's own.
    async fn instance(
        &self,
        ctx: &CallContext,
        server: &str,
    ) -> Result<Arc<Instance>, GatewayError> {
        let entry = self.entry(server)?;
        match entry.spec().isolation {
            Isolation::Shared => Ok(entry.shared().clone()),
            Isolation::PerUser { .. } => {
                let instance = match entry.user_instance(ctx.principal.user_id()) {
                    Some(instance) => instance,
                    None => self
                        .tree
                        .instance_for(server, ctx.principal.user_id())
                        .await
                        .map_err(|e| GatewayError::NotReady {
                            server: server.to_owned(),
                            state: "unavailable".into(),
                            detail: Some(e.to_string()),
                        })?,
                };
                instance
                    .wait_ready(entry.spec().startup_timeout)
                    .await
                    .map_err(|status| not_ready(server, &status))?;
                Ok(instance)
            }
        }
    }

    /// Sends a request to the instance serving `ctx`, within the server's concurrency
    /// bound and `timeout`.
    async fn forward(
        &self,
        ctx: &CallContext,
        entry: &ServerEntry,
        method: &str,
        params: Option<Map<String, Value>>,
        timeout: Duration,
    ) -> Result<Box<RawValue>, GatewayError> {
        let server = entry.name.to_string();
        let instance = self.instance(ctx, &server).await?;
        if instance.connection().is_none() {
            return Err(not_ready(&server, &instance.status()));
        }
        let deadline = Instant::now() + timeout;
        let _permit = entry.limiter.acquire(timeout).await.map_err(|e| match e {
            LimitError::Full {
                max_concurrent,
                max_queued,
            } => GatewayError::Overloaded {
                server: server.clone(),
                max_concurrent,
                max_queued,
            },
            LimitError::TimedOut => GatewayError::Timeout {
                server: server.clone(),
                method: method.to_owned(),
                after: timeout,
            },
        })?;
        // The instance may have stopped while this call waited for a slot.
        let connection = instance
            .connection()
            .ok_or_else(|| not_ready(&server, &instance.status()))?;
        instance.touch();
        let options = CallOptions {
            timeout: Some(deadline.saturating_duration_since(Instant::now())),
            sink: ctx.sink.clone(),
            session: ctx.attribution(),
            cancel: Some(ctx.cancel.clone()),
        };
        connection
            .call(method, params, options)
            .await
            .map_err(|e| call_error(e, &server, method, timeout))
    }

    /// `resources/subscribe` from a client session: the permission check (a subscriber
    /// reads the resource), then Warden's own subscription at the upstream unless it
    /// holds one already.
    pub async fn subscribe_resource(
        &self,
        config: &Config,
        policy: &PolicyEngine,
        ctx: &CallContext,
        params: Map<String, Value>,
    ) -> Result<(), GatewayError> {
        let Some(session) = &ctx.session else {
            return Err(GatewayError::InvalidParams(
                "`resources/subscribe` needs a session; stateless clients name resources in `subscriptions/listen`".into(),
            ));
        };
        let subscribed = self
            .subscribe(config, policy, ctx, &session.id, &params)
            .await;
        // A session that ended meanwhile may have been forgotten before it was added:
        // forget it again, now that it is in the table.
        if self.sessions.table.get(&session.id).is_none() {
            self.forget_subscriber(&session.id);
        }
        subscribed
    }

    /// Subscribes `who` (a session id, or a listen stream's key) to the resource
    /// `params` name, and brings the upstream in line.
    pub async fn subscribe(
        &self,
        config: &Config,
        policy: &PolicyEngine,
        ctx: &CallContext,
        who: &str,
        params: &Map<String, Value>,
    ) -> Result<(), GatewayError> {
        let resource = self.resource_of(config, ctx, params)?;
        let entry = self.entry(&resource.server)?;
        if !supports_subscriptions(&entry) {
            return Err(GatewayError::Upstream(RpcError::new(
                code::METHOD_NOT_FOUND,
                format!(
                    "server `{}` does not offer resource subscriptions (its capabilities, or `isolation: per_user`)",
                    resource.server
                ),
            )));
        }
        let decision = policy.check(
            &ctx.principal,
            &Permission::ReadResource {
                server: &resource.server,
                uri: &resource.uri,
            },
        );
        let subject = format!("{}/{}", resource.server, resource.uri);
        self.record_decision(ctx, &subject, "resources/subscribe", &decision)
            .await?;
        decision.map_err(GatewayError::Denied)?;
        let max = config.gateway.max_resource_subscriptions;
        let added = self
            .subscriptions
            .add(&resource, who, max)
            .map_err(|TooMany(max)| {
                GatewayError::InvalidParams(format!(
                    "a client holds at most {max} resource subscriptions (gateway.max_resource_subscriptions)"
                ))
            })?;
        if let Err(error) = sync_upstream(&self.subscriptions, &entry, &resource).await {
            if added {
                self.subscriptions.remove(&resource, who);
            }
            return Err(error);
        }
        Ok(())
    }

    /// `resources/unsubscribe` from a client session; Warden's own subscription at the
    /// upstream ends with the last subscriber's. Always answered `{}`: the client is
    /// unsubscribed whatever the upstream says.
    pub async fn unsubscribe_resource(
        &self,
        config: &Config,
        ctx: &CallContext,
        params: Map<String, Value>,
    ) -> Result<(), GatewayError> {
        let Some(session) = &ctx.session else {
            return Ok(());
        };
        let resource = self.resource_of(config, ctx, &params)?;
        if self.subscriptions.remove(&resource, &session.id)
            && let Ok(entry) = self.entry(&resource.server)
        {
            // A refused unsubscribe is logged by `sync`; the client is unsubscribed
            // either way.
            let _ = sync_upstream(&self.subscriptions, &entry, &resource).await;
        }
        Ok(())
    }

    /// A session or listen stream ended: its subscriptions end with it, and Warden's own
    /// at the upstreams where it was the last subscriber.
    pub fn forget_subscriber(&self, who: &str) {
        let left = self.subscriptions.remove_all(who);
        self.sync_in_background(left);
    }

    /// After the gateway lost events from the bus (its buffer there overflowed): what
    /// any of them could have called for, done from current state.
    /// - Every client hears once per kind that its lists may have changed.
    /// - Every server whose shared instance became ready since Warden last renewed its
    ///   subscriptions there (a restart whose `ready` was lost) gets them renewed
    ///   ([`Gateway::renew_subscriptions`]); the others are left alone.
    /// - Every subscriber hears that each resource it subscribed to (and may still read)
    ///   may have been updated, since an upstream's update may have been among the
    ///   events lost; a client then reads it again, which costs a read and misses
    ///   nothing.
    pub fn catch_up(&self, policy: &PolicyEngine) {
        self.announce_every_list_changed();
        for entry in self.directory.all().iter() {
            self.renew_subscriptions(&entry.name);
        }
        self.announce_held_resources_updated(policy);
    }

    /// Each subscriber hears of the resources it holds, one by one: a pass over the
    /// subscribers and what each holds, not over every resource times every session,
    /// and nobody hears of a sub-resource someone else subscribed to under its own.
    fn announce_held_resources_updated(&self, policy: &PolicyEngine) {
        let updates = |who: &str, principal: &Principal, subscription: Option<&Value>| {
            let mut updates: Vec<Arc<str>> = Vec::new();
            for resource in self.subscriptions.held_by(who) {
                let read = Permission::ReadResource {
                    server: &resource.server,
                    uri: &resource.uri,
                };
                if policy.check(principal, &read).is_err() {
                    continue;
                }
                let params = json!({ "uri": resource.uri });
                updates.push(resource_updated(&params, subscription));
            }
            updates
        };
        self.sessions
            .notify_each(|session| updates(&session.id, &session.principal, None));
        let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        for listener in listeners.iter() {
            let Some(key) = &listener.subscriber else {
                continue;
            };
            for data in updates(key, &listener.principal, Some(&listener.id)) {
                let _ = listener.sender.try_send(data);
            }
        }
    }

    /// Takes note of the instances running now: the gateway starts after the servers,
    /// and their `ready` events came before it listened. No subscription was made
    /// before this, so none is owed to them.
    pub fn note_running_instances(&self) {
        let mut renewed = self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        for entry in self.directory.all().iter() {
            renewed
                .entry(entry.name.to_string())
                .or_insert(entry.shared().status().running_since);
        }
    }

    /// `server`'s shared instance became ready: a new process knows nothing of the old
    /// one's subscriptions, so Warden's are renewed — once per instance. (A catch-up may
    /// have renewed them before the instance's `ready` event arrives; a second
    /// subscribe is not promised to be harmless.)
    pub fn renew_subscriptions(&self, server: &str) {
        let ready_since = self
            .directory
            .get(server)
            .and_then(|entry| entry.shared().status().running_since);
        {
            let mut renewed = self.renewed.lock().unwrap_or_else(|e| e.into_inner());
            if ready_since.is_none() || renewed.get(server) == Some(&ready_since) {
                return;
            }
            // Servers removed from the profile since are forgotten here, so the map
            // holds the servers there are (a handful), not every one there ever was.
            renewed.retain(|name, _| self.directory.get(name).is_some());
            renewed.insert(server.to_owned(), ready_since);
        }
        let wanted = self.subscriptions.upstream_restarted(server);
        self.sync_in_background(wanted);
    }

    /// Brings the upstream in line for each of `resources`, one after another, in a
    /// task of its own (not the caller's: it may be a `Drop`, or the gateway actor).
    fn sync_in_background(&self, resources: Vec<Resource>) {
        if resources.is_empty() {
            return;
        }
        // Without a runtime Warden is exiting, and the upstreams with it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let subscriptions = self.subscriptions.clone();
        let directory = self.directory.clone();
        runtime.spawn(async move {
            for resource in resources {
                let Some(entry) = directory.get(&resource.server) else {
                    continue;
                };
                if let Err(error) = sync_upstream(&subscriptions, &entry, &resource).await {
                    tracing::warn!(server = %resource.server, uri = %resource.uri, %error, "a resource subscription could not be renewed");
                }
            }
        });
    }

    /// Sends an upstream's `notifications/resources/updated` to the sessions and listen
    /// streams subscribed to that resource that may still read it.
    pub fn announce_resource_updated(&self, policy: &PolicyEngine, server: &str, params: &Value) {
        let Some(uri) = params.get("uri").and_then(Value::as_str) else {
            return;
        };
        let resource = Resource {
            server: server.to_owned(),
            uri: uri.to_owned(),
        };
        let subscribers = self.subscriptions.subscribers(&resource);
        if subscribers.is_empty() {
            return;
        }
        let may_read = |principal: &Principal| {
            policy
                .check(principal, &Permission::ReadResource { server, uri })
                .is_ok()
        };
        let mut params = params.clone();
        if let Some(params) = params.as_object_mut() {
            // The upstream's own `_meta` is about its session with Warden.
            params.remove("_meta");
        }
        let data = resource_updated(&params, None);
        self.sessions.broadcast(data, |session| {
            subscribers.contains(&session.id) && may_read(&session.principal)
        });
        let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        for listener in listeners.iter() {
            let subscribed = listener
                .subscriber
                .as_ref()
                .is_some_and(|key| subscribers.contains(key));
            if subscribed && may_read(&listener.principal) {
                let _ = listener
                    .sender
                    .try_send(resource_updated(&params, Some(&listener.id)));
            }
        }
    }

    /// The resource a `resources/read` or subscription request names, and the server
    /// that offers it.
    fn resource_of(
        &self,
        config: &Config,
        ctx: &CallContext,
        params: &Map<String, Value>,
    ) -> Result<Resource, GatewayError> {
        let uri = params
            .get("uri")
            .and_then(Value::as_str)
            .ok_or_else(|| GatewayError::InvalidParams("`uri` must be a string".into()))?
            .to_owned();
        let server = match &ctx.scope {
            Some(server) => server.to_string(),
            None => self
                .routes(config)
                .resource_server(&uri)
                .ok_or_else(|| GatewayError::UnknownResource(uri.clone()))?
                .to_string(),
        };
        Ok(Resource { server, uri })
    }

    /// Records a permission decision. When the trail refuses it (`fail_closed` with a
    /// full spool), the governed request is refused too.
    async fn record_decision(
        &self,
        ctx: &CallContext,
        subject: &str,
        action: &str,
        decision: &Result<(), Denial>,
    ) -> Result<(), GatewayError> {
        let event = decision_event(ctx, subject, action, decision);
        self.record_event(event).await
    }

    async fn record_event(&self, event: AuditEvent) -> Result<(), GatewayError> {
        self.audit
            .record(AuditRecord::Event(Box::new(event)))
            .await
            .map_err(GatewayError::Audit)
    }
}

/// `notifications/resources/updated` with `params` (no `_meta` of the upstream's); on a
/// listen stream every notification names its `subscription`.
fn resource_updated(params: &Value, subscription: Option<&Value>) -> Arc<str> {
    let mut notification = json!({
        "jsonrpc": "2.0",
        "method": "notifications/resources/updated",
        "params": params,
    });
    if let Some(id) = subscription {
        notification["params"]["_meta"] = json!({"io.modelcontextprotocol/subscriptionId": id});
    }
    Arc::from(notification.to_string())
}

/// The `permission.decision` row of `ctx`'s caller doing `action` on `subject`, with
/// the call's trace and session.
fn decision_event(
    ctx: &CallContext,
    subject: &str,
    action: &str,
    decision: &Result<(), Denial>,
) -> AuditEvent {
    let mut event = crate::policy::decision_event(&ctx.principal, subject, action, decision);
    event.trace_id = Some(ctx.trace.trace_id_hex());
    event.attributes["session_id"] = json!(ctx.session.as_ref().map(|s| s.id.as_str()));
    event
}

/// True when a tool result reports failure (`"isError": true`). The substring test keeps
/// the common case free of a parse.
pub fn result_is_error(result: &RawValue) -> bool {
    let text = result.get();
    if !text.contains("\"isError\"") {
        return false;
    }
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("isError").and_then(Value::as_bool))
        .unwrap_or(false)
}

/// What an upstream call's failure means to the client.
fn call_error(error: CallError, server: &str, method: &str, timeout: Duration) -> GatewayError {
    match error {
        CallError::Rpc(error) => GatewayError::Upstream(error),
        CallError::Timeout(_) => GatewayError::Timeout {
            server: server.to_owned(),
            method: method.to_owned(),
            after: timeout,
        },
        CallError::Cancelled => GatewayError::Cancelled,
        CallError::Closed(reason) | CallError::Send(reason) => GatewayError::Lost {
            server: server.to_owned(),
            reason,
        },
    }
}

/// Whether Warden subscribes at `entry`'s upstream: it says it supports subscriptions,
/// and it is one shared process (a per-user instance's updates could not be told apart).
pub fn supports_subscriptions(entry: &ServerEntry) -> bool {
    matches!(entry.spec().isolation, Isolation::Shared)
        && routes::catalog_of(entry).is_some_and(|catalog| {
            catalog.capabilities.pointer("/resources/subscribe") == Some(&Value::Bool(true))
        })
}

/// The refusal for a call to `server`'s instance while it is in `status` and not ready.
fn not_ready(server: &str, status: &ServerStatus) -> GatewayError {
    GatewayError::NotReady {
        server: server.to_owned(),
        state: status.state.as_str().to_owned(),
        detail: status.last_error.clone(),
    }
}

/// Brings the upstream in line for `resource` ([`Subscriptions::sync`]) through Warden's
/// own requests at `entry`'s shared instance.
async fn sync_upstream(
    subscriptions: &Subscriptions,
    entry: &ServerEntry,
    resource: &Resource,
) -> Result<(), GatewayError> {
    subscriptions
        .sync(resource, |method| {
            subscription_request(entry, method, &resource.uri)
        })
        .await
}

/// Warden's own `resources/subscribe` or `resources/unsubscribe` at the shared instance,
/// outside any client's call (no concurrency slot: it is bookkeeping, not work).
async fn subscription_request(
    entry: &ServerEntry,
    method: &'static str,
    uri: &str,
) -> Result<(), GatewayError> {
    let instance = entry.shared();
    let connection = instance
        .connection()
        .ok_or_else(|| not_ready(&entry.name, &instance.status()))?;
    let timeout = entry.spec().call_timeout;
    let mut params = Map::new();
    params.insert("uri".into(), Value::from(uri));
    let options = CallOptions {
        timeout: Some(timeout),
        ..CallOptions::default()
    };
    connection
        .call(method, Some(params), options)
        .await
        .map(drop)
        .map_err(|e| call_error(e, &entry.name, method, timeout))
}
