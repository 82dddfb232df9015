//! The permission check: one function, [`PolicyEngine::check`], that every governed
//! handler calls before it runs — MCP listing and calls, resources, prompts, the AI proxy
//! and the admin API. Deny by default; no flag bypasses it. `policy/` does no I/O: the
//! caller records the decision in the audit trail.

pub mod credentials;
pub mod hooks;
pub mod limits;
pub mod quotas;

use serde_json::Value;
use thiserror::Error;

use crate::auth::Principal;

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
}

/// A refusal, with what would have been needed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Denial {
    #[error("missing scope `{required}`")]
    InsufficientScope { required: String },
    #[error("{0}")]
    Forbidden(String),
}

/// The decision function and the rules it reads from the profile.
#[derive(Clone, Debug, Default)]
pub struct PolicyEngine {
    /// Scopes that grant everything (until roles and per-server rules land).
    pub admin_scope: String,
}

impl PolicyEngine {
    pub fn new() -> Self {
        PolicyEngine {
            admin_scope: "admin".into(),
        }
    }

    /// Decides whether `principal` may do `permission`.
    pub fn check(&self, principal: &Principal, permission: &Permission<'_>) -> Result<(), Denial> {
        let required = match permission {
            Permission::List { .. }
            | Permission::ReadResource { .. }
            | Permission::GetPrompt { .. } => "tools:read",
            Permission::CallTool { .. } => "tools:call",
            Permission::Admin { .. } => self.admin_scope.as_str(),
            Permission::UseModel { .. } => "ai:chat",
            Permission::ReportEvent { .. } => "hooks:report",
        };
        if principal.scopes.grants(required) {
            Ok(())
        } else {
            Err(Denial::InsufficientScope {
                required: required.to_owned(),
            })
        }
    }
}
