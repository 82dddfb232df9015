//! The permission check: one function, [`PolicyEngine::check`], that every governed
//! handler calls before it runs — MCP listing and calls, resources, prompts, the AI proxy
//! and the admin API. Deny by default; no flag bypasses it. `policy/` does no I/O: the
//! caller records the decision in the audit trail.
//!
//! The rules come from the profile ([`PolicyEngine::from_config`]) and are swapped whole
//! on reload:
//!
//! | Permission | Requires (every listed scope) |
//! | --- | --- |
//! | see a server, read its resources, get its prompts | the server's `scopes` (default `tools:read`) |
//! | call a tool | `tools.<tool>.scopes` if set; else the server's `write_scopes` (default `tools:write`) when the tool is marked `destructiveHint: true`; else the server's `scopes` |
//! | the admin API | `admin` |
//! | a model request | `ai.models.<alias>.scopes` if set; else `ai.scopes` (default `ai:chat`) |
//! | report a client-side lifecycle event (`POST /hooks/{event}`) | `hooks:report` |
//! | read a skill (`GET /v1/skills/{name}`, and see it listed) | its file's `metadata.warden-scopes` if set; else `skills.scopes` (default `skills:read`) |
//!
//! A principal's scopes grant a permission when they contain every required scope, or
//! `*`. Roles are scope sets ([`PolicyEngine::role_scopes`]); identity turns a principal's
//! roles into scopes when it verifies a token, so the check itself only compares sets.
//! The check allocates nothing on the allow path: it runs for every tool of every listing.

pub mod credentials;
pub mod hooks;
pub mod limits;
pub mod quotas;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use thiserror::Error;

use crate::auth::{Principal, Scopes};
use crate::config::{AccessConfig, Config};

/// What a request wants to do.
#[derive(Clone, Copy, Debug)]
pub enum Permission<'a> {
    /// See a server's tools/resources/prompts in a listing.
    List {
        server: &'a str,
    },
    /// Call a tool; `annotations` are the upstream's (`destructiveHint`, …).
    CallTool {
        server: &'a str,
        tool: &'a str,
        annotations: Option<&'a Value>,
    },
    ReadResource {
        server: &'a str,
        uri: &'a str,
    },
    GetPrompt {
        server: &'a str,
        prompt: &'a str,
    },
    /// Use the admin API (`action` names the endpoint family).
    Admin {
        action: &'a str,
    },
    /// Send a model request.
    UseModel {
        model: &'a str,
    },
    /// Report a client-side lifecycle event (`POST /hooks/{event}`).
    ReportEvent {
        event: &'a str,
    },
    /// Read a skill; `scopes` are the ones its file names (empty: `skills.scopes`).
    ReadSkill {
        name: &'a str,
        scopes: &'a [String],
    },
}

/// A refusal, with what would have been needed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Denial {
    /// The principal lacks scopes; `required` lists every scope the permission needs,
    /// space-separated (what `WWW-Authenticate: … scope="…"` names for a step-up).
    #[error("missing scope `{required}`")]
    InsufficientScope { required: String },
    #[error("{0}")]
    Forbidden(String),
}

/// The `permission.decision` audit row of `principal` doing `action` on `subject`, as
/// every caller of [`PolicyEngine::check`] records it (the check itself does no I/O);
/// callers add the trace and what else they know.
pub fn decision_event(
    principal: &Principal,
    subject: &str,
    action: &str,
    decision: &Result<(), Denial>,
) -> warden_actors::audit::AuditEvent {
    let mut event =
        warden_actors::audit::AuditEvent::new("permission.decision", principal.actor_kind());
    event.actor_id = Some(principal.user_id().to_owned());
    event.subject = Some(subject.to_owned());
    event.decision = Some(if decision.is_ok() { "allow" } else { "deny" });
    event.reason = decision.as_ref().err().map(|d| d.to_string());
    event.attributes = serde_json::json!({
        "action": action,
        "client_id": principal.client_id,
        "scopes": principal.scopes.to_header_value(),
        "roles": principal.roles,
        "issuer": principal.issuer,
    });
    event
}

/// The `rate_limit.rejected` audit row of `principal` refused on `subject` for
/// `reason` (a rate limit, a quota, a spent budget); callers add the trace and the
/// surface's own attributes.
pub fn rate_limited_event(
    principal: &Principal,
    subject: &str,
    reason: String,
) -> warden_actors::audit::AuditEvent {
    let mut event =
        warden_actors::audit::AuditEvent::new("rate_limit.rejected", principal.actor_kind());
    event.actor_id = Some(principal.user_id().to_owned());
    event.subject = Some(subject.to_owned());
    event.decision = Some("deny");
    event.reason = Some(reason);
    event.attributes = serde_json::json!({ "tier": principal.tier });
    event
}

