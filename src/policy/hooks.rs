//! Lifecycle hooks: the moments an external action may fire, as one enum — the contract —
//! and the handlers that run on them, in-process on the call path.
//!
//! Matchers (server, tool, principal, role, scope) are globs or regexes **compiled when
//! the profile is loaded**; dispatch picks a event's hooks from a per-event list and runs
//! compiled matchers, never interpreting strings per call. With no hook for an event,
//! dispatch is an empty-slice check.
//!
//! Hooks run in profile order; the first `deny` wins. A `command` or `webhook` may rewrite
//! the tool arguments (PreToolUse) or the result (PostToolUse). A hook that hangs is
//! killed at its timeout and its `on_error` decides. Every hook's outcome is reported
//! (name, outcome, duration) for the audit trail.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, Mac};
use regex::Regex;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_actors::redact::Redacted;

use super::credentials;

/// When a hook can fire. The list is the contract: adding a variant is a change to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum HookEvent {
    PreToolUse,
    PostToolUse,
    PostToolUseFailure,
    SessionStart,
    SessionEnd,
    UserPromptSubmit,
    Notification,
    Stop,
    SubagentStart,
    SubagentStop,
}

impl HookEvent {
    pub const ALL: [HookEvent; 10] = [
        HookEvent::PreToolUse,
        HookEvent::PostToolUse,
        HookEvent::PostToolUseFailure,
        HookEvent::SessionStart,
        HookEvent::SessionEnd,
        HookEvent::UserPromptSubmit,
        HookEvent::Notification,
        HookEvent::Stop,
        HookEvent::SubagentStart,
        HookEvent::SubagentStop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::PreToolUse => "PreToolUse",
            HookEvent::PostToolUse => "PostToolUse",
            HookEvent::PostToolUseFailure => "PostToolUseFailure",
            HookEvent::SessionStart => "SessionStart",
            HookEvent::SessionEnd => "SessionEnd",
            HookEvent::UserPromptSubmit => "UserPromptSubmit",
            HookEvent::Notification => "Notification",
            HookEvent::Stop => "Stop",
            HookEvent::SubagentStart => "SubagentStart",
            HookEvent::SubagentStop => "SubagentStop",
        }
    }

    pub fn parse(text: &str) -> Option<HookEvent> {
        HookEvent::ALL.into_iter().find(|e| e.as_str() == text)
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Events clients may report at `POST /hooks/{event}` (the tool and session events
    /// fire inside Warden).
    pub fn client_reported(self) -> bool {
        matches!(
            self,
            HookEvent::UserPromptSubmit
                | HookEvent::Notification
                | HookEvent::Stop
                | HookEvent::SubagentStart
                | HookEvent::SubagentStop
        )
    }
}

/// A compiled glob (`fs__write_*`) or regex (`re:^fs__(read|write)_.*$`).
#[derive(Clone, Debug)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

impl Pattern {
    /// Compiles `text`: `re:` introduces a regex; anything else is a glob where `*`
    /// matches any run of characters and `?` one character.
    pub fn compile(text: &str) -> Result<Pattern, String> {
        let regex = match text.strip_prefix("re:") {
            Some(pattern) => {
                Regex::new(pattern).map_err(|e| format!("invalid regex `{pattern}`: {e}"))?
            }
            None => {
                let mut pattern = String::from("^");
                for c in text.chars() {
                    match c {
                        '*' => pattern.push_str(".*"),
                        '?' => pattern.push('.'),
                        c => pattern.push_str(&regex::escape(&c.to_string())),
                    }
                }
                pattern.push('$');
                Regex::new(&pattern).map_err(|e| format!("invalid glob `{text}`: {e}"))?
            }
        };
        Ok(Pattern {
            source: text.to_owned(),
            regex,
        })
    }

    pub fn matches(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

/// Which calls a hook applies to; every given field must match.
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    pub server: Option<Pattern>,
    /// Matched against the upstream tool name and `{server}__{tool}`.
    pub tool: Option<Pattern>,
    pub principal: Option<Pattern>,
    pub role: Option<Pattern>,
    pub scope: Option<Pattern>,
}

/// What a hook does.
#[derive(Clone, Debug)]
pub enum Handler {
    Deny {
        message: String,
    },
    Command {
        program: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
    },
    Webhook {
        url: String,
        secret: Option<Redacted<String>>,
        headers: BTreeMap<String, String>,
    },
    /// `block` refuses PreToolUse arguments holding a credential; `redact` rewrites
    /// PostToolUse results (the default is both, by event).
    SecretScan,
    ArgumentRules(Vec<ArgumentRule>),
}

impl Handler {
    pub fn kind(&self) -> &'static str {
        match self {
            Handler::Deny { .. } => "deny",
            Handler::Command { .. } => "command",
            Handler::Webhook { .. } => "webhook",
            Handler::SecretScan => "secret_scan",
            Handler::ArgumentRules(_) => "argument_rules",
        }
    }
}

/// One constraint on an argument (a dotted path into the arguments object).
#[derive(Clone, Debug)]
pub struct ArgumentRule {
    pub path: String,
    pub check: ArgumentCheck,
}

#[derive(Clone, Debug)]
pub enum ArgumentCheck {
    /// A string that, with `.` and `..` resolved lexically, stays under this prefix.
    PathPrefix(String),
    Regex(Pattern),
    OneOf(Vec<Value>),
    Required,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    Allow,
    Deny,
}

#[derive(Clone, Debug)]
pub struct Hook {
    pub name: String,
    pub event: HookEvent,
    pub matcher: Matcher,
    pub handler: Handler,
    pub timeout: Duration,
    pub on_error: OnError,
}

/// The facts a hook matches on and receives.
#[derive(Clone, Debug, Serialize)]
pub struct HookContext {
    pub event: HookEvent,
    pub server: Option<String>,
    /// The tool's upstream name.
    pub tool: Option<String>,
    /// The name the client called the tool by (`{prefix}{separator}{tool}`, or its
    /// alias).
    pub exposed_tool: Option<String>,
    pub principal: String,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub session_id: Option<String>,
    pub trace_id: String,
}

impl Hook {
    fn applies(&self, ctx: &HookContext) -> bool {
        let m = &self.matcher;
        let server = ctx.server.as_deref().unwrap_or_default();
        let tool = ctx.tool.as_deref().unwrap_or_default();
        // Every name the tool goes by, so a hook written against the name clients see
        // fires whatever the prefix, separator or alias.
        let tool_matches = |p: &Pattern| {
            p.matches(tool)
                || p.matches(&format!("{server}__{tool}"))
                || ctx.exposed_tool.as_deref().is_some_and(|e| p.matches(e))
        };
        m.server.as_ref().is_none_or(|p| p.matches(server))
            && m.tool.as_ref().is_none_or(tool_matches)
            && m.principal
                .as_ref()
                .is_none_or(|p| p.matches(&ctx.principal))
            && m.role
                .as_ref()
                .is_none_or(|p| ctx.roles.iter().any(|r| p.matches(r)))
            && m.scope
                .as_ref()
                .is_none_or(|p| ctx.scopes.iter().any(|s| p.matches(s)))
    }
}

/// What one hook did, for the audit trail.
#[derive(Clone, Debug, Serialize)]
pub struct HookReport {
    pub hook: String,
    pub handler: &'static str,
    /// `allow`, `deny`, `rewrite` or `error`.
    pub outcome: &'static str,
    pub reason: Option<String>,
    pub duration_us: u64,
}

/// The verdict of every matching hook together.
#[derive(Debug, Default)]
pub struct Verdict {
    /// `Some((hook, reason))` when a hook blocked.
    pub denied: Option<(String, String)>,
    /// The arguments (PreToolUse) or result (PostToolUse) after rewrites, if any.
    pub rewritten: Option<Value>,
    pub reports: Vec<HookReport>,
}

/// Every hook, grouped by event.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    by_event: [Vec<Arc<Hook>>; 10],
}

