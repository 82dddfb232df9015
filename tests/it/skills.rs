//! Skill distribution end to end through `warden serve`: skills uploaded through the admin
//! API, read by callers according to their scopes, versioned and audited; exported as
//! `skills/<name>/SKILL.md` and changed back through `warden import`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::identity::Env;
use crate::support::http::{self, Response};

const WAIT: Duration = Duration::from_secs(30);
/// `server.max_body_bytes` in this test: the largest skill file.
const BODY_LIMIT: usize = 8 << 10;

fn skill(name: &str, description: &str, extra: &str, body: &str) -> String {
    format!("---\nname: {name}\ndescription: {description}\n{extra}---\n{body}")
}

fn send(env: &Env, method: &str, path: &str, token: &str, body: Option<&str>) -> Response {
    let bearer = format!("Bearer {token}");
    let mut headers = vec![("Authorization", bearer.as_str())];
    if body.is_some() {
        headers.push(("Content-Type", "text/markdown"));
    }
    http::request(method, &env.url(path), &headers, body.map(str::as_bytes))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// `PUT /admin/skills/{name}` with `file`.
fn upload(env: &Env, admin: &str, name: &str, file: &str) -> Response {
    send(
        env,
        "PUT",
        &format!("/admin/skills/{name}"),
        admin,
        Some(file),
    )
}

fn names(listing: &Response) -> Vec<String> {
    assert_eq!(listing.status, 200, "{listing:?}");
    listing.json()["skills"]
        .as_array()
        .expect("a skills array")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn count(env: &Env, sql: &str) -> i64 {
    env.db.query(sql)[0].get::<_, i64>(0)
}

#[test]
fn skills_are_versioned_served_by_scope_audited_and_synced_through_files() {
    let env = Env::start(|p| {
        p.set("server.max_body_bytes", json!(BODY_LIMIT));
    });
    let admin = env.admin_token();
    let alice = env.token("alice", "skills:read");
    let bob = env.token("bob", "skills:read finance:read");
    let carol = env.token("carol", "tools:read");

    // Uploaded: new (201), the same file again (nothing new), a change (version 2).
    let forms_v1 = skill("pdf-forms", "Fill in PDF forms.", "", "1. Open the form.\n");
    let forms_v2 = skill(
        "pdf-forms",
        "Fill in PDF forms.",
        "license: MIT\n",
        "1. Open the form.\n2. Check every field.\n",
    );
    let put = |name: &str, file: &str| upload(&env, &admin, name, file);
    let created = put("pdf-forms", &forms_v1);
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json()["version"], 1);
    let again = put("pdf-forms", &forms_v1);
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json()["changed"], false);
    assert_eq!(again.json()["version"], 1);
    let changed = put("pdf-forms", &forms_v2);
    assert_eq!(changed.json()["version"], 2, "{changed:?}");
    let payroll = skill(
        "payroll",
        "Run the monthly payroll checks.",
        "metadata:\n  warden-scopes: finance:read\n",
        "Ask finance first.\n",
    );
    assert_eq!(put("payroll", &payroll).status, 201);

    // Refused, each naming what is wrong; nothing stored.
    let mismatch = put("other-name", &forms_v1);
    assert_eq!(mismatch.status, 400);
    assert!(
        mismatch.body.contains("`name` is `pdf-forms`"),
        "{mismatch:?}"
    );
    let broken = put(
        "pdf-forms",
        "---\nname: pdf-forms\ndescription: x\nmetadata: 5\n---\n",
    );
    assert_eq!(broken.status, 400);
    assert!(broken.body.contains("line 4: metadata:"), "{broken:?}");
    let bad_name = put("Bad_Name", &forms_v1);
    assert_eq!(bad_name.status, 400, "{bad_name:?}");
    let not_admin = send(
        &env,
        "PUT",
        "/admin/skills/pdf-forms",
        &alice,
        Some(&forms_v1),
    );
    assert_eq!(not_admin.status, 403, "{not_admin:?}");
    // The body limit, at its edge: a file of exactly `server.max_body_bytes`, then one
    // byte more.
    let filler = |total: usize| {
        let head = skill("big", "Big.", "", "");
        format!("{head}{}", "x".repeat(total - head.len()))
    };
    assert_eq!(put("big", &filler(BODY_LIMIT)).status, 201);
    let over = put("big", &filler(BODY_LIMIT + 1));
    assert_eq!(over.status, 413, "{over:?}");
    assert!(over.body.contains("server.max_body_bytes"), "{over:?}");
    assert_eq!(
        count(&env, "SELECT count(*) FROM skill_versions"),
        4,
        "refused uploads stored nothing"
    );

    // Each caller sees what its scopes allow.
    let list = |token: &str| names(&send(&env, "GET", "/v1/skills", token, None));
    assert_eq!(list(&alice), ["big", "pdf-forms"]);
    assert_eq!(list(&bob), ["big", "payroll", "pdf-forms"]);
    assert!(list(&carol).is_empty());
    let listing = send(&env, "GET", "/v1/skills", &alice, None).json();
    let forms = &listing["skills"][1];
    assert_eq!(forms["version"], 2);
    assert_eq!(forms["description"], "Fill in PDF forms.");

    // The file, byte for byte, with its version and ETag; unchanged is 304.
    let read = send(&env, "GET", "/v1/skills/pdf-forms", &alice, None);
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.body, forms_v2);
    assert_eq!(read.header("warden-skill-version"), Some("2"));
    assert!(
        read.header("content-type")
            .is_some_and(|t| t.starts_with("text/markdown"))
    );
    let etag = read.header("etag").expect("an ETag").to_owned();
    let bearer = format!("Bearer {alice}");
    let conditional = |tag: &str| {
        http::request(
            "GET",
            &env.url("/v1/skills/pdf-forms"),
            &[("Authorization", &bearer), ("If-None-Match", tag)],
            None,
        )
        .expect("a conditional GET")
    };
    let cached = conditional(&etag);
    assert_eq!(cached.status, 304, "{cached:?}");
    assert!(cached.body.is_empty());
    assert_eq!(conditional(&format!("\"x\", W/{etag}")).status, 304);
    assert_eq!(conditional("*").status, 304);
    let other = conditional("\"0000\"");
    assert_eq!(
        (other.status, other.body.as_str()),
        (200, forms_v2.as_str())
    );
    let first = send(&env, "GET", "/v1/skills/pdf-forms?version=1", &alice, None);
    assert_eq!(first.body, forms_v1);
    assert_eq!(first.header("warden-skill-version"), Some("1"));
    // A skill the caller may not read is not found, exactly as one that does not exist.
    let refused = send(&env, "GET", "/v1/skills/payroll", &alice, None);
    let missing = send(&env, "GET", "/v1/skills/nothing", &alice, None);
    assert_eq!((refused.status, missing.status), (404, 404), "{refused:?}");
    assert_eq!(
        refused.body.replace("payroll", "nothing"),
        missing.body,
        "the answers tell the two apart"
    );
    assert_eq!(
        send(&env, "GET", "/v1/skills/payroll", &bob, None).body,
        payroll
    );
    assert_eq!(
        send(&env, "GET", "/v1/skills/pdf-forms", &carol, None).status,
        404
    );
    let history_refused = send(&env, "GET", "/v1/skills/pdf-forms/versions", &carol, None);
    assert_eq!(history_refused.status, 404);

    // An old version is no way around scopes added since.
    let notes_v1 = skill("notes", "Notes.", "", "open\n");
    assert_eq!(put("notes", &notes_v1).status, 201);
    let notes_v2 = skill(
        "notes",
        "Notes.",
        "metadata:\n  warden-scopes: finance:read\n",
        "closed\n",
    );
    assert_eq!(put("notes", &notes_v2).status, 200);
    assert_eq!(
        send(&env, "GET", "/v1/skills/notes?version=1", &alice, None).status,
        404
    );
    assert_eq!(
        send(&env, "GET", "/v1/skills/notes?version=1", &bob, None).body,
        notes_v1
    );
    assert_eq!(
        send(&env, "GET", "/v1/skills/notes?version=3", &bob, None).status,
        404
    );

    // Two changes to one skill at once are numbered one after the other.
    for round in 0..5 {
        let results: Vec<Response> = std::thread::scope(|scope| {
            let racers: Vec<_> = ["a", "b"]
                .into_iter()
                .map(|side| {
                    let file = skill("race", "Race.", "", &format!("{round}{side}\n"));
                    let put = &put;
                    scope.spawn(move || put("race", &file))
                })
                .collect();
            racers
                .into_iter()
                .map(|racer| racer.join().expect("a racer"))
                .collect()
        });
        for result in &results {
            assert!(matches!(result.status, 200 | 201), "{result:?}");
        }
    }
    let race = env
        .db
        .query("SELECT max(version), count(*) FROM skill_versions WHERE name = 'race'");
    assert_eq!(
        (race[0].get::<_, i32>(0), race[0].get::<_, i64>(1)),
        (10, 10)
    );
    assert_eq!(
        send(&env, "DELETE", "/admin/skills/race", &admin, None).status,
        200
    );

    // Removed: gone from readers (its old versions too), kept in the history.
    let removed = send(&env, "DELETE", "/admin/skills/big", &admin, None);
    assert_eq!(removed.status, 200, "{removed:?}");
    assert_eq!(removed.json()["version"], 2);
    assert_eq!(
        send(&env, "DELETE", "/admin/skills/big", &admin, None).status,
        404
    );
    assert_eq!(list(&alice), ["pdf-forms"]);
    assert_eq!(
        send(&env, "GET", "/v1/skills/big", &alice, None).status,
        404
    );
    assert_eq!(
        send(&env, "GET", "/v1/skills/big?version=1", &alice, None).status,
        404
    );
    let history = send(&env, "GET", "/v1/skills/pdf-forms/versions", &alice, None).json();
    let versions: Vec<i64> = history["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["version"].as_i64().unwrap_or_default())
        .collect();
    assert_eq!(versions, [2, 1]);

    // The trail: every change with who made it, every read's decision.
    crate::support::eventually("the skill changes are in the trail", WAIT, || {
        count(
            &env,
            "SELECT count(*) FROM audit_events WHERE kind = 'skill.changed'",
        ) == 18
    });
    let changes = env.db.query(
        "SELECT subject, attributes->>'action', (attributes->>'version')::int, actor_id \
         FROM audit_events WHERE kind = 'skill.changed' AND subject IN ('pdf-forms', 'payroll', 'big') \
         ORDER BY occurred_at, id",
    );
    let changes: Vec<(String, String, i32, String)> = changes
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let expected = [
        ("pdf-forms", "created", 1),
        ("pdf-forms", "updated", 2),
        ("payroll", "created", 1),
        ("big", "created", 1),
        ("big", "removed", 2),
    ];
    assert_eq!(changes.len(), expected.len(), "{changes:?}");
    for (change, (subject, action, version)) in changes.iter().zip(expected) {
        let change = (
            change.0.as_str(),
            change.1.as_str(),
            change.2,
            change.3.as_str(),
        );
        assert_eq!(change, (subject, action, version, "admin"));
    }
    let decisions = |filter: &str| {
        count(
            &env,
            &format!(
                "SELECT count(*) FROM audit_events WHERE kind = 'permission.decision' AND {filter}"
            ),
        )
    };
    crate::support::eventually("the reads are in the trail", WAIT, || {
        decisions("subject = 'skill/payroll' AND decision = 'deny' AND actor_id = 'alice'") == 1
            && decisions("subject = 'skill/pdf-forms' AND decision = 'deny' AND actor_id = 'carol'")
                == 2
            && decisions(
                "subject = 'skill/pdf-forms' AND decision = 'allow' AND actor_id = 'alice' \
                 AND attributes->>'action' = 'skills.read' AND attributes->>'version' = '1'",
            ) == 1
            && decisions(
                "subject = 'skill/pdf-forms' AND decision = 'allow' AND actor_id = 'alice' \
                 AND attributes->>'action' = 'skills.history'",
            ) == 1
    });

    // Exported as the files clients read skills from.
    let out = tempfile::tempdir().expect("a temp dir");
    let dir = out.path().join("state");
    let dir_arg = dir.display().to_string();
    let export = || {
        let (ok, stdout, err) = env.cli(&["export", "--dir", &dir_arg], None);
        assert!(ok, "{err}");
        stdout
    };
    let import = || env.cli(&["import", "--dir", &dir_arg], None);
    export();
    let exported = |name: &str| dir.join("skills").join(name).join("SKILL.md");
    let read_file = |name: &str| std::fs::read_to_string(exported(name)).expect("exported");
    assert_eq!(read_file("payroll"), payroll);
    assert_eq!(read_file("pdf-forms"), forms_v2);
    assert!(
        !dir.join("skills/big").exists(),
        "a removed skill was exported"
    );

    // Changed through the API since the export: the folder's old file is refused, not
    // applied over the change.
    let forms_v3 = forms_v2.replace("Check every field.", "Check every field twice.");
    assert_eq!(put("pdf-forms", &forms_v3).status, 200);
    let (ok, _, err) = import();
    assert!(
        !ok && err.contains("is version 2 of skill `pdf-forms`"),
        "{err}"
    );
    export();
    assert_eq!(read_file("pdf-forms"), forms_v3);

    // A file beside a SKILL.md is left alone by export and refused by import (it would
    // not be distributed); a symbolic link among the skills is refused by both.
    let stray = dir.join("skills/payroll/reference.md");
    std::fs::write(&stray, "# more\n").expect("stray file");
    export();
    assert!(stray.exists(), "export removed a file it did not write");
    let (ok, _, err) = import();
    assert!(
        !ok && err.contains("reference.md: only SKILL.md is imported"),
        "{err}"
    );
    std::fs::remove_file(&stray).expect("remove the stray file");
    let elsewhere = out.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("elsewhere");
    let linked = skill("linked", "Linked.", "", "x\n");
    std::fs::write(elsewhere.join("SKILL.md"), linked).expect("a skill elsewhere");
    std::os::unix::fs::symlink(&elsewhere, dir.join("skills/linked")).expect("a link");
    let (ok, _, err) = import();
    assert!(!ok && err.contains("symbolic link"), "{err}");
    let (ok, _, err) = env.cli(&["export", "--dir", &dir_arg], None);
    assert!(!ok && err.contains("symbolic link"), "{err}");
    std::fs::remove_file(dir.join("skills/linked")).expect("unlink");

    // Edited and added in git, then imported.
    let payroll_v2 = payroll.replace("Ask finance first.", "Ask finance first, in writing.");
    std::fs::write(exported("payroll"), &payroll_v2).expect("edit payroll");
    let onboarding = skill(
        "onboarding",
        "Set up a new laptop.",
        "",
        "Follow the wiki.\n",
    );
    std::fs::create_dir_all(dir.join("skills/onboarding")).expect("a new folder");
    // A folder whose SKILL.md names another skill is refused.
    let misnamed = onboarding.replace("name: onboarding", "name: other");
    std::fs::write(exported("onboarding"), misnamed).expect("misnamed");
    let (ok, _, err) = import();
    assert!(!ok && err.contains("`name` is `other`"), "{err}");
    std::fs::write(exported("onboarding"), &onboarding).expect("named again");

    let (ok, stdout, err) = env.cli(&["import", "--dir", &dir_arg, "--dry-run"], None);
    assert!(ok && stdout.contains("2 change(s)"), "{stdout}{err}");
    assert_eq!(
        send(&env, "GET", "/v1/skills/payroll", &bob, None).body,
        payroll
    );
    let (ok, stdout, err) = import();
    assert!(ok, "{err}");
    for line in [
        "changed: skill `onboarding` created",
        "changed: skill `payroll` updated",
        "2 change(s)",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    let read = send(&env, "GET", "/v1/skills/payroll", &bob, None);
    assert_eq!(read.body, payroll_v2);
    assert_eq!(read.header("warden-skill-version"), Some("2"));
    assert_eq!(list(&alice), ["onboarding", "pdf-forms"]);
    let imported: Vec<(String, Value)> = env
        .db
        .query(
            "SELECT actor_id, attributes::jsonb FROM audit_events WHERE kind = 'skill.changed' \
             AND attributes->>'origin' = 'import' ORDER BY subject",
        )
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(imported.len(), 2, "{imported:?}");
    assert!(imported[0].0.starts_with("cli:"), "{imported:?}");
    assert_eq!(imported[0].1["action"], "created");
    assert_eq!(imported[0].1["version"], 1);
    assert_eq!(imported[1].1["action"], "updated");
    assert_eq!(imported[1].1["version"], 2);
    assert_eq!(
        imported[1].1["previous_sha256"],
        json!(hex_sha256(&payroll))
    );
    // Imported again: nothing to change; exported again: the same bytes.
    let (ok, stdout, err) = import();
    assert!(ok && stdout.contains("0 change(s)"), "{stdout}{err}");
    assert!(export().contains("0 written"));
}

fn hex_sha256(text: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

#[test]
fn skill_reads_are_rate_limited_and_the_refusal_audited() {
    let env = Env::start(|p| {
        p.set("rate_limits.skills", json!("1/h"));
    });
    let alice = env.token("alice", "skills:read");
    assert_eq!(send(&env, "GET", "/v1/skills", &alice, None).status, 200);
    let limited = send(&env, "GET", "/v1/skills", &alice, None);
    assert_eq!(limited.status, 429, "{limited:?}");
    assert!(limited.header("retry-after").is_some(), "{limited:?}");
    crate::support::eventually("the refusal is in the trail", WAIT, || {
        count(
            &env,
            "SELECT count(*) FROM audit_events WHERE kind = 'rate_limit.rejected' \
             AND subject = 'skills' AND actor_id = 'alice'",
        ) == 1
    });
}

/// Reports `prompts/list_changed` on a channel.
#[derive(Clone)]
struct PromptListener {
    changed: tokio::sync::mpsc::UnboundedSender<()>,
}

impl rmcp::handler::client::ClientHandler for PromptListener {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        rmcp::model::ClientConfig::default()
    }

    async fn on_prompt_list_changed(
        &self,
        _context: rmcp::service::NotificationContext<rmcp::service::RoleClient>,
    ) {
        let _ = self.changed.send(());
    }
}

#[test]
fn skills_are_prompts_on_the_aggregate_endpoint_and_their_changes_are_announced() {
    let env = Env::start(|_| {});
    let admin = env.admin_token();
    let alice = env.token("alice", "tools:read skills:read");
    let carol = env.token("carol", "tools:read");
    let put = |name: &str, file: &str| {
        let answer = upload(&env, &admin, name, file);
        assert!(matches!(answer.status, 200 | 201), "{answer:?}");
    };
    let forms = skill("pdf-forms", "Fill in PDF forms.", "", "1. Open the form.\n");
    put("pdf-forms", &forms);
    let payroll = skill(
        "payroll",
        "Payroll checks.",
        "metadata:\n  warden-scopes: finance:read\n",
        "Ask finance.\n",
    );
    put("payroll", &payroll);

    // Listed and got by scope, as a stateless client does.
    let skill_prompts = |token: &str| -> Vec<String> {
        let listing = env.mcp(Some(token), "prompts/list", json!({}));
        assert_eq!(listing.status, 200, "{listing:?}");
        listing.json()["result"]["prompts"]
            .as_array()
            .expect("prompts")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .filter(|name| name.starts_with("skill__"))
            .map(str::to_owned)
            .collect()
    };
    // The replica that took the change serves it as soon as it answered.
    assert_eq!(skill_prompts(&alice), ["skill__pdf-forms"]);
    assert!(skill_prompts(&carol).is_empty());
    // A server's own endpoint shows the server as it is, without skills.
    let own = crate::identity::mcp_at(&env.url("/mcp/fx"), Some(&alice), "prompts/list", json!({}));
    assert_eq!(own.status, 200, "{own:?}");
    assert!(!own.body.contains("skill__"), "{own:?}");
    let got = env.mcp(
        Some(&alice),
        "prompts/get",
        json!({"name": "skill__pdf-forms"}),
    );
    let result = &got.json()["result"];
    assert_eq!(
        result["messages"][0]["content"]["text"],
        forms.as_str(),
        "{got:?}"
    );
    assert_eq!(result["messages"][0]["role"], "user");
    assert_eq!(result["description"], "Fill in PDF forms.");
    assert_eq!(result["_meta"]["warden/skillVersion"], 1);
    assert_eq!(
        result["_meta"]["warden/skillSha256"],
        hex_sha256(&forms).as_str()
    );
    // Nothing to complete (a skill's prompt takes no arguments), for who may read it.
    let complete = |token: &str, name: &str| {
        let params = json!({"ref": {"type": "ref/prompt", "name": name}, "argument": {"name": "x", "value": ""}});
        env.mcp(Some(token), "completion/complete", params).json()
    };
    assert_eq!(
        complete(&alice, "skill__pdf-forms")["result"]["completion"]["values"],
        json!([])
    );
    // A server's prompt: completed by the server, after a permission decision that is
    // recorded like every governed request's.
    complete(&alice, "fx__greet");
    let decided = |who: &str, decision: &str| {
        env.db
            .query(&format!(
                "SELECT 1 FROM audit_events WHERE kind = 'permission.decision' \
             AND actor_id = '{who}' AND subject = 'fx/greet' AND decision = '{decision}' \
             AND attributes->>'action' = 'completion/complete'"
            ))
            .len()
    };
    crate::support::eventually("the completion's decision recorded", WAIT, || {
        decided("alice", "allow") == 1
    });
    assert_eq!(
        complete(&carol, "skill__pdf-forms")["error"]
            .to_string()
            .replace("skill__pdf-forms", "NAME"),
        complete(&carol, "skill__nothing")["error"]
            .to_string()
            .replace("skill__nothing", "NAME")
    );
    // One the caller may not read is an unknown prompt, as one that does not exist.
    let error = |token: &str, name: &str| {
        let answer = env.mcp(Some(token), "prompts/get", json!({ "name": name }));
        let error = answer.json()["error"].clone();
        assert!(error.is_object(), "{answer:?}");
        error.to_string().replace(name, "NAME")
    };
    assert_eq!(
        error(&carol, "skill__pdf-forms"),
        error(&carol, "skill__nothing")
    );
    assert_eq!(
        error(&alice, "skill__payroll"),
        error(&alice, "skill__nothing")
    );
    crate::support::eventually("the prompt reads are in the trail", WAIT, || {
        let decisions = |filter: &str| {
            count(
                &env,
                &format!(
                    "SELECT count(*) FROM audit_events WHERE kind = 'permission.decision' \
                     AND attributes->>'action' = 'prompts/get' AND {filter}"
                ),
            )
        };
        decisions(
            "subject = 'skill/pdf-forms' AND decision = 'allow' AND actor_id = 'alice' \
             AND attributes->>'version' = '1'",
        ) == 1
            && decisions("subject = 'skill/pdf-forms' AND decision = 'deny' AND actor_id = 'carol'")
                == 1
            && decisions("subject = 'skill/payroll' AND decision = 'deny' AND actor_id = 'alice'")
                == 1
    });

    // A client with a session hears that its prompts changed, and lists the new one.
    let url = env.url("/mcp");
    let upload = env.url("/admin/skills/onboarding");
    let (token, admin_token) = (alice.clone(), admin.clone());
    crate::support::rt::block_on(async move {
        use rmcp::ServiceExt as _;
        use rmcp::transport::streamable_http_client::{
            StreamableHttpClientTransport, StreamableHttpClientTransportConfig,
        };
        let http = warden_actors::upstream::http::client_builder()
            .build()
            .expect("a client");
        let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token);
        let transport = StreamableHttpClientTransport::with_client(http, config);
        let (changed, mut heard) = tokio::sync::mpsc::unbounded_channel();
        let client = PromptListener { changed }
            .serve(transport)
            .await
            .expect("the rmcp client connects");
        let names = |prompts: Vec<rmcp::model::Prompt>| -> Vec<String> {
            prompts
                .into_iter()
                .map(|p| p.name.to_string())
                .filter(|n| n.starts_with("skill__"))
                .collect()
        };
        let before = client.list_all_prompts().await.expect("prompts/list");
        assert_eq!(names(before), ["skill__pdf-forms"]);
        let onboarding = skill("onboarding", "Set up a laptop.", "", "Follow the wiki.\n");
        // The admin API, from a blocking thread (the test's HTTP client blocks).
        let admin_call = |method: &'static str, body: Option<String>| {
            let (url, bearer) = (upload.clone(), format!("Bearer {admin_token}"));
            tokio::task::spawn_blocking(move || {
                let body = body.as_ref().map(String::as_bytes);
                http::request(method, &url, &[("Authorization", &bearer)], body).expect("an answer")
            })
        };
        let heard_in_time = async |heard: &mut tokio::sync::mpsc::UnboundedReceiver<()>| {
            tokio::time::timeout(WAIT, heard.recv())
                .await
                .expect("prompts/list_changed reached the client in time")
                .expect("the handler is alive");
        };
        let answer = admin_call("PUT", Some(onboarding))
            .await
            .expect("the upload ran");
        assert_eq!(answer.status, 201, "{answer:?}");
        heard_in_time(&mut heard).await;
        let after = client.list_all_prompts().await.expect("prompts/list");
        assert_eq!(names(after), ["skill__onboarding", "skill__pdf-forms"]);
        // Removed: announced, and gone from the list.
        let removed = admin_call("DELETE", None).await.expect("the removal ran");
        assert_eq!(removed.status, 200, "{removed:?}");
        heard_in_time(&mut heard).await;
        let last = client.list_all_prompts().await.expect("prompts/list");
        assert_eq!(names(last), ["skill__pdf-forms"]);
        let _ = client.cancel().await;
    });

    // A change made by another process (`warden import`) reaches this one through
    // PostgreSQL's notice.
    let folder = tempfile::tempdir().expect("a temp dir");
    let release = skill("release", "Cut a release.", "", "Tag it.\n");
    std::fs::create_dir_all(folder.path().join("skills/release")).expect("a skill folder");
    std::fs::write(folder.path().join("skills/release/SKILL.md"), release).expect("a skill");
    let folder_arg = folder.path().display().to_string();
    let (ok, stdout, err) = env.cli(&["import", "--dir", &folder_arg], None);
    assert!(
        ok && stdout.contains("skill `release` created"),
        "{stdout}{err}"
    );
    crate::support::eventually("the imported skill is a prompt", WAIT, || {
        skill_prompts(&alice) == ["skill__pdf-forms", "skill__release"]
    });
}

