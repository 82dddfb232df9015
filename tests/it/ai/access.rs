//! Who may use which model: `/v1/models` lists what the caller's scopes allow (in either
//! SDK's shape); a model behind a scope the caller lacks is refused with 403 and a
//! recorded `deny`; an unknown model is refused with the list of allowed ones; requests
//! without a token get 401, oversized bodies 413; and the `ai` rate limit refuses with
//! 429 and `Retry-After` once the caller's allowance is spent.

use serde_json::json;

use super::fake::{self, FakeProvider};
use super::{Env, Trace, WAIT, ask};
use crate::support::{dirs, http, warden};

#[test]
fn scopes_rate_limits_and_body_limits_decide_who_may_use_which_model() {
    let provider =
        FakeProvider::start(|_| fake::json_reply(fake::openai_answer("m", "ok", 1, 1, 0)));
    let mut env = Env::start(
        json!({
            "providers": {"local": {"kind": "openai_compatible", "base_url": format!("{}/v1", provider.url)}},
            "models": {
                "cheap": {"provider": "local", "model": "m"},
                "premium": {"provider": "local", "model": "m", "scopes": ["ai:premium"]},
            },
        }),
        &[],
        |profile| {
            profile.set("rate_limits", json!({"ai": "3/m", "burst_multiplier": 1}));
            profile.set("server.max_body_bytes", "4KiB");
        },
    );
    let alice = env.token("alice", "ai:chat");
    let get = |env: &Env, token: &str, extra: &[(&str, &str)]| {
        let auth = format!("Bearer {token}");
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        http::request("GET", &env.warden.url("/v1/models"), &headers, None).expect("GET /v1/models")
    };

    let listed = get(&env, &alice, &[]).json();
    assert_eq!(
        listed,
        json!({"object": "list", "data": [{"id": "cheap", "object": "model", "created": 0, "owned_by": "local"}]})
    );
    let anthropic_shape = get(&env, &alice, &[("anthropic-version", "2023-06-01")]).json();
    assert_eq!(anthropic_shape["data"][0]["id"], "cheap");
    assert_eq!(anthropic_shape["data"][0]["type"], "model");
    assert_eq!(anthropic_shape["has_more"], false);
    let all: Vec<String> = get(&env, &env.admin_token(), &[]).json()["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| m["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(all, ["cheap", "premium"]);

    // A missing scope: 403 naming it, a recorded deny, a denied row, no provider call.
    let trace = Trace::new();
    let denied = env.chat(&alice, ask("premium", "hi"), &trace);
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.json()["error"]["type"], "permission_error");
    assert!(
        denied
            .header("www-authenticate")
            .is_some_and(|v| v.contains("insufficient_scope") && v.contains("ai:premium")),
        "{denied:?}"
    );
    let decision = env.decision(&trace);
    assert_eq!(decision["decision"], "deny");
    assert_eq!(decision["subject"], "ai/premium");
    assert_eq!(env.row(&trace)["status"], "denied");
    assert!(provider.seen().is_empty());

    // Unknown models are refused with the list of allowed ones.
    let unknown = env.chat(&alice, ask("gpt-9", "hi"), &Trace::new());
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert_eq!(
        unknown.json()["error"]["message"],
        "unknown model `gpt-9`; models you may use: cheap"
    );

    // No token.
    let anonymous = http::request(
        "POST",
        &env.warden.url("/v1/chat/completions"),
        &[("Content-Type", "application/json")],
        Some(ask("cheap", "hi").to_string().as_bytes()),
    )
    .expect("POST");
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert!(anonymous.header("www-authenticate").is_some());

    // Too large a body.
    let big = ask("cheap", &"x".repeat(8 * 1024));
    let too_big = env.chat(&alice, big, &Trace::new());
    assert_eq!(too_big.status, 413, "{too_big:?}");

    // Three a minute, then 429 with Retry-After and a recorded rejection.
    for _ in 0..3 {
        assert_eq!(
            env.chat(&alice, ask("cheap", "hi"), &Trace::new()).status,
            200
        );
    }
    let trace = Trace::new();
    let limited = env.chat(&alice, ask("cheap", "hi"), &trace);
    assert_eq!(limited.status, 429, "{limited:?}");
    assert!(limited.header("retry-after").is_some());
    assert_eq!(limited.json()["error"]["type"], "rate_limit_error");
    assert_eq!(env.row(&trace)["status"], "rate_limited");
    let rejection = env.wait_events(
        &format!("trace_id = '{}' AND kind = 'rate_limit.rejected'", trace.id),
        1,
    );
    assert_eq!(rejection[0]["attributes"]["surface"], "ai");
    assert_eq!(provider.seen().len(), 3);

    // A reload (SIGHUP) routes a new model at once.
    env.profile.set(
        "ai.models.fresh",
        json!({"provider": "local", "model": "m"}),
    );
    env.profile.write();
    let mark = env.warden.log_mark();
    env.warden.sighup();
    assert!(
        env.warden
            .wait_for_log_since(mark, "profile reloaded", WAIT),
        "{}",
        env.warden.log()
    );
    let ids: Vec<serde_json::Value> = get(&env, &alice, &[]).json()["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, [json!("cheap"), json!("fresh")]);
}

#[test]
fn config_check_refuses_an_unknown_provider_kind_with_the_known_ones() {
    let dir = dirs::temp_dir("ai-config");
    let path = dir.path().join("profile.yaml");
    std::fs::write(
        &path,
        "ai:\n  providers:\n    odd: {kind: bogus}\n  models:\n    m: {provider: odd, model: x}\n",
    )
    .expect("write the profile");
    let mut command = warden::command(&["config", "check"]);
    command.arg(&path);
    let output = warden::run(command);
    assert!(!output.status.success(), "{output:?}");
    assert!(
        output.stderr.contains(
            "ai.providers.odd.kind: unknown provider kind `bogus`; expected one of anthropic, gemini, openai, openai_compatible"
        ),
        "{output:?}"
    );
}

#[test]
fn relayed_requests_may_not_have_the_provider_run_tools_unless_allowed() {
    let anthropic = FakeProvider::start(fake::claude);
    let openai =
        FakeProvider::start(|_| fake::json_reply(fake::openai_answer("gpt-test", "Hi", 3, 1, 0)));
    let env = Env::start(
        json!({
            "providers": {
                "claude": {"kind": "anthropic", "base_url": anthropic.url},
                "openai": {"kind": "openai", "base_url": format!("{}/v1", openai.url)},
            },
            "models": {
                "sonnet": {"provider": "claude", "model": "claude-test"},
                "gpt": {"provider": "openai", "model": "gpt-test"},
            },
            "provider_tools": ["web_fetch"],
        }),
        &[],
        |_| {},
    );
    let token = env.token("alice", "ai:chat");
    let message = |extra: serde_json::Value| {
        let mut body = json!({"model": "sonnet", "max_tokens": 50,
                              "messages": [{"role": "user", "content": "Hi"}]});
        for (key, value) in extra.as_object().into_iter().flatten() {
            body[key] = value.clone();
        }
        env.messages(&token, body, &Trace::new())
    };
    // Remote MCP servers the provider would call, and its own web search: refused,
    // naming the key that allows them; nothing reaches the provider.
    let refused = message(json!({"mcp_servers": [{"type": "url", "name": "x",
                                                  "url": "https://mcp.example/sse"}]}));
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(
        refused.body.contains("list `mcp` in ai.provider_tools"),
        "{refused:?}"
    );
    let refused = message(json!({"tools": [{"type": "web_search_20250305",
                                            "name": "web_search"}]}));
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(refused.body.contains("`web_search`"), "{refused:?}");
    assert!(anthropic.seen().is_empty(), "{:?}", anthropic.seen());
    // Allowed by ai.provider_tools, and tools the client runs: relayed.
    let allowed = message(
        json!({"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"},
                                           {"type": "bash_20250124", "name": "bash"}]}),
    );
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(anthropic.seen().len(), 1);
    // Chat completions' own web search, the same way.
    let refused = env.chat(
        &token,
        json!({"model": "gpt", "messages": [{"role": "user", "content": "Hi"}],
               "web_search_options": {}}),
        &Trace::new(),
    );
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(
        refused
            .body
            .contains("list `web_search` in ai.provider_tools"),
        "{refused:?}"
    );
    assert!(openai.seen().is_empty(), "{:?}", openai.seen());
}

