//! Provider keys stay on the server, client tokens stay off the providers: after
//! complete, streamed and failing requests (including a provider that quotes its key back
//! in an error, as some do), the key appears in no answer, header, log line or audit row,
//! and no provider saw the client's token or `Authorization` header.

use serde_json::{Value, json};

use super::fake::{self, FakeProvider, Reply};
use super::{Env, Trace, ask, ask_anthropic, streamed};

#[test]
fn provider_keys_never_reach_clients_logs_or_the_audit_trail_and_tokens_never_reach_providers() {
    let key = format!("sk-live-{}-do-not-leak", std::process::id());
    let openai = FakeProvider::start(|seen| {
        let quoted = seen.header("authorization").unwrap_or_default().to_owned();
        match seen.body["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
        {
            "quote-400" => Reply::Json {
                status: 400,
                headers: Vec::new(),
                body: json!({"error": {"message": format!("bad request made with {quoted}")}}),
            },
            "quote-401" => Reply::Json {
                status: 401,
                headers: vec![("WWW-Authenticate", format!("Bearer realm=\"{quoted}\""))],
                body: json!({"error": {"message": format!("Incorrect API key provided: {quoted}")}}),
            },
            _ if seen.streaming() => fake::openai_stream(seen, "gpt-test", &["a", "b"], 3, 2),
            _ => fake::json_reply(fake::openai_answer("gpt-test", "fine", 3, 2, 0)),
        }
    });
    let anthropic = FakeProvider::start(|seen| {
        if seen.streaming() {
            fake::anthropic_stream(
                "claude-test",
                &["x"],
                json!({"input_tokens": 2, "output_tokens": 1}),
                json!({"output_tokens": 2}),
                None,
            )
        } else {
            fake::json_reply(fake::anthropic_answer(
                "claude-test",
                "fine",
                json!({"input_tokens": 2, "output_tokens": 2}),
            ))
        }
    });
    let env = Env::start(
        json!({
            "providers": {
                "openai": {"kind": "openai", "base_url": format!("{}/v1", openai.url), "api_key_secret": "shared_key"},
                "anthropic": {"kind": "anthropic", "base_url": anthropic.url, "api_key_secret": "shared_key"},
            },
            "models": {
                "gpt": {"provider": "openai", "model": "gpt-test"},
                "claude": {"provider": "anthropic", "model": "claude-test"},
            },
        }),
        &[("shared_key", &key)],
        |profile| {
            profile.set("logging.level", "debug");
        },
    );
    let token = env.token("alice", "ai:chat");
    let mut responses = Vec::new();
    for (request, anthropic_client) in [
        (ask("gpt", "hello"), false),
        (
            streamed(
                ask("gpt", "hello"),
                json!({"stream_options": {"include_usage": true}}),
            ),
            false,
        ),
        (ask("gpt", "quote-400"), false),
        (ask("gpt", "quote-401"), false),
        (ask("claude", "hello"), false),
        (ask_anthropic("claude", "hello"), true),
        (streamed(ask_anthropic("claude", "hello"), json!({})), true),
        (ask_anthropic("gpt", "quote-401"), true),
    ] {
        let trace = Trace::new();
        let response = if anthropic_client {
            env.messages(&token, request, &trace)
        } else {
            env.chat(&token, request, &trace)
        };
        env.row(&trace);
        responses.push(response);
    }
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 400, 502, 200, 200, 200, 502]);
    assert!(
        responses[2]
            .body
            .contains("bad request made with Bearer [redacted]"),
        "{:?}",
        responses[2]
    );
    assert!(
        responses[3].body.contains("refused Warden's credentials"),
        "{:?}",
        responses[3]
    );
    let models = crate::support::http::request(
        "GET",
        &env.warden.url("/v1/models"),
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    )
    .expect("GET /v1/models");
    responses.push(models);

    for response in &responses {
        assert!(
            !response.body.contains(&key),
            "the key reached a client: {response:?}"
        );
        for (name, value) in &response.headers {
            assert!(
                !value.contains(&key),
                "the key reached a client in `{name}`"
            );
        }
    }
    assert!(!env.warden.log().contains(&key), "the key reached the log");
    for table in ["ai_requests", "audit_events", "mcp_tool_executions"] {
        let rows = env.db.query(&format!(
            "SELECT count(*) FROM {table} t WHERE row_to_json(t)::text LIKE '%{key}%'"
        ));
        assert_eq!(rows[0].get::<_, i64>(0), 0, "the key reached {table}");
    }

    let seen: Vec<fake::Seen> = openai.seen().into_iter().chain(anthropic.seen()).collect();
    assert_eq!(seen.len(), 8);
    for request in &seen {
        assert!(
            !request.raw.contains(&token),
            "a provider saw the client's token"
        );
        for (name, value) in &request.headers {
            assert!(
                !value.contains(&token),
                "a provider saw the client's token in `{name}`"
            );
        }
        let credential = request
            .header("authorization")
            .or(request.header("x-api-key"))
            .map(|v| v.trim_start_matches("Bearer "));
        assert_eq!(credential, Some(key.as_str()), "{request:?}");
        assert_eq!(request.body.get("user"), None::<&Value>);
    }
}