#[test]
fn a_server_may_not_take_the_skills_prompt_names() {
    let env_profile = "servers:\n  skill:\n    command: /bin/true\n";
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("warden.yaml");
    std::fs::write(&path, env_profile).expect("a profile");
    let output = std::process::Command::new(crate::support::warden::bin())
        .args(["config", "check"])
        .arg(&path)
        .output()
        .expect("warden runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("servers.skill: the server name `skill` is reserved for Warden's skills"),
        "{stderr}"
    );
}

#[test]
fn the_command_line_changes_skills_and_the_running_instance_serves_them() {
    let env = Env::start(|p| {
        p.set("server.max_body_bytes", json!(BODY_LIMIT));
    });
    let alice = env.token("alice", "skills:read");
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("SKILL.md");
    let path = file.display().to_string();
    let triage = skill(
        "triage",
        "Triage a bug report.",
        "",
        "Reproduce it first.\n",
    );
    std::fs::write(&file, &triage).expect("a skill file");

    let (ok, stdout, err) = env.cli(&["skill", "put", &path], None);
    assert!(
        ok && stdout.contains("skill `triage` created (version 1)"),
        "{stdout}{err}"
    );
    let (ok, stdout, err) = env.cli(&["skill", "put", &path], None);
    assert!(
        ok && stdout.contains("skill `triage` unchanged (version 1)"),
        "{stdout}{err}"
    );
    // Announced to the running instance, which serves it as a prompt (the HTTP routes
    // read PostgreSQL; the prompts are what the notice refreshes).
    let prompts = || {
        env.mcp(Some(&alice), "prompts/list", json!({})).json()["result"]["prompts"]
            .as_array()
            .expect("prompts")
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .filter(|name| name.starts_with("skill__"))
            .collect::<Vec<String>>()
    };
    crate::support::eventually("the running instance serves the skill", WAIT, || {
        prompts() == ["skill__triage"]
    });
    assert_eq!(
        send(&env, "GET", "/v1/skills/triage", &alice, None).body,
        triage
    );
    let (ok, stdout, err) = env.cli(&["skill", "list"], None);
    assert!(
        ok && stdout.contains("triage\tversion=1\tscopes=(skills.scopes)\tupdated="),
        "{stdout}{err}"
    );
    let (ok, stdout, _) = env.cli(&["skill", "show", "triage"], None);
    assert!(ok);
    assert_eq!(stdout, triage);

    // Refused, naming the file and what is wrong; nothing stored.
    std::fs::write(&file, "---\nname: Triage\ndescription: x\n---\n").expect("a bad file");
    let (ok, _, err) = env.cli(&["skill", "put", &path], None);
    assert!(
        !ok && err.contains("SKILL.md: `name` `Triage` must be"),
        "{err}"
    );
    let big = skill("big", "Big.", "", &"x".repeat(BODY_LIMIT));
    std::fs::write(&file, big).expect("a big file");
    let (ok, _, err) = env.cli(&["skill", "put", &path], None);
    assert!(!ok && err.contains("server.max_body_bytes"), "{err}");

    let (ok, stdout, err) = env.cli(&["skill", "remove", "triage"], None);
    assert!(
        ok && stdout.contains("skill `triage` removed (version 2)"),
        "{stdout}{err}"
    );
    let (ok, _, err) = env.cli(&["skill", "remove", "triage"], None);
    assert!(!ok && err.contains("no skill `triage`"), "{err}");
    crate::support::eventually("the running instance no longer serves it", WAIT, || {
        prompts().is_empty()
    });
    assert_eq!(
        send(&env, "GET", "/v1/skills/triage", &alice, None).status,
        404
    );
    let (ok, stdout, _) = env.cli(&["skill", "show", "triage", "--version", "1"], None);
    assert!(ok && stdout == triage, "{stdout}");
    let origins: Vec<(String, String)> = env
        .db
        .query(
            "SELECT attributes->>'action', attributes->>'origin' FROM audit_events \
             WHERE kind = 'skill.changed' AND subject = 'triage' ORDER BY occurred_at, id",
        )
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        origins,
        [
            ("created".to_owned(), "cli".to_owned()),
            ("removed".to_owned(), "cli".to_owned())
        ]
    );
}