/// Largest handler output read (stdout of a command, body of a webhook answer).
const MAX_HANDLER_OUTPUT: usize = 4 << 20;

impl Hooks {
    pub fn new(hooks: Vec<Hook>) -> Hooks {
        let mut by_event: [Vec<Arc<Hook>>; 10] = Default::default();
        for hook in hooks {
            by_event[hook.event.index()].push(Arc::new(hook));
        }
        Hooks { by_event }
    }

    /// Whether any hook is configured for `event` (a cheap check for the call path).
    pub fn any(&self, event: HookEvent) -> bool {
        !self.by_event[event.index()].is_empty()
    }

    /// Runs the hooks for `ctx.event` that match, in order, on `payload` (the arguments
    /// for PreToolUse, the result for PostToolUse, the event body otherwise).
    pub async fn run(
        &self,
        ctx: &HookContext,
        payload: &Value,
        client: &reqwest::Client,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        let hooks = &self.by_event[ctx.event.index()];
        if hooks.is_empty() {
            return verdict;
        }
        for hook in hooks.iter().filter(|h| h.applies(ctx)) {
            let current = verdict.rewritten.as_ref().unwrap_or(payload);
            let started = Instant::now();
            let result =
                tokio::time::timeout(hook.timeout, run_handler(hook, ctx, current, client)).await;
            let result =
                result.unwrap_or_else(|_| Err(format!("timed out after {:?}", hook.timeout)));
            let duration_us = started.elapsed().as_micros() as u64;
            let report = |outcome: &'static str, reason: Option<String>| HookReport {
                hook: hook.name.clone(),
                handler: hook.handler.kind(),
                outcome,
                reason,
                duration_us,
            };
            match result {
                Ok(Action::Allow) => verdict.reports.push(report("allow", None)),
                Ok(Action::Rewrite(value)) => {
                    verdict.reports.push(report("rewrite", None));
                    verdict.rewritten = Some(value);
                }
                Ok(Action::Deny(reason)) => {
                    verdict.reports.push(report("deny", Some(reason.clone())));
                    verdict.denied = Some((hook.name.clone(), reason));
                    break;
                }
                Err(error) => {
                    verdict.reports.push(report("error", Some(error.clone())));
                    if hook.on_error == OnError::Deny {
                        verdict.denied = Some((
                            hook.name.clone(),
                            format!("hook failed and on_error is deny: {error}"),
                        ));
                        break;
                    }
                }
            }
        }
        verdict
    }
}