/// The scope the admin API requires.
pub const ADMIN_SCOPE: &str = "admin";
/// The scope a model request requires.
pub const MODEL_SCOPE: &str = "ai:chat";
/// The scope reporting a client-side lifecycle event requires.
pub const REPORT_SCOPE: &str = "hooks:report";
/// The scope reading a skill requires unless the profile or the skill says otherwise.
pub const SKILLS_SCOPE: &str = "skills:read";

/// One server's rules, shared (`Arc`) so a lookup copies nothing.
#[derive(Clone, Debug)]
struct ServerRules {
    read: Arc<[String]>,
    write: Arc<[String]>,
    tools: HashMap<String, Arc<[String]>>,
}

impl ServerRules {
    fn from_access(access: &AccessConfig) -> ServerRules {
        ServerRules {
            read: access.scopes.clone().into(),
            write: access.write_scopes.clone().into(),
            tools: access
                .tools
                .iter()
                .map(|(tool, scopes)| (tool.clone(), scopes.clone().into()))
                .collect(),
        }
    }
}

/// The decision function and the rules it reads from the profile.
#[derive(Clone, Debug)]
pub struct PolicyEngine {
    servers: HashMap<String, ServerRules>,
    default: ServerRules,
    roles: HashMap<String, Scopes>,
    admin: Arc<[String]>,
    model: Arc<[String]>,
    /// Per model alias, replacing `model`.
    models: HashMap<String, Arc<[String]>>,
    report: Arc<[String]>,
    skills: Arc<[String]>,
}

impl Default for PolicyEngine {
    fn default() -> Self {
        PolicyEngine::new()
    }
}

impl PolicyEngine {
    /// The rules of an empty profile: default server scopes, the built-in roles.
    pub fn new() -> Self {
        PolicyEngine::from_config(&Config::parse("", "(defaults)", &|_| None).unwrap_or_else(
            // An empty profile always parses; this branch is unreachable.
            |_| unreachable!("the empty profile is valid"),
        ))
    }

    /// The rules of `config`: per-server scopes, tool overrides, roles.
    pub fn from_config(config: &Config) -> Self {
        PolicyEngine {
            servers: config
                .access
                .iter()
                .map(|(name, access)| (name.clone(), ServerRules::from_access(access)))
                .collect(),
            default: ServerRules::from_access(&config.default_access),
            roles: config
                .roles
                .iter()
                .map(|(name, role)| (name.clone(), Scopes::from_list(role.scopes.iter().cloned())))
                .collect(),
            admin: vec![ADMIN_SCOPE.to_owned()].into(),
            model: config.ai.scopes.clone().into(),
            models: config
                .ai
                .models
                .iter()
                .filter_map(|(alias, route)| {
                    route
                        .scopes
                        .as_ref()
                        .map(|scopes| (alias.clone(), scopes.clone().into()))
                })
                .collect(),
            report: vec![REPORT_SCOPE.to_owned()].into(),
            skills: config.skills.scopes.clone().into(),
        }
    }

    fn server(&self, name: &str) -> &ServerRules {
        self.servers.get(name).unwrap_or(&self.default)
    }

    /// The scopes `permission` requires (all of them).
    pub fn required<'s>(&'s self, permission: &Permission<'s>) -> &'s [String] {
        match permission {
            Permission::List { server }
            | Permission::ReadResource { server, .. }
            | Permission::GetPrompt { server, .. } => &self.server(server).read,
            Permission::CallTool {
                server,
                tool,
                annotations,
            } => {
                let rules = self.server(server);
                if let Some(scopes) = rules.tools.get(*tool) {
                    scopes
                } else if annotations
                    .and_then(|a| a.get("destructiveHint"))
                    .and_then(Value::as_bool)
                    == Some(true)
                {
                    &rules.write
                } else {
                    &rules.read
                }
            }
            Permission::Admin { .. } => &self.admin,
            Permission::UseModel { model } => self.models.get(*model).unwrap_or(&self.model),
            Permission::ReportEvent { .. } => &self.report,
            Permission::ReadSkill { scopes: [], .. } => &self.skills,
            Permission::ReadSkill { scopes, .. } => scopes,
        }
    }

