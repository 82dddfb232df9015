//! Tool-definition pinning: the defence against an upstream that changes a tool after
//! users learned to trust it (the "rug pull").
//!
//! The first time a tool is seen, the SHA-256 of its definition (name, description,
//! schemas, annotations — canonical JSON) is stored as approved. When an upstream later
//! presents a different definition, the tool is withheld from listings and calls, a
//! `tool.definition_changed` audit event records both definitions, and it stays withheld
//! until an operator approves the new one (`POST /admin/tools/{server}/{tool}/approve`)
//! or the profile sets `pin_tools: false` for that server.
//!
//! The pins are loaded from PostgreSQL at start (a change made while Warden was down is
//! still caught) and written behind, off the call path. An approval is announced on
//! [`CHANNEL`]; every replica then reads the pins again ([`Pins::refresh`], run by
//! `db::notify::refresh_when_wanted`, which tries a failed read again), so a tool
//! approved on one is served by all, not only after their next restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use warden_actors::audit::{Audit, AuditEvent, AuditRecord};

use crate::db::notify::RefreshError;

/// The PostgreSQL channel approvals are announced on.
pub const CHANNEL: &str = "warden_pins";

/// Why an approval was not made.
#[derive(Debug, thiserror::Error)]
pub enum ApproveError {
    #[error("no changed definition of this tool awaits approval")]
    NothingPending,
    #[error("the approval could not be stored: {0}")]
    Store(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinCheck {
    /// First sight (now approved) or identical to the approved definition.
    Approved,
    /// Differs from the approved definition: withheld.
    Changed,
}

struct Pin {
    approved_hash: String,
    approved: Arc<Value>,
    pending_hash: Option<String>,
}

pub struct Pins {
    pins: Mutex<HashMap<(String, String), Pin>>,
    generation: AtomicU64,
    pool: Option<Pool>,
    audit: Option<Audit>,
}

/// The `tool.definition_approved` audit row of `actor` approving `definition` of
/// `server`/`tool` — through the admin API (`origin: None`) or elsewhere (`import`).
pub fn approval_event(
    actor_kind: &'static str,
    actor: &str,
    server: &str,
    tool: &str,
    definition: &Value,
    origin: Option<&str>,
) -> AuditEvent {
    let mut event = AuditEvent::new("tool.definition_approved", actor_kind);
    event.actor_id = Some(actor.to_owned());
    event.subject = Some(format!("{server}/{tool}"));
    event.decision = Some("allow");
    event.attributes = json!({
        "definition": definition,
        "hash": definition_hash(definition),
        "origin": origin.unwrap_or("admin"),
    });
    event
}

/// The hash of the parts of a definition a client relies on.
pub fn definition_hash(definition: &Value) -> String {
    let relevant = json!({
        "name": definition.get("name"),
        "title": definition.get("title"),
        "description": definition.get("description"),
        "inputSchema": definition.get("inputSchema"),
        "outputSchema": definition.get("outputSchema"),
        "annotations": definition.get("annotations"),
    });
    // serde_json's map is ordered by key, so this serialisation is canonical.
    hex::encode(Sha256::digest(relevant.to_string().as_bytes()))
}

impl Pins {
    /// Pins held in memory only (tests).
    pub fn in_memory() -> Pins {
        Pins {
            pins: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            pool: None,
            audit: None,
        }
    }

    /// Loads every stored pin.
    pub async fn load(pool: Pool, audit: Audit) -> Result<Pins, tokio_postgres::Error> {
        let map = match pool.get().await {
            Ok(client) => stored(&client).await?,
            Err(_) => HashMap::new(),
        };
        Ok(Pins {
            pins: Mutex::new(map),
            generation: AtomicU64::new(0),
            pool: Some(pool),
            audit: Some(audit),
        })
    }

    /// Reads the stored pins again and takes every approval made elsewhere (another
    /// replica): a pin whose approved definition in PostgreSQL differs from the one held
    /// here is replaced. Pins this process saw first and has not written yet are kept.
    /// Returns the servers whose pins changed (their clients' tool lists did).
    /// Fails, changing nothing, when PostgreSQL cannot be read
    /// (`db::notify::refresh_when_wanted` tries again).
    pub async fn refresh(&self) -> Result<Vec<String>, RefreshError> {
        let Some(pool) = &self.pool else {
            return Ok(Vec::new());
        };
        let client = pool.get().await?;
        let stored = stored(&client).await?;
        let mut changed = std::collections::BTreeSet::new();
        {
            let mut pins = self.lock();
            for (key, pin) in stored {
                let differs = pins
                    .get(&key)
                    .is_none_or(|held| held.approved_hash != pin.approved_hash);
                if differs {
                    changed.insert(key.0.clone());
                    pins.insert(key, pin);
                }
            }
        }
        if !changed.is_empty() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(changed.into_iter().collect())
    }

    /// Changes when an approval changes what is withheld.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Pin>> {
        // Single map operations cannot leave it inconsistent.
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Compares `definition` with the pin for `server`/`tool`, pinning it on first sight.
    pub fn check(&self, server: &str, tool: &str, definition: &Value) -> PinCheck {
        let hash = definition_hash(definition);
        let key = (server.to_owned(), tool.to_owned());
        let mut pins = self.lock();
        match pins.get_mut(&key) {
            None => {
                pins.insert(
                    key,
                    Pin {
                        approved_hash: hash.clone(),
                        approved: Arc::new(definition.clone()),
                        pending_hash: None,
                    },
                );
                drop(pins);
                self.persist_first_sight(server, tool, &hash, definition);
                PinCheck::Approved
            }
            Some(pin) if pin.approved_hash == hash => PinCheck::Approved,
            Some(pin) => {
                if pin.pending_hash.as_deref() != Some(hash.as_str()) {
                    pin.pending_hash = Some(hash.clone());
                    let before = pin.approved.clone();
                    let before_hash = pin.approved_hash.clone();
                    drop(pins);
                    tracing::warn!(
                        server,
                        tool,
                        "tool definition changed; withheld until an operator approves it"
                    );
                    self.persist_change(server, tool, &before_hash, &before, &hash, definition);
                }
                PinCheck::Changed
            }
        }
    }

    /// Approves the definition of `server`/`tool` withheld since it changed: `current`,
    /// the one the upstream presents, which must be the one withheld. It is stored
    /// first and held here only once PostgreSQL took it (an approval only held here
    /// would be undone by the next [`Pins::refresh`]); then the other replicas are told.
    pub async fn approve(
        &self,
        server: &str,
        tool: &str,
        current: &Value,
    ) -> Result<(), ApproveError> {
        let hash = definition_hash(current);
        let key = (server.to_owned(), tool.to_owned());
        let pending = self
            .lock()
            .get(&key)
            .is_some_and(|pin| pin.pending_hash.as_deref() == Some(hash.as_str()));
        if !pending {
            return Err(ApproveError::NothingPending);
        }
        if let Some(pool) = &self.pool {
            let store = |e: &dyn std::fmt::Display| ApproveError::Store(e.to_string());
            let client = pool.get().await.map_err(|e| store(&e))?;
            // An upsert: the pin's own row may still be on its way (written behind), and
            // an approval must not be reported stored when no row took it.
            let stored = client
                .execute(
                    "INSERT INTO tool_pins (server_name, tool_name, approved_hash, approved_definition)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (server_name, tool_name) DO UPDATE SET approved_hash = $3,
                     approved_definition = $4, pending_hash = NULL, pending_definition = NULL,
                     approved_at = now()",
                    &[&server, &tool, &hash, current],
                )
                .await
                .map_err(|e| store(&e))?;
            if stored != 1 {
                return Err(ApproveError::Store(format!(
                    "{stored} rows took the approval of {server}/{tool}"
                )));
            }
            let payload = json!({"server": server, "tool": tool}).to_string();
            if let Err(error) = client
                .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
                .await
            {
                tracing::warn!(%error, server, tool, "other replicas were not told of a tool approval; they take it at their next start");
            }
        }
        if let Some(pin) = self.lock().get_mut(&key) {
            pin.approved_hash = hash;
            pin.approved = Arc::new(current.clone());
            pin.pending_hash = None;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn persist_first_sight(&self, server: &str, tool: &str, hash: &str, definition: &Value) {
        let Some(pool) = self.pool.clone() else {
            return;
        };
        let (server, tool, hash, definition) = (
            server.to_owned(),
            tool.to_owned(),
            hash.to_owned(),
            definition.clone(),
        );
        tokio::spawn(async move {
            let Ok(client) = pool.get().await else {
                return;
            };
            let result = client
                .execute(
                    "INSERT INTO tool_pins (server_name, tool_name, approved_hash, approved_definition)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[&server, &tool, &hash, &definition],
                )
                .await;
            if let Err(error) = result {
                tracing::warn!(%error, %server, %tool, "storing a tool pin failed");
            }
        });
    }

    fn persist_change(
        &self,
        server: &str,
        tool: &str,
        before_hash: &str,
        before: &Value,
        hash: &str,
        definition: &Value,
    ) {
        if let Some(audit) = self.audit.clone() {
            let mut event = AuditEvent::new("tool.definition_changed", "system");
            event.subject = Some(format!("{server}/{tool}"));
            event.decision = Some("deny");
            event.reason = Some("the upstream changed the tool's definition; withheld until an operator approves it".into());
            event.attributes = json!({
                "server": server,
                "tool": tool,
                "approved_hash": before_hash,
                "new_hash": hash,
                "approved_definition": before,
                "new_definition": definition,
            });
            tokio::spawn(async move {
                if let Err(error) = audit.record(AuditRecord::Event(Box::new(event))).await {
                    tracing::error!(%error, "recording a tool definition change failed");
                }
            });
        }
        let Some(pool) = self.pool.clone() else {
            return;
        };
        let (server, tool, hash, definition, before_hash) = (
            server.to_owned(),
            tool.to_owned(),
            hash.to_owned(),
            definition.clone(),
            before_hash.to_owned(),
        );
        tokio::spawn(async move {
            let Ok(client) = pool.get().await else {
                return;
            };
            // Only against the approval it was seen against: if another replica approved
            // a definition meanwhile, this write is stale and the approval stands.
            let result = client
                .execute(
                    "UPDATE tool_pins SET pending_hash = $3, pending_definition = $4, changed_at = now()
                     WHERE server_name = $1 AND tool_name = $2 AND approved_hash = $5",
                    &[&server, &tool, &hash, &definition, &before_hash],
                )
                .await;
            if let Err(error) = result {
                tracing::warn!(%error, %server, %tool, "storing a pending tool definition failed");
            }
        });
    }
}

/// Every pin stored in PostgreSQL.
async fn stored(
    client: &deadpool_postgres::Client,
) -> Result<HashMap<(String, String), Pin>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT server_name, tool_name, approved_hash, approved_definition, pending_hash FROM tool_pins",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            (
                (row.get(0), row.get(1)),
                Pin {
                    approved_hash: row.get(2),
                    approved: Arc::new(row.get(3)),
                    pending_hash: row.get(4),
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sight_approves_and_a_change_is_withheld_until_approved() {
        let pins = Pins::in_memory();
        let v1 = json!({"name": "echo", "description": "Echo", "inputSchema": {"type": "object"}});
        let v2 = json!({"name": "echo", "description": "Echo (and exfiltrate)", "inputSchema": {"type": "object"}});
        assert_eq!(pins.check("s", "echo", &v1), PinCheck::Approved);
        assert_eq!(pins.check("s", "echo", &v1), PinCheck::Approved);
        assert_eq!(pins.check("s", "echo", &v2), PinCheck::Changed);
        let before = pins.generation();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let v3 = json!({"name": "echo", "description": "never withheld here"});
        assert!(matches!(
            rt.block_on(pins.approve("s", "echo", &v3)),
            Err(ApproveError::NothingPending)
        ));
        assert!(rt.block_on(pins.approve("s", "echo", &v2)).is_ok());
        assert!(matches!(
            rt.block_on(pins.approve("s", "echo", &v2)),
            Err(ApproveError::NothingPending)
        ));
        assert!(pins.generation() > before);
        assert_eq!(pins.check("s", "echo", &v2), PinCheck::Approved);
        assert_eq!(pins.check("s", "echo", &v1), PinCheck::Changed);
    }

    #[test]
    fn hash_ignores_key_order_and_unrelated_fields() {
        let a = json!({"name": "t", "inputSchema": {"b": 1, "a": 2}, "_meta": {"x": 1}});
        let b = json!({"inputSchema": {"a": 2, "b": 1}, "name": "t"});
        assert_eq!(definition_hash(&a), definition_hash(&b));
    }
}