enum Action {
    Allow,
    Deny(String),
    Rewrite(Value),
}

async fn run_handler(
    hook: &Hook,
    ctx: &HookContext,
    payload: &Value,
    client: &reqwest::Client,
) -> Result<Action, String> {
    match &hook.handler {
        Handler::Deny { message } => Ok(Action::Deny(message.clone())),
        Handler::SecretScan => Ok(secret_scan(ctx.event, payload)),
        Handler::ArgumentRules(rules) => Ok(argument_rules(rules, payload)),
        Handler::Command { program, args, env } => {
            let body = event_body(ctx, payload);
            let (code, stdout, stderr) = run_command(program, args, env, &body).await?;
            decide(ctx.event, code, &stdout, &stderr)
        }
        Handler::Webhook {
            url,
            secret,
            headers,
        } => {
            let body = event_body(ctx, payload);
            let (code, text) = post_webhook(client, url, secret.as_ref(), headers, &body).await?;
            decide(ctx.event, code, &text, &text)
        }
    }
}

/// The JSON a command gets on stdin and a webhook in its body.
pub fn event_body(ctx: &HookContext, payload: &Value) -> Vec<u8> {
    let key = match ctx.event {
        HookEvent::PreToolUse => "arguments",
        HookEvent::PostToolUse | HookEvent::PostToolUseFailure => "result",
        _ => "payload",
    };
    let mut body = json!({
        "event": ctx.event.as_str(),
        "server": ctx.server,
        "tool": ctx.tool,
        "principal": ctx.principal,
        "roles": ctx.roles,
        "session_id": ctx.session_id,
        "trace_id": ctx.trace_id,
        "at": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    });
    body[key] = payload.clone();
    body.to_string().into_bytes()
}