    /// Decides whether `principal` may do `permission`.
    pub fn check(&self, principal: &Principal, permission: &Permission<'_>) -> Result<(), Denial> {
        let required = self.required(permission);
        if required.is_empty() {
            // A profile may open something to everyone authenticated with `scopes: []`;
            // anonymous callers still need a grant of their own.
            if principal.kind == crate::auth::PrincipalKind::Anonymous {
                return Err(Denial::Forbidden(
                    "anonymous callers need a scope the `anonymous` role grants".into(),
                ));
            }
            return Ok(());
        }
        if required.iter().all(|scope| principal.scopes.grants(scope)) {
            Ok(())
        } else {
            Err(Denial::InsufficientScope {
                required: required.join(" "),
            })
        }
    }

    /// The scopes the named roles grant together (unknown roles grant nothing).
    pub fn role_scopes<S: AsRef<str>>(&self, roles: &[S]) -> Scopes {
        let mut scopes = Scopes::default();
        for role in roles {
            if let Some(granted) = self.roles.get(role.as_ref()) {
                scopes.extend(granted);
            }
        }
        scopes
    }

    /// Whether a role of this name is defined.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.contains_key(role)
    }

    /// Every scope a rule or a role names, for `scopes_supported` in metadata.
    pub fn known_scopes(&self) -> Vec<String> {
        let mut all = std::collections::BTreeSet::new();
        let mut add = |list: &[String]| {
            for scope in list {
                if scope != "*" {
                    all.insert(scope.clone());
                }
            }
        };
        for rules in self.servers.values().chain(std::iter::once(&self.default)) {
            add(&rules.read);
            add(&rules.write);
            for scopes in rules.tools.values() {
                add(scopes);
            }
        }
        add(&self.admin);
        add(&self.model);
        for scopes in self.models.values() {
            add(scopes);
        }
        add(&self.report);
        add(&self.skills);
        let role_scopes: Vec<String> = self
            .roles
            .values()
            .flat_map(|s| s.iter().map(str::to_owned))
            .collect();
        add(&role_scopes);
        all.into_iter().collect()
    }

    /// The scopes a client is told about in a 401 challenge: what the listing of any
    /// server needs.
    pub fn challenge_scopes(&self) -> String {
        let mut scopes: Vec<&str> = self
            .servers
            .values()
            .flat_map(|r| r.read.iter().map(String::as_str))
            .collect();
        if scopes.is_empty() {
            scopes.extend(self.default.read.iter().map(String::as_str));
        }
        scopes.sort_unstable();
        scopes.dedup();
        scopes.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::auth::PrincipalKind;

    fn engine(profile: &str) -> PolicyEngine {
        PolicyEngine::from_config(&Config::parse(profile, "t.yaml", &|_| None).unwrap())
    }

    fn principal(scopes: &str) -> Principal {
        Principal {
            scopes: Scopes::parse(scopes),
            kind: PrincipalKind::User,
            subject: "alice".into(),
            ..Principal::anonymous()
        }
    }

    /// One row: a profile, the caller's scopes, a permission, the expected outcome
    /// (`Ok`, or the scopes named in the denial).
    fn check_decision(
        engine: &PolicyEngine,
        scopes: &str,
        permission: Permission<'_>,
        expected: Result<(), &str>,
    ) {
        let outcome = engine.check(&principal(scopes), &permission);
        match (outcome, expected) {
            (Ok(()), Ok(())) => {}
            (Err(Denial::InsufficientScope { required }), Err(want)) => {
                assert_eq!(required, want, "{permission:?} with `{scopes}`")
            }
            (got, want) => panic!("{permission:?} with `{scopes}`: got {got:?}, want {want:?}"),
        }
    }

    const PROFILE: &str = "
servers:
  github:
    url: https://example.com/mcp
    scopes: [github:read]
    write_scopes: [github:write]
    tools:
      delete_repo: {scopes: [github:admin, github:write]}
      search: {scopes: []}
  plain:
    command: x
";

    #[test]
    fn tool_calls_need_the_server_scope_and_destructive_ones_its_write_scope() {
        let e = engine(PROFILE);
        let destructive = json!({"destructiveHint": true});
        let read_only = json!({"readOnlyHint": true, "destructiveHint": false});
        let call = |tool, annotations| Permission::CallTool {
            server: "github",
            tool,
            annotations,
        };
        check_decision(
            &e,
            "github:read",
            call("list_issues", Some(&read_only)),
            Ok(()),
        );
        check_decision(&e, "github:read", call("list_issues", None), Ok(()));
        check_decision(
            &e,
            "tools:read",
            call("list_issues", None),
            Err("github:read"),
        );
        check_decision(
            &e,
            "github:read",
            call("create", Some(&destructive)),
            Err("github:write"),
        );
        check_decision(
            &e,
            "github:write",
            call("create", Some(&destructive)),
            Ok(()),
        );
        check_decision(
            &e,
            "github:write",
            call("delete_repo", None),
            Err("github:admin github:write"),
        );
        check_decision(
            &e,
            "github:admin github:write",
            call("delete_repo", None),
            Ok(()),
        );
        check_decision(&e, "*", call("delete_repo", Some(&destructive)), Ok(()));
    }

    #[test]
    fn servers_without_rules_use_the_defaults_and_admin_needs_admin() {
        let e = engine(PROFILE);
        let plain = |annotations| Permission::CallTool {
            server: "plain",
            tool: "echo",
            annotations,
        };
        check_decision(&e, "tools:read", plain(None), Ok(()));
        check_decision(&e, "", plain(None), Err("tools:read"));
        check_decision(
            &e,
            "tools:read",
            plain(Some(&json!({"destructiveHint": true}))),
            Err("tools:write"),
        );
        check_decision(
            &e,
            "tools:read",
            Permission::List { server: "plain" },
            Ok(()),
        );
        check_decision(
            &e,
            "tools:read",
            Permission::Admin {
                action: "servers.read",
            },
            Err("admin"),
        );
        check_decision(
            &e,
            "admin",
            Permission::Admin {
                action: "servers.read",
            },
            Ok(()),
        );
        check_decision(
            &e,
            "tools:read",
            Permission::UseModel { model: "m" },
            Err("ai:chat"),
        );
        // A skill needs its own scopes when its file names some, else `skills.scopes`.
        let own = ["finance:read".to_owned(), "skills:read".to_owned()];
        let skill = |scopes| Permission::ReadSkill {
            name: "payroll",
            scopes,
        };
        check_decision(&e, "tools:read", skill(&[]), Err("skills:read"));
        check_decision(&e, "skills:read", skill(&[]), Ok(()));
        check_decision(
            &e,
            "skills:read",
            skill(&own),
            Err("finance:read skills:read"),
        );
        check_decision(&e, "finance:read skills:read", skill(&own), Ok(()));
        check_decision(
            &e,
            "",
            Permission::ReadResource {
                server: "github",
                uri: "x",
            },
            Err("github:read"),
        );
    }

    #[test]
    fn models_need_ai_chat_unless_the_profile_names_their_own_scopes() {
        let e = engine(
            "ai:\n  scopes: [ai:use]\n  providers: {p: {kind: openai}}\n  models:\n    cheap: {provider: p, model: a}\n    premium: {provider: p, model: b, scopes: [ai:premium, ai:use]}\n",
        );
        let model = |model| Permission::UseModel { model };
        check_decision(&e, "ai:use", model("cheap"), Ok(()));
        check_decision(&e, "ai:chat", model("cheap"), Err("ai:use"));
        check_decision(&e, "ai:use", model("premium"), Err("ai:premium ai:use"));
        check_decision(&e, "ai:use ai:premium", model("premium"), Ok(()));
        assert!(e.known_scopes().contains(&"ai:premium".to_owned()));
    }

    #[test]
    fn an_empty_scope_list_admits_the_authenticated_but_not_the_anonymous() {
        let e = engine(PROFILE);
        let search = Permission::CallTool {
            server: "github",
            tool: "search",
            annotations: None,
        };
        check_decision(&e, "", search, Ok(()));
        assert!(e.check(&Principal::anonymous(), &search).is_err());
    }

    #[test]
    fn roles_expand_to_scope_sets() {
        let e = engine(
            "roles:\n  dev: {scopes: [github:read, github:write]}\n  anonymous: {scopes: [tools:read]}\n",
        );
        let scopes = e.role_scopes(&["dev", "unknown"]);
        assert!(scopes.grants("github:write") && !scopes.grants("admin"));
        assert!(e.role_scopes(&["admin"]).grants("anything"));
        assert!(e.role_scopes(&["user"]).grants("tools:read"));
        assert!(e.role_scopes(&["anonymous"]).grants("tools:read"));
        assert!(engine("").role_scopes(&["anonymous"]).is_empty());
        assert!(e.known_scopes().contains(&"github:write".to_owned()));
    }
}