#[test]
fn a_model_request_cannot_claim_another_callers_mcp_session() {
    let anthropic = FakeProvider::start(fake::claude);
    let env = Env::start(
        json!({
            "providers": {"claude": {"kind": "anthropic", "base_url": anthropic.url}},
            "models": {"sonnet": {"provider": "claude", "model": "claude-test"}},
        }),
        &[],
        |_| {},
    );
    let alice = env.token("alice", "ai:chat tools:read");
    let bob = env.token("bob", "ai:chat tools:read");
    let session = crate::support::mcp::McpClient::connect(env.warden.url("/mcp"), &alice)
        .session
        .expect("an MCP session");
    let ask_in = |token: &str, trace: &Trace| {
        env.post(
            "/v1/messages",
            token,
            &json!({"model": "sonnet", "max_tokens": 20,
                    "messages": [{"role": "user", "content": "Hi"}]}),
            &[
                ("Mcp-Session-Id", session.as_str()),
                ("anthropic-version", "2023-06-01"),
                ("traceparent", &trace.header),
            ],
        )
    };
    // Alice's own session lands on her row; bob naming it gets none on his.
    let trace = Trace::new();
    assert_eq!(ask_in(&alice, &trace).status, 200);
    assert_eq!(env.row(&trace)["session_id"], session.as_str());
    let trace = Trace::new();
    assert_eq!(ask_in(&bob, &trace).status, 200);
    let row = env.row(&trace);
    assert_eq!(row["user_id"], "bob");
    assert!(row["session_id"].is_null(), "{row}");
}