/// Exit 0 allows (stdout may carry a rewrite), exit 2 blocks with stderr as the reason,
/// anything else is an error for `on_error`. Webhooks map 2xx to 0 and 403 to 2.
fn decide(event: HookEvent, code: i32, stdout: &str, stderr: &str) -> Result<Action, String> {
    match code {
        0 => {
            let answer: Value = match stdout.trim() {
                "" => return Ok(Action::Allow),
                text => {
                    serde_json::from_str(text).map_err(|e| format!("output is not JSON: {e}"))?
                }
            };
            if answer.get("decision").and_then(Value::as_str) == Some("deny") {
                let reason = answer
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("denied by hook");
                return Ok(Action::Deny(reason.to_owned()));
            }
            let key = match event {
                HookEvent::PreToolUse => "arguments",
                HookEvent::PostToolUse => "result",
                _ => return Ok(Action::Allow),
            };
            Ok(answer
                .get(key)
                .cloned()
                .map_or(Action::Allow, Action::Rewrite))
        }
        2 => {
            let reason = stderr.trim();
            Ok(Action::Deny(if reason.is_empty() {
                "blocked by hook".into()
            } else {
                reason.chars().take(1000).collect()
            }))
        }
        other => Err(format!(
            "exited with status {other}: {}",
            stderr.trim().chars().take(500).collect::<String>()
        )),
    }
}

async fn run_command(
    program: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    input: &[u8],
) -> Result<(i32, String, String), String> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start `{program}`: {e}"))?;
    let pgid = child.id().map(|id| id as libc::pid_t);
    // Kill the whole group if this future is dropped (the hook's timeout).
    let _group = KillGroupOnDrop(pgid);
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its input must not stall: ignore a broken pipe.
        let _ = stdin.write_all(input).await;
    }
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let overflowed = read_output(
        child.stdout.take(),
        child.stderr.take(),
        &mut stdout,
        &mut stderr,
    )
    .await;
    if overflowed {
        // A cut decision could read as a different one; the hook's `on_error` decides.
        // Returning drops the guard, which ends the handler's process group at once —
        // without waiting for its stderr to close or its timeout to pass.
        return Err(format!(
            "`{program}` wrote more than {} MiB to stdout",
            MAX_HANDLER_OUTPUT >> 20
        ));
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for `{program}`: {e}"))?;
    let code = status.code().unwrap_or(-1);
    Ok((
        code,
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    ))
}

/// Reads a handler's stdout and stderr side by side, each up to
/// [`MAX_HANDLER_OUTPUT`]; true as soon as stdout goes over it (stderr then is left
/// unread: the handler is ended, not waited for).
async fn read_output(
    out: Option<tokio::process::ChildStdout>,
    err: Option<tokio::process::ChildStderr>,
    stdout: &mut Vec<u8>,
    stderr: &mut Vec<u8>,
) -> bool {
    // `Err` ends the reading at once: stdout went over the limit.
    let read_out = async {
        if let Some(out) = out {
            // One byte more than the limit, to tell a full answer from a cut one.
            let _ = out
                .take(MAX_HANDLER_OUTPUT as u64 + 1)
                .read_to_end(stdout)
                .await;
        }
        if stdout.len() > MAX_HANDLER_OUTPUT {
            Err(())
        } else {
            Ok(())
        }
    };
    let read_err = async {
        if let Some(err) = err {
            let _ = err
                .take(MAX_HANDLER_OUTPUT as u64)
                .read_to_end(stderr)
                .await;
        }
        Ok(())
    };
    tokio::try_join!(read_out, read_err).is_err()
}

struct KillGroupOnDrop(Option<libc::pid_t>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            warden_actors::process::kill_group(pgid);
        }
    }
}

/// The signature header: `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| {
        // HMAC accepts keys of any length; this branch cannot be taken.
        Hmac::<Sha256>::new_from_slice(b"").expect("HMAC accepts an empty key")
    });
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn post_webhook(
    client: &reqwest::Client,
    url: &str,
    secret: Option<&Redacted<String>>,
    headers: &BTreeMap<String, String>,
    body: &[u8],
) -> Result<(i32, String), String> {
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .to_string();
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-warden-timestamp", &timestamp)
        .body(body.to_vec());
    if let Some(secret) = secret {
        request = request.header(
            "x-warden-signature",
            signature(secret.expose(), &timestamp, body),
        );
    }
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("webhook request failed: {e}"))?;
    let status = response.status();
    let mut response = response;
    let mut text = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the webhook answer: {e}"))?
    {
        if text.len() + chunk.len() > MAX_HANDLER_OUTPUT {
            return Err(format!(
                "the webhook answer is larger than {} MiB",
                MAX_HANDLER_OUTPUT >> 20
            ));
        }
        text.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&text).into_owned();
    let code = if status.is_success() {
        0
    } else if status == reqwest::StatusCode::FORBIDDEN {
        2
    } else {
        i32::from(status.as_u16())
    };
    Ok((code, text))
}

