//! `warden export` and `warden import` against a running Warden: the files a compliance
//! team keeps in git, byte for byte stable; an edited file applied, checked first and
//! atomically; the running instance hearing of it and recording it in the trail.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::{Env, PASSWORD};
use crate::support::http;

const WAIT: Duration = Duration::from_secs(30);

/// Every file under `dir`, by relative path.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).expect("readable folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(dir).expect("under dir");
                files.insert(
                    relative.display().to_string(),
                    std::fs::read_to_string(&path).expect("text file"),
                );
            }
        }
    }
    files
}

#[test]
fn export_is_byte_stable_and_import_applies_a_reviewed_change() {
    let env = Env::start(|p| {
        p.set("roles.ops", json!({"scopes": ["tools:read"]}));
        p.set("roles.auditor", json!({"scopes": ["audit:read"]}));
    });
    env.add_user("bob", "ops");
    let client_id = env.register("http://127.0.0.1:9/callback");
    let (ok, _, err) = env.cli(&["secret", "set", "gh_token"], Some("ghp_not_exported_123"));
    assert!(ok, "{err}");
    // Tool definitions are pinned when a listing first shows them.
    let listed = env.tool_names(&env.admin_token()).len() as i64;
    crate::support::eventually("the listed tools are pinned", WAIT, || {
        let rows = env
            .db
            .query("SELECT count(*) FROM tool_pins WHERE server_name = 'fx'");
        rows[0].get::<_, i64>(0) == listed
    });
    let out = tempfile::tempdir().expect("a temp dir");
    let dir = out.path().join("warden-state");
    let dir_arg = dir.display().to_string();
    let export = || {
        let (ok, stdout, err) = env.cli(&["export", "--dir", &dir_arg], None);
        assert!(ok, "export failed: {err}");
        stdout
    };

    // What a reviewer reads.
    let first = export();
    let files = snapshot(&dir);
    let bob = &files["users/bob.md"];
    assert!(
        bob.starts_with(
            "---\nname: \"bob\"\nkind: \"user\"\nroles: [\"ops\"]\ndisabled: false\ncreated_at: \""
        ),
        "{bob}"
    );
    assert!(
        !bob.contains("password") && !bob.contains("argon2"),
        "{bob}"
    );
    let client = &files[&format!("clients/{client_id}.md")];
    assert!(
        client.contains("redirect_uris: [\"http://127.0.0.1:9/callback\"]"),
        "{client}"
    );
    let secret = &files["secrets/gh_token.md"];
    assert!(secret.contains("name: \"gh_token\""), "{secret}");
    assert!(
        files
            .values()
            .all(|text| !text.contains("ghp_not_exported_123")),
        "a secret's value was exported"
    );
    let echo = &files["tools/fx/echo.md"];
    assert!(
        echo.contains("server: \"fx\"\ntool: \"echo\"\napproved_hash: \"")
            && echo.contains("## Approved definition\n\n```json\n"),
        "{echo}"
    );
    assert!(
        first.contains(&format!("{} written, 0 unchanged", files.len())),
        "{first}"
    );

    // The same state, the same bytes, nothing rewritten; an import of it changes nothing.
    let second = export();
    assert_eq!(snapshot(&dir), files);
    assert!(
        second.contains(&format!("0 written, {} unchanged, 0 removed", files.len())),
        "{second}"
    );
    let (ok, stdout, err) = env.cli(&["import", "--dir", &dir_arg], None);
    assert!(ok && stdout.contains("0 change(s)"), "{stdout}{err}");

    // A reviewed change: bob moves to auditor and is disabled; carol is added.
    let edited = bob
        .replace("roles: [\"ops\"]", "roles: [\"auditor\"]")
        .replace("disabled: false", "disabled: true");
    std::fs::write(dir.join("users/bob.md"), &edited).expect("edit bob");
    let carol = bob
        .replace("\"bob\"", "\"carol\"")
        .replace("# bob", "# carol");
    std::fs::write(dir.join("users/carol.md"), carol).expect("add carol");
    let (ok, stdout, err) = env.cli(&["import", "--dir", &dir_arg, "--dry-run"], None);
    assert!(ok, "{err}");
    for line in [
        "would change: roles of `bob` set to [auditor]",
        "would change: `bob` disabled",
        "would change: user `carol` created (no password)",
        "3 change(s)",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    let (_, list, _) = env.cli(&["user", "list"], None);
    assert!(
        list.contains("bob\tuser\troles=ops\tenabled"),
        "a dry run changed: {list}"
    );

    // A file that names a role the profile lacks stops the whole import.
    let bad = bob
        .replace("\"bob\"", "\"dave\"")
        .replace("[\"ops\"]", "[\"nope\"]");
    std::fs::write(dir.join("users/dave.md"), bad).expect("add dave");
    let (ok, _, err) = env.cli(&["import", "--dir", &dir_arg], None);
    assert!(
        !ok && err.contains("users/dave.md: roles: `nope` is not a role of the profile"),
        "{err}"
    );
    let (_, list, _) = env.cli(&["user", "list"], None);
    assert!(
        list.contains("bob\tuser\troles=ops\tenabled") && !list.contains("carol"),
        "a refused import changed something: {list}"
    );
    std::fs::remove_file(dir.join("users/dave.md")).expect("remove dave");

    let (ok, stdout, err) = env.cli(&["import", "--dir", &dir_arg], None);
    assert!(ok && stdout.contains("3 change(s)"), "{stdout}{err}");
    let (_, list, _) = env.cli(&["user", "list"], None);
    assert!(
        list.contains("bob\tuser\troles=auditor\tdisabled"),
        "{list}"
    );
    assert!(
        list.contains("carol\tuser\troles=ops\tenabled\tpassword=none"),
        "{list}"
    );
    let (ok, _, err) = env.cli(&["user", "passwd", "carol"], Some(PASSWORD));
    assert!(ok, "{err}");

    // The trail says who changed what, once.
    let rows = env.db.query(
        "SELECT count(*) FROM audit_events WHERE kind = 'identity.changed' \
         AND attributes->'detail'->>'origin' = 'import' AND actor_id LIKE 'cli:%'",
    );
    assert_eq!(rows[0].get::<_, i64>(0), 3);

    // The next export shows the change, and drops what is gone.
    let (ok, _, err) = env.cli(&["secret", "delete", "gh_token"], None);
    assert!(ok, "{err}");
    let third = export();
    assert!(third.contains("1 removed"), "{third}");
    let after = snapshot(&dir);
    assert_eq!(after["users/bob.md"], edited);
    assert!(!after.contains_key("secrets/gh_token.md"));

    // What is not Warden's in the folder is left alone.
    std::fs::write(dir.join("README.md"), "# our review notes\n").expect("readme");
    std::fs::write(dir.join("users/notes.txt"), "not an identity").expect("notes");
    std::fs::create_dir_all(dir.join("other")).expect("other folder");
    std::fs::write(dir.join("other/x.md"), "mine").expect("other file");
    let fourth = export();
    assert!(
        fourth.contains("0 written") && fourth.contains("0 removed"),
        "{fourth}"
    );
    assert!(dir.join("README.md").exists() && dir.join("users/notes.txt").exists());
    assert!(dir.join("other/x.md").exists());

    // A symbolic link in the folders export writes is refused, not followed.
    let elsewhere = out.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("elsewhere");
    std::fs::write(elsewhere.join("victim.md"), "keep me").expect("victim");
    std::fs::remove_dir_all(dir.join("secrets")).ok();
    std::os::unix::fs::symlink(&elsewhere, dir.join("secrets")).expect("symlink");
    let (ok, _, err) = env.cli(&["export", "--dir", &dir_arg], None);
    assert!(!ok && err.contains("is a symbolic link"), "{err}");
    assert!(
        elsewhere.join("victim.md").exists(),
        "export deleted through a link"
    );
    std::fs::remove_file(dir.join("secrets")).expect("unlink");

    // Import refuses what it cannot apply, naming the file.
    let kind_changed = std::fs::read_to_string(dir.join("users/carol.md"))
        .expect("carol's file")
        .replace("kind: \"user\"", "kind: \"service\"");
    std::fs::write(dir.join("users/carol.md"), kind_changed).expect("edit carol");
    let (ok, _, err) = env.cli(&["import", "--dir", &dir_arg], None);
    assert!(
        !ok && err.contains("users/carol.md: `carol` is a user in the database, not a service"),
        "{err}"
    );
    std::fs::remove_file(dir.join("users/carol.md")).expect("remove carol");
    let federated = "---\nname: \"https://idp.example|u1\"\nkind: \"federated\"\nroles: []\ndisabled: true\n---\n";
    std::fs::write(dir.join("users/fed.md"), federated).expect("federated");
    let (ok, _, err) = env.cli(&["import", "--dir", &dir_arg], None);
    assert!(
        !ok && err.contains("users/fed.md: federated identity") && err.contains("first login"),
        "{err}"
    );
    std::fs::remove_file(dir.join("users/fed.md")).expect("remove fed");

    // A tool whose definition changed is withheld; the export shows both definitions,
    // and a reviewed file that names the new one approves it.
    let admin = env.admin_token();
    let mutated = env.call_tool(&admin, "fx__mutate_tools", json!({}));
    assert_eq!(mutated.status, 200, "{mutated:?}");
    crate::support::eventually("the changed echo withheld", WAIT, || {
        !env.tool_names(&admin).contains(&"fx__echo".to_owned())
    });
    let pending = || {
        env.db.query(
            "SELECT pending_hash FROM tool_pins WHERE server_name = 'fx' AND tool_name = 'echo'",
        )[0]
        .get::<_, Option<String>>(0)
    };
    crate::support::eventually("the pending definition stored", WAIT, || {
        pending().is_some()
    });
    let pending_hash = pending().expect("a pending definition");
    export();
    let echo = std::fs::read_to_string(dir.join("tools/fx/echo.md")).expect("echo's file");
    assert!(
        echo.contains(&format!("pending_hash: \"{pending_hash}\""))
            && echo.contains("## Changed definition, withheld until approved"),
        "{echo}"
    );
    let approved_line = echo
        .lines()
        .find(|line| line.starts_with("approved_hash: "))
        .expect("an approved_hash line")
        .to_owned();
    // A file approving a definition that is no longer the one withheld stops the import.
    let pending_line = format!("pending_hash: \"{pending_hash}\"");
    let out_of_date = echo
        .replace(&approved_line, "approved_hash: \"0123\"")
        .replace(&pending_line, "pending_hash: \"0123\"");
    std::fs::write(dir.join("tools/fx/echo.md"), out_of_date).expect("stale edit");
    let (ok, _, err) = env.cli(&["import", "--dir", &dir_arg], None);
    assert!(
        !ok && err.contains("tools/fx/echo.md: approved_hash names a definition that is no longer"),
        "{err}"
    );
    let approving = echo.replace(
        &approved_line,
        &format!("approved_hash: \"{pending_hash}\""),
    );
    std::fs::write(dir.join("tools/fx/echo.md"), approving).expect("approve in the file");
    let (ok, stdout, err) = env.cli(&["import", "--dir", &dir_arg, "--dry-run"], None);
    assert!(
        ok && stdout.contains("would change: the changed definition of `fx`/`echo` approved"),
        "{stdout}{err}"
    );
    assert_eq!(
        pending().as_deref(),
        Some(pending_hash.as_str()),
        "a dry run approved"
    );
    let (ok, stdout, err) = env.cli(&["import", "--dir", &dir_arg], None);
    assert!(
        ok && stdout.contains(&format!(
            "changed: the changed definition of `fx`/`echo` approved ({pending_hash})"
        )),
        "{stdout}{err}"
    );
    // The running instance hears of it and serves the tool again; the trail says who.
    crate::support::eventually("the approved echo listed again", WAIT, || {
        env.tool_names(&admin).contains(&"fx__echo".to_owned())
    });
    let approvals = env.db.query(
        "SELECT actor_id, attributes::text FROM audit_events \
         WHERE kind = 'tool.definition_approved' AND subject = 'fx/echo'",
    );
    assert_eq!(approvals.len(), 1);
    assert!(approvals[0].get::<_, String>(0).starts_with("cli:"));
    let attributes: serde_json::Value =
        serde_json::from_str(&approvals[0].get::<_, String>(1)).expect("JSON attributes");
    assert_eq!(attributes["hash"], pending_hash.as_str());
    assert_eq!(attributes["origin"], "import");
    assert_eq!(attributes["definition"]["name"], "echo", "{attributes}");
}

/// Whether the import's summary line says `n` changes.
fn changes(stdout: &str, n: usize) -> bool {
    stdout
        .lines()
        .any(|line| line.starts_with(&format!("{n} change(s) ")))
}

#[test]
fn import_prune_disables_identities_and_removes_skills_that_have_no_file() {
    let env = Env::start(|p| {
        p.set("roles.ops", json!({"scopes": ["tools:read"]}));
    });
    // `.ops` is written as `%2Eops.md`: its file is found by the name inside.
    for user in ["bob", "carol", ".ops"] {
        env.add_user(user, "ops");
    }
    let (ok, _, err) = env.cli(
        &[
            "apikey",
            "create",
            "--name",
            "ci-bot",
            "--scopes",
            "tools:read",
        ],
        None,
    );
    assert!(ok, "{err}");
    let work = tempfile::tempdir().expect("a temp dir");
    let skill_file = work.path().join("SKILL.md");
    for name in ["triage", "deploy"] {
        let text = format!("---\nname: {name}\ndescription: The {name} skill.\n---\nSteps.\n");
        std::fs::write(&skill_file, text).expect("a skill file");
        let (ok, _, err) = env.cli(&["skill", "put", &skill_file.display().to_string()], None);
        assert!(ok, "{err}");
    }
    let dir = work.path().join("warden-state");
    let dir_arg = dir.display().to_string();
    let (ok, _, err) = env.cli(&["export", "--dir", &dir_arg], None);
    assert!(ok, "{err}");
    assert!(dir.join("users/%2Eops.md").exists());

    // Without --prune, removed files change nothing (as before).
    for file in ["users/carol.md", "users/ci-bot.md", "users/admin.md"] {
        std::fs::remove_file(dir.join(file)).expect("remove a file");
    }
    std::fs::remove_dir_all(dir.join("skills/deploy")).expect("remove deploy");
    let (ok, stdout, err) = env.cli(&["import", "--dir", &dir_arg], None);
    assert!(ok && changes(&stdout, 0), "{stdout}{err}");

    // With it: carol and the service account are disabled (not deleted), the skill is
    // removed; the bootstrap admin is kept (disabled only on purpose). A dry run first.
    let (ok, stdout, err) = env.cli(&["import", "--dir", &dir_arg, "--prune", "--dry-run"], None);
    assert!(ok, "{err}");
    for line in [
        "would change: `carol` disabled: it has no file under users/ (--prune)",
        "would change: `ci-bot` disabled: it has no file under users/ (--prune)",
        "would change: skill `deploy` removed: it has no folder under skills/ (--prune)",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    assert!(changes(&stdout, 3), "{stdout}");
    let (_, list, _) = env.cli(&["user", "list"], None);
    assert!(
        list.contains("carol\tuser\troles=ops\tenabled"),
        "a dry run changed: {list}"
    );

    let (ok, stdout, err) = env.cli(&["import", "--dir", &dir_arg, "--prune"], None);
    assert!(ok && changes(&stdout, 3), "{stdout}{err}");
    let (_, list, _) = env.cli(&["user", "list"], None);
    for expected in [
        "carol\tuser\troles=ops\tdisabled",
        "ci-bot\tservice",
        "bob\tuser\troles=ops\tenabled",
        ".ops\tuser\troles=ops\tenabled",
        "admin\tservice\troles=admin\tenabled",
    ] {
        assert!(list.contains(expected), "missing `{expected}` in:\n{list}");
    }
    assert!(
        list.lines()
            .any(|l| l.starts_with("ci-bot\t") && l.contains("\tdisabled")),
        "{list}"
    );
    let (_, skills, _) = env.cli(&["skill", "list"], None);
    assert!(
        skills.contains("triage") && !skills.contains("deploy"),
        "{skills}"
    );
    // Each recorded once, as pruned by the import.
    let pruned = env.db.query(
        "SELECT count(*) FROM audit_events WHERE kind = 'identity.changed' \
         AND subject IN ('carol', 'ci-bot') \
         AND attributes->'detail'->>'pruned' = 'true' AND actor_id LIKE 'cli:%'",
    );
    assert_eq!(pruned[0].get::<_, i64>(0), 2);
    let removed = env.db.query(
        "SELECT count(*) FROM audit_events WHERE kind = 'skill.changed' AND subject = 'deploy' \
         AND attributes->>'action' = 'removed' AND attributes->>'origin' = 'import'",
    );
    assert_eq!(removed[0].get::<_, i64>(0), 1);
    // Pruning again finds nothing: disabled identities are not disabled twice.
    let (ok, stdout, err) = env.cli(&["import", "--dir", &dir_arg, "--prune"], None);
    assert!(ok && changes(&stdout, 0), "{stdout}{err}");

    // Without skills/ the folder says nothing about skills: none is removed.
    std::fs::remove_dir_all(dir.join("skills")).expect("remove skills/");
    let (ok, stdout, err) = env.cli(&["import", "--dir", &dir_arg, "--prune", "--dry-run"], None);
    assert!(ok && changes(&stdout, 0), "{stdout}{err}");

    // A folder that went through a case-insensitive file system: refused whole.
    env.add_user("Dana", "ops");
    env.add_user("dana", "ops");
    let (ok, _, err) = env.cli(&["export", "--dir", &dir_arg], None);
    assert!(ok, "{err}");
    std::fs::remove_file(dir.join("users/Dana.md")).expect("remove Dana");
    let (ok, _, err) = env.cli(&["import", "--dir", &dir_arg, "--prune"], None);
    assert!(!ok && err.contains("no file for `Dana`"), "{err}");

    // A folder without identity files is not an export: --prune refuses it whole.
    let empty = work.path().join("empty");
    std::fs::create_dir_all(empty.join("users")).expect("an empty users/");
    std::fs::write(empty.join("users/notes.txt"), "not an identity").expect("notes");
    let empty_arg = empty.display().to_string();
    let (ok, _, err) = env.cli(&["import", "--dir", &empty_arg, "--prune"], None);
    assert!(
        !ok && err.contains("users: holds no identity file"),
        "{err}"
    );
    let (_, list, _) = env.cli(&["user", "list"], None);
    assert!(list.contains("bob\tuser\troles=ops\tenabled"), "{list}");
    assert!(list.contains("Dana\tuser\troles=ops\tenabled"), "{list}");
}

/// The status of `GET /admin/servers` with `token`.
fn admin_status(env: &Env, token: &str) -> u16 {
    let bearer = format!("Bearer {token}");
    http::request(
        "GET",
        &env.url("/admin/servers"),
        &[("Authorization", &bearer)],
        None,
    )
    .expect("GET /admin/servers")
    .status
}

#[test]
fn a_disabled_or_revoked_bootstrap_admin_stays_refused_across_a_restart() {
    let mut env = Env::start(|_| {});
    let admin = env.admin_token();
    assert!(!env.tool_names(&admin).is_empty());
    let (ok, _, err) = env.cli(&["user", "disable", "admin"], None);
    assert!(ok, "{err}");
    let status = env.warden.sigterm();
    assert!(status.success(), "{}", env.warden.log());
    env.warden = env.profile.start();
    assert_eq!(admin_status(&env, &admin), 401);
    assert!(
        env.warden
            .log()
            .contains("the bootstrap admin account is disabled"),
        "{}",
        env.warden.log()
    );
    // Enabled again, the same token works after the next start.
    let (ok, _, err) = env.cli(&["user", "enable", "admin"], None);
    assert!(ok, "{err}");
    let status = env.warden.sigterm();
    assert!(status.success(), "{}", env.warden.log());
    env.warden = env.profile.start();
    assert!(!env.tool_names(&admin).is_empty());

    // Its key revoked by id (not by the account's name): refused at once by the
    // running server, and after a restart.
    let (ok, keys, err) = env.cli(&["apikey", "list"], None);
    assert!(ok, "{err}");
    let id = keys
        .lines()
        .find(|line| line.contains("admin") && line.contains("active"))
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("the admin key in:\n{keys}"))
        .to_owned();
    let (ok, _, err) = env.cli(&["apikey", "revoke", &id], None);
    assert!(ok, "{err}");
    crate::support::eventually("the revoked bootstrap token refused", WAIT, || {
        admin_status(&env, &admin) == 401
    });
    let status = env.warden.sigterm();
    assert!(status.success(), "{}", env.warden.log());
    env.warden = env.profile.start();
    assert_eq!(
        admin_status(&env, &admin),
        401,
        "a revoked bootstrap token was accepted after a restart"
    );
}
