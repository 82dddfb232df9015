//! Warden's supervision tree. Every MCP server, client session and background duty is an
//! actor (ractor) with one owner for each piece of state; nothing here knows HTTP.
//!
//! The tree, and what each actor owns, is drawn in `docs/architecture.md`.

pub mod process;
pub mod spec;