fn secret_scan(event: HookEvent, payload: &Value) -> Action {
    let text = payload.to_string();
    match event {
        HookEvent::PreToolUse | HookEvent::UserPromptSubmit => {
            let found = credentials::find(&text);
            if found.is_empty() {
                Action::Allow
            } else {
                Action::Deny(format!(
                    "the arguments hold a credential ({})",
                    found.join(", ")
                ))
            }
        }
        _ => match redact_value(payload) {
            Some(redacted) => Action::Rewrite(redacted),
            None => Action::Allow,
        },
    }
}

/// Redacts credentials in every string of `value`; `None` when nothing matched.
pub fn redact_value(value: &Value) -> Option<Value> {
    match value {
        Value::String(s) => credentials::redact(s).map(Value::String),
        Value::Array(items) => {
            let redacted: Vec<Option<Value>> = items.iter().map(redact_value).collect();
            redacted.iter().any(Option::is_some).then(|| {
                Value::Array(
                    redacted
                        .into_iter()
                        .zip(items)
                        .map(|(r, original)| r.unwrap_or_else(|| original.clone()))
                        .collect(),
                )
            })
        }
        Value::Object(map) => {
            let mut changed = false;
            let out = map
                .iter()
                .map(|(k, v)| match redact_value(v) {
                    Some(r) => {
                        changed = true;
                        (k.clone(), r)
                    }
                    None => (k.clone(), v.clone()),
                })
                .collect();
            changed.then_some(Value::Object(out))
        }
        _ => None,
    }
}

fn argument_rules(rules: &[ArgumentRule], payload: &Value) -> Action {
    for rule in rules {
        let value = rule
            .path
            .split('.')
            .try_fold(payload, |node, key| node.get(key));
        let violation = match (&rule.check, value) {
            (ArgumentCheck::Required, None | Some(Value::Null)) => Some("is required".to_owned()),
            (_, None) => None,
            (ArgumentCheck::Required, Some(_)) => None,
            (ArgumentCheck::PathPrefix(prefix), Some(value)) => match value.as_str() {
                Some(path) if stays_under(path, prefix) => None,
                Some(path) => Some(format!("`{path}` is outside `{prefix}`")),
                None => Some("must be a string path".into()),
            },
            (ArgumentCheck::Regex(pattern), Some(value)) => {
                let text = value
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| value.to_string());
                (!pattern.matches(&text))
                    .then(|| format!("`{text}` does not match `{}`", pattern.source()))
            }
            (ArgumentCheck::OneOf(allowed), Some(value)) => (!allowed.contains(value))
                .then(|| format!("{value} is not one of the allowed values")),
        };
        if let Some(violation) = violation {
            return Action::Deny(format!("argument `{}` {violation}", rule.path));
        }
    }
    Action::Allow
}