/// `warden skill pull` as a user runs it: no profile.
fn warden_pull(url: &str, token_file: &str, dir: &str) -> (bool, String, String) {
    let output = std::process::Command::new(crate::support::warden::bin())
        .args([
            "skill",
            "pull",
            "--url",
            url,
            "--token-file",
            token_file,
            "--dir",
            dir,
        ])
        .env_remove("WARDEN_TOKEN")
        .output()
        .expect("warden runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_user_pulls_the_skills_given_to_them_into_a_folder() {
    let env = Env::start(|_| {});
    let admin = env.admin_token();
    let alice = env.token("alice", "skills:read");
    let put = |name: &str, file: &str| {
        let answer = upload(&env, &admin, name, file);
        assert!(matches!(answer.status, 200 | 201), "{answer:?}");
    };
    let forms = skill("pdf-forms", "Fill in PDF forms.", "", "Open it.\n");
    let notes = skill("notes", "Take notes.", "", "Write.\n");
    let payroll = skill(
        "payroll",
        "Payroll.",
        "metadata:\n  warden-scopes: finance:read\n",
        "Ask.\n",
    );
    put("pdf-forms", &forms);
    put("notes", &notes);
    put("payroll", &payroll);

    let home = tempfile::tempdir().expect("a temp dir");
    let token_file = home.path().join("token");
    std::fs::write(&token_file, &alice).expect("a token file");
    let skills = home.path().join("skills");
    // A folder of the user's own, named like a skill Warden will give later.
    std::fs::create_dir_all(skills.join("review")).expect("the user's own skill");
    std::fs::write(skills.join("review/SKILL.md"), "mine\n").expect("the user's file");
    let url = env.url("");
    let (token_arg, dir_arg) = (
        token_file.display().to_string(),
        skills.display().to_string(),
    );
    let pull = || {
        let (ok, stdout, stderr) = warden_pull(&url, &token_arg, &dir_arg);
        assert!(ok, "{stdout}{stderr}");
        (stdout, stderr)
    };
    let read = |name: &str| std::fs::read_to_string(skills.join(name).join("SKILL.md")).ok();

    let (stdout, _) = pull();
    assert!(stdout.contains("2 created (notes, pdf-forms)"), "{stdout}");
    assert_eq!(read("pdf-forms").as_deref(), Some(forms.as_str()));
    assert_eq!(read("notes").as_deref(), Some(notes.as_str()));
    assert_eq!(
        read("payroll"),
        None,
        "a skill alice may not read was pulled"
    );
    let (stdout, _) = pull();
    assert!(
        stdout.contains("0 created, 0 updated, 0 removed, 2 unchanged"),
        "{stdout}"
    );
    // A file of the user's beside a pulled SKILL.md, kept when the skill goes.
    std::fs::write(skills.join("notes/mine.txt"), "keep me\n").expect("a user's file");

    // Changed, removed, and one named like the user's own folder; and a file edited by
    // hand, which is then neither written over nor removed.
    let forms_v2 = forms.replace("Open it.", "Open it, then check it.");
    put("pdf-forms", &forms_v2);
    assert_eq!(
        send(&env, "DELETE", "/admin/skills/notes", &admin, None).status,
        200
    );
    put("review", &skill("review", "Review.", "", "Read.\n"));
    let (stdout, stderr) = pull();
    assert!(
        stdout.contains("0 created, 1 updated (pdf-forms), 1 removed (notes), 0 unchanged"),
        "{stdout}"
    );
    assert!(
        stderr.contains("is not one `warden skill pull` wrote"),
        "{stderr}"
    );
    assert_eq!(read("pdf-forms").as_deref(), Some(forms_v2.as_str()));
    assert_eq!(read("notes"), None);
    assert_eq!(
        std::fs::read_to_string(skills.join("notes/mine.txt"))
            .ok()
            .as_deref(),
        Some("keep me\n")
    );
    assert_eq!(read("review").as_deref(), Some("mine\n"));

    std::fs::write(skills.join("pdf-forms/SKILL.md"), "edited\n").expect("an edit");
    put("pdf-forms", &forms);
    let (_, stderr) = pull();
    assert!(stderr.contains("was edited by hand"), "{stderr}");
    assert_eq!(read("pdf-forms").as_deref(), Some("edited\n"));
    assert_eq!(
        send(&env, "DELETE", "/admin/skills/pdf-forms", &admin, None).status,
        200
    );
    let (_, stderr) = pull();
    assert!(
        stderr.contains("it stays though skill `pdf-forms` is no longer given"),
        "{stderr}"
    );
    assert_eq!(read("pdf-forms").as_deref(), Some("edited\n"));

    // A skill folder that is a symbolic link is neither written through nor fatal.
    let elsewhere = home.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("elsewhere");
    std::os::unix::fs::symlink(&elsewhere, skills.join("linked")).expect("a link");
    put("linked", &skill("linked", "Linked.", "", "x\n"));
    let (_, stderr) = pull();
    assert!(
        stderr.contains("is a symbolic link; skill `linked` is not written"),
        "{stderr}"
    );
    assert!(!elsewhere.join("SKILL.md").exists());
    // Nothing half-written is left behind.
    let mut leftovers = Vec::new();
    let mut folders = vec![skills.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("a folder").flatten() {
            let path = entry.path();
            if path.is_dir() && !path.is_symlink() {
                folders.push(path);
            } else if path.to_string_lossy().ends_with(".tmp") {
                leftovers.push(path);
            }
        }
    }
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A bad token is an error naming the answer.
    std::fs::write(&token_file, "not-a-token").expect("a bad token");
    let (ok, _, stderr) = warden_pull(&url, &token_arg, &dir_arg);
    assert!(!ok && stderr.contains("401"), "{stderr}");
}
