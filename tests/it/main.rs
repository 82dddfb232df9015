//! Warden's integration tests: one test binary (one link step on a 2-core machine), one
//! submodule per area. Everything runs against real PostgreSQL and the real `warden`
//! binary through the harness in `tests/support/`; nothing is mocked, and waiting is
//! always for an event with a deadline, never a sleep.

// The harness serves every area, including ones still to come; a helper that no test
// of today's areas calls is not dead.
#[allow(dead_code)]
#[path = "../support/mod.rs"]
mod support;

mod ai;
mod audit;
mod config;
mod conformance;
mod docs;
mod gateway;
mod identity;
mod migrate;
mod notices;
mod policy;
mod rmcp_client;
mod serve;
mod skills;
mod supervision;
mod tls;