/// True when `path`, with `.` and `..` resolved lexically, lies under `prefix`.
pub fn stays_under(path: &str, prefix: &str) -> bool {
    fn normalise(path: &str) -> Option<Vec<&str>> {
        let mut parts = Vec::new();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop()?;
                }
                part => parts.push(part),
            }
        }
        Some(parts)
    }
    let (Some(path), Some(prefix)) = (normalise(path), normalise(prefix)) else {
        return false;
    };
    path.len() >= prefix.len() && path[..prefix.len()] == prefix[..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(event: HookEvent, server: &str, tool: &str) -> HookContext {
        HookContext {
            event,
            server: Some(server.into()),
            tool: Some(tool.into()),
            exposed_tool: None,
            principal: "alice".into(),
            roles: vec!["developer".into()],
            scopes: vec!["tools:call".into()],
            session_id: None,
            trace_id: "t".into(),
        }
    }

    #[test]
    fn tool_matchers_see_the_name_clients_call() {
        let hook = hook(
            "h",
            HookEvent::PreToolUse,
            "gh_create_*",
            Handler::Deny {
                message: "no".into(),
            },
        );
        let mut context = ctx(HookEvent::PreToolUse, "github", "create_issue");
        assert!(!hook.applies(&context));
        context.exposed_tool = Some("gh_create_issue".into());
        assert!(hook.applies(&context));
    }

    fn hook(name: &str, event: HookEvent, tool: &str, handler: Handler) -> Hook {
        Hook {
            name: name.into(),
            event,
            matcher: Matcher {
                tool: Some(Pattern::compile(tool).unwrap()),
                ..Matcher::default()
            },
            handler,
            timeout: Duration::from_secs(5),
            on_error: OnError::Deny,
        }
    }

    /// A `PreToolUse` hook running `script` with `/bin/sh -c`, denying when it fails.
    fn sh_hook(name: &str, script: &str, timeout: Duration) -> Hook {
        Hook {
            name: name.into(),
            event: HookEvent::PreToolUse,
            matcher: Matcher::default(),
            handler: Handler::Command {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                env: BTreeMap::new(),
            },
            timeout,
            on_error: OnError::Deny,
        }
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn globs_and_regexes_compile_once_and_match_precisely() {
        let glob = Pattern::compile("fs__write_*").unwrap();
        assert!(glob.matches("fs__write_file"));
        assert!(!glob.matches("fs__read_file"));
        assert!(!glob.matches("xfs__write_file"));
        let regex = Pattern::compile("re:^fs__(read|write)_").unwrap();
        assert!(regex.matches("fs__read_file"));
        assert!(
            Pattern::compile("re:(")
                .unwrap_err()
                .contains("invalid regex")
        );
    }

    #[test]
    fn specific_matchers_do_not_fire_for_other_tools() {
        let hooks = Hooks::new(vec![hook(
            "no-writes",
            HookEvent::PreToolUse,
            "fs__write_*",
            Handler::Deny {
                message: "read only".into(),
            },
        )]);
        let client = warden_actors::upstream::http::client_builder()
            .build()
            .unwrap();
        let read = block_on(hooks.run(
            &ctx(HookEvent::PreToolUse, "fs", "read_file"),
            &json!({}),
            &client,
        ));
        assert!(read.denied.is_none() && read.reports.is_empty());
        let write = block_on(hooks.run(
            &ctx(HookEvent::PreToolUse, "fs", "write_file"),
            &json!({}),
            &client,
        ));
        assert_eq!(write.denied, Some(("no-writes".into(), "read only".into())));
    }

    #[test]
    fn secret_scan_blocks_arguments_and_redacts_results() {
        let hooks = Hooks::new(vec![
            hook("scan-in", HookEvent::PreToolUse, "*", Handler::SecretScan),
            hook("scan-out", HookEvent::PostToolUse, "*", Handler::SecretScan),
        ]);
        let client = warden_actors::upstream::http::client_builder()
            .build()
            .unwrap();
        let args = json!({"note": "my key is AKIAIOSFODNN7EXAMPLE"});
        let verdict = block_on(hooks.run(&ctx(HookEvent::PreToolUse, "s", "t"), &args, &client));
        let (_, reason) = verdict.denied.unwrap();
        assert!(
            reason.contains("aws_access_key_id") && !reason.contains("AKIA"),
            "{reason}"
        );
        let result = json!({"content": [{"type": "text", "text": "token ghp_0123456789abcdefghijklmnopqrstuvwxyzAB ok"}]});
        let verdict = block_on(hooks.run(&ctx(HookEvent::PostToolUse, "s", "t"), &result, &client));
        let rewritten = verdict.rewritten.unwrap();
        assert_eq!(
            rewritten["content"][0]["text"],
            "token [REDACTED:github_token] ok"
        );
    }

    #[test]
    fn argument_rules_keep_paths_under_a_prefix() {
        assert!(stays_under("/srv/data/a.txt", "/srv/data"));
        assert!(stays_under("/srv/data/./x/../b", "/srv/data"));
        assert!(!stays_under("/srv/data/../secrets", "/srv/data"));
        assert!(!stays_under("/srv/database", "/srv/data"));
        assert!(!stays_under("../../etc/passwd", "/srv/data"));
        let rules = vec![
            ArgumentRule {
                path: "path".into(),
                check: ArgumentCheck::PathPrefix("/srv/data".into()),
            },
            ArgumentRule {
                path: "mode".into(),
                check: ArgumentCheck::OneOf(vec![json!("r"), json!("w")]),
            },
        ];
        assert!(matches!(
            argument_rules(&rules, &json!({"path": "/srv/data/x", "mode": "r"})),
            Action::Allow
        ));
        let Action::Deny(reason) = argument_rules(&rules, &json!({"path": "/etc/shadow"})) else {
            panic!("allowed")
        };
        assert!(reason.contains("outside"), "{reason}");
        assert!(matches!(
            argument_rules(&rules, &json!({"path": "/srv/data/x", "mode": "x"})),
            Action::Deny(_)
        ));
    }

    #[test]
    fn commands_allow_deny_rewrite_and_time_out() {
        let client = warden_actors::upstream::http::client_builder()
            .build()
            .unwrap();
        let sh = |name: &str, script: &str| sh_hook(name, script, Duration::from_millis(500));
        let context = ctx(HookEvent::PreToolUse, "s", "t");
        let rewrite = Hooks::new(vec![sh(
            "rewrite",
            r#"cat >/dev/null; echo '{"arguments":{"message":"rewritten"}}'"#,
        )]);
        let verdict = block_on(rewrite.run(&context, &json!({"message": "original"}), &client));
        assert_eq!(verdict.rewritten, Some(json!({"message": "rewritten"})));
        let block = Hooks::new(vec![sh("block", "echo 'not on fridays' >&2; exit 2")]);
        let verdict = block_on(block.run(&context, &json!({}), &client));
        assert_eq!(verdict.denied.unwrap().1, "not on fridays");
        let hang = Hooks::new(vec![sh("hang", "sleep 30")]);
        let verdict = block_on(hang.run(&context, &json!({}), &client));
        assert!(verdict.denied.unwrap().1.contains("timed out"));
        assert_eq!(verdict.reports[0].outcome, "error");
    }

    #[test]
    fn a_command_may_write_4_mib_and_one_byte_more_is_an_error() {
        let client = warden_actors::upstream::http::client_builder()
            .build()
            .unwrap();
        // `{}` and a newline after `spaces` spaces.
        let writes = |spaces: usize| {
            let script =
                format!("cat >/dev/null; head -c {spaces} /dev/zero | tr '\\0' ' '; echo '{{}}'");
            sh_hook("big", &script, Duration::from_secs(30))
        };
        let context = ctx(HookEvent::PreToolUse, "s", "t");
        let at_limit = Hooks::new(vec![writes(MAX_HANDLER_OUTPUT - 3)]);
        let verdict = block_on(at_limit.run(&context, &json!({}), &client));
        assert!(verdict.denied.is_none(), "{:?}", verdict.denied);
        let over = Hooks::new(vec![writes(MAX_HANDLER_OUTPUT - 2)]);
        let verdict = block_on(over.run(&context, &json!({}), &client));
        let (_, message) = verdict.denied.expect("refused by on_error: deny");
        assert!(
            message.contains("wrote more than 4 MiB to stdout"),
            "{message}"
        );
    }

    /// The handler goes on writing (it ignores the closed pipe) and keeps its stderr
    /// open: it is ended when stdout goes over the limit, not when its timeout passes.
    #[test]
    fn a_command_over_the_stdout_limit_is_ended_without_waiting_for_it() {
        let client = warden_actors::upstream::http::client_builder()
            .build()
            .unwrap();
        let endless = sh_hook(
            "endless",
            "trap '' PIPE; cat >/dev/null; while :; do head -c 65536 /dev/zero 2>/dev/null; done",
            // Long enough to tell "ended at the limit" from "ended by its timeout".
            Duration::from_secs(20),
        );
        let context = ctx(HookEvent::PreToolUse, "s", "t");
        let hooks = Hooks::new(vec![endless]);
        let verdict = block_on(hooks.run(&context, &json!({}), &client));
        let (_, message) = verdict.denied.expect("refused by on_error: deny");
        assert!(
            message.contains("wrote more than 4 MiB to stdout"),
            "{message}"
        );
    }

    #[test]
    fn signatures_are_stable_hmacs() {
        let sig = signature("s3cret", "1700000000", b"{}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert_eq!(sig, signature("s3cret", "1700000000", b"{}"));
        assert_ne!(sig, signature("other", "1700000000", b"{}"));
    }
}
