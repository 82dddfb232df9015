//! The aggregate catalog of `/mcp`: every ready server's tools, prompts and resources
//! under stable names (`{prefix}{separator}{tool}`, or a per-tool `alias`), with
//! description overrides applied and tools withheld by pinning marked as such.
//!
//! The table is rebuilt only when the directory's generation or the pins change, and is
//! read lock-free; a tool call costs one hash lookup here.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use warden_actors::directory::{Catalog, Directory, ServerEntry};

use super::pins::{PinCheck, Pins};
use crate::config::Config;

/// Where an exposed tool goes.
#[derive(Clone, Debug)]
pub struct ToolRoute {
    pub server: Arc<str>,
    /// The upstream's own name.
    pub upstream: String,
    /// The definition clients see (renamed, description overridden).
    pub definition: Arc<Value>,
    /// Withheld by pinning: its definition changed and awaits approval.
    pub withheld: bool,
}

impl ToolRoute {
    pub fn annotations(&self) -> Option<&Value> {
        self.definition.get("annotations")
    }
}

#[derive(Clone, Debug)]
pub struct PromptRoute {
    pub server: Arc<str>,
    pub upstream: String,
    pub definition: Arc<Value>,
}

#[derive(Default)]
pub struct RouteTable {
    /// (directory generation, pins generation, profile generation) the table was built
    /// for.
    pub built_for: (u64, u64, u64),
    pub tools: HashMap<String, ToolRoute>,
    /// Exposed names in listing order (profile order, then the upstream's order).
    pub tool_order: Vec<String>,
    pub prompts: HashMap<String, PromptRoute>,
    pub prompt_order: Vec<String>,
    /// Resource URI → server; resources keep their URIs (they are addresses, not names).
    pub resources: HashMap<String, Arc<str>>,
    pub resource_list: Vec<(Arc<str>, Value)>,
    /// Template prefix (up to the first `{`) → server, longest first.
    pub templates: Vec<(String, Arc<str>)>,
    pub template_list: Vec<(Arc<str>, Value)>,
}

impl RouteTable {
    pub fn build(directory: &Directory, config: &Config, pins: &Pins) -> RouteTable {
        let mut table = RouteTable {
            built_for: (directory.version(), pins.generation(), config.generation),
            ..RouteTable::default()
        };
        let separator = &config.gateway.separator;
        for entry in directory.all().iter() {
            let Some(catalog) = catalog_of(entry) else {
                continue;
            };
            let naming = config.naming.get(&*entry.name);
            let prefix = naming.map_or(&*entry.name, |n| n.prefix.as_str());
            let pin_tools = naming.is_none_or(|n| n.pin_tools);
            for tool in &catalog.tools {
                let Some(upstream) = tool.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let overrides = naming.and_then(|n| n.tools.get(upstream));
                let exposed = overrides
                    .and_then(|o| o.alias.clone())
                    .unwrap_or_else(|| format!("{prefix}{separator}{upstream}"));
                if table.tools.contains_key(&exposed) {
                    tracing::warn!(tool = %exposed, server = %entry.name, "two tools share this exposed name; keeping the first");
                    continue;
                }
                let withheld = pin_tools
                    && matches!(pins.check(&entry.name, upstream, tool), PinCheck::Changed);
                let mut definition = tool.clone();
                definition["name"] = Value::from(exposed.clone());
                if let Some(description) = overrides.and_then(|o| o.description.clone()) {
                    definition["description"] = Value::from(description);
                }
                table.tool_order.push(exposed.clone());
                table.tools.insert(
                    exposed,
                    ToolRoute {
                        server: entry.name.clone(),
                        upstream: upstream.to_owned(),
                        definition: Arc::new(definition),
                        withheld,
                    },
                );
            }
            for prompt in &catalog.prompts {
                let Some(upstream) = prompt.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let exposed = format!("{prefix}{separator}{upstream}");
                if table.prompts.contains_key(&exposed) {
                    continue;
                }
                let mut definition = prompt.clone();
                definition["name"] = Value::from(exposed.clone());
                table.prompt_order.push(exposed.clone());
                table.prompts.insert(
                    exposed,
                    PromptRoute {
                        server: entry.name.clone(),
                        upstream: upstream.to_owned(),
                        definition: Arc::new(definition),
                    },
                );
            }
            for resource in &catalog.resources {
                if let Some(uri) = resource.get("uri").and_then(Value::as_str) {
                    table
                        .resources
                        .entry(uri.to_owned())
                        .or_insert_with(|| entry.name.clone());
                    table
                        .resource_list
                        .push((entry.name.clone(), resource.clone()));
                }
            }
            for template in &catalog.resource_templates {
                if let Some(uri) = template.get("uriTemplate").and_then(Value::as_str) {
                    let prefix = uri.split('{').next().unwrap_or(uri).to_owned();
                    table.templates.push((prefix, entry.name.clone()));
                    table
                        .template_list
                        .push((entry.name.clone(), template.clone()));
                }
            }
        }
        table
            .templates
            .sort_by_key(|t| std::cmp::Reverse(t.0.len()));
        table
    }

    /// The server that serves resource `uri`: an exact listed URI, else the longest
    /// matching template prefix.
    pub fn resource_server(&self, uri: &str) -> Option<Arc<str>> {
        self.resources.get(uri).cloned().or_else(|| {
            self.templates
                .iter()
                .find(|(prefix, _)| !prefix.is_empty() && uri.starts_with(prefix.as_str()))
                .map(|(_, server)| server.clone())
        })
    }
}

/// The catalog a server's tools are listed from: the shared instance's, or for a
/// per-user server any ready instance's (every user runs the same definition).
pub fn catalog_of(entry: &ServerEntry) -> Option<Arc<Catalog>> {
    if entry.shared().connection().is_some() {
        return Some(entry.shared().catalog());
    }
    entry
        .user_instances()
        .into_iter()
        .find(|i| i.connection().is_some())
        .map(|i| i.catalog())
}
