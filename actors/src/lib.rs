//! Warden's supervision tree. Every MCP server, client session and background duty is an
//! actor (ractor) with one owner for each piece of state; nothing here knows HTTP.
//!
//! The tree, and what each actor owns, is drawn in `docs/architecture.md`.

pub mod audit;
pub mod backoff;
pub mod directory;
pub mod events;
pub mod health;
pub mod jsonrpc;
pub mod ports;
pub mod process;
pub mod reconciler;
pub mod redact;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod spec;
pub mod sse;
pub mod supervisor;
pub mod trace;
pub mod tree;
pub mod upstream;
