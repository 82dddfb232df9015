//! Quotas: calls per hour, day, week or month per caller and tool, counted in PostgreSQL
//! so they hold across restarts and replicas.
//!
//! The check and the increment are one conditional upsert (`… DO UPDATE SET used = used + 1
//! WHERE used < limit RETURNING used`): no row back means the quota is spent, and two
//! replicas racing for the last unit cannot both get it. Only calls a quota rule matches
//! pay the round trip; everything else decides in memory.

use std::time::Duration;

use deadpool_postgres::Pool;
use thiserror::Error;

use super::hooks::Matcher;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaWindow {
    Hour,
    Day,
    Week,
    Month,
}

impl QuotaWindow {
    /// The unit PostgreSQL's `date_trunc` takes.
    pub fn unit(self) -> &'static str {
        match self {
            QuotaWindow::Hour => "hour",
            QuotaWindow::Day => "day",
            QuotaWindow::Week => "week",
            QuotaWindow::Month => "month",
        }
    }
}

#[derive(Clone, Debug)]
pub struct QuotaRule {
    pub name: String,
    pub window: QuotaWindow,
    pub limit: u64,
    pub matcher: Matcher,
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum QuotaError {
    #[error(
        "quota `{rule}` is spent: {limit} calls per {window} for `{target}`; it renews in {retry_after:?}"
    )]
    Exhausted {
        rule: String,
        limit: u64,
        window: &'static str,
        target: String,
        retry_after: Duration,
    },
    /// The counter could not be reached: the call is refused rather than uncounted.
    #[error("quota `{rule}` cannot be checked: {error}")]
    Unavailable { rule: String, error: String },
}

/// What a quota is checked against.
pub struct QuotaSubject<'a> {
    pub subject: &'a str,
    pub roles: &'a [String],
    pub scopes: Vec<&'a str>,
    pub server: &'a str,
    pub tool: &'a str,
}

fn applies(rule: &QuotaRule, who: &QuotaSubject<'_>) -> bool {
    let m = &rule.matcher;
    m.server.as_ref().is_none_or(|p| p.matches(who.server))
        && m.tool.as_ref().is_none_or(|p| {
            p.matches(who.tool) || p.matches(&format!("{}__{}", who.server, who.tool))
        })
        && m.principal.as_ref().is_none_or(|p| p.matches(who.subject))
        && m.role
            .as_ref()
            .is_none_or(|p| who.roles.iter().any(|r| p.matches(r)))
        && m.scope
            .as_ref()
            .is_none_or(|p| who.scopes.iter().any(|s| p.matches(s)))
}

/// Whether any rule could match a call (lets the call path skip the database).
pub fn any_rule_for(rules: &[QuotaRule], who: &QuotaSubject<'_>) -> bool {
    rules.iter().any(|r| applies(r, who))
}

/// Consumes one unit of every matching rule, or refuses with the first spent one.
pub async fn consume(
    pool: &Pool,
    rules: &[QuotaRule],
    who: &QuotaSubject<'_>,
) -> Result<(), QuotaError> {
    let target = format!("{}/{}", who.server, who.tool);
    for rule in rules.iter().filter(|r| applies(r, who)) {
        let unavailable = |error: String| QuotaError::Unavailable {
            rule: rule.name.clone(),
            error,
        };
        let client = pool.get().await.map_err(|e| unavailable(e.to_string()))?;
        let limit = i64::try_from(rule.limit).unwrap_or(i64::MAX);
        let row = client
            .query_opt(
                "INSERT INTO quota_usage AS q (rule, subject, target, window_start, used)
                 SELECT $1, $2, $3, date_trunc($4, now()), 1 WHERE $5::bigint > 0
                 ON CONFLICT (rule, subject, target, window_start)
                 DO UPDATE SET used = q.used + 1 WHERE q.used < $5
                 RETURNING used",
                &[
                    &rule.name,
                    &who.subject,
                    &target,
                    &rule.window.unit(),
                    &limit,
                ],
            )
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if row.is_none() {
            let renews: f64 = client
                .query_one(
                    "SELECT EXTRACT(EPOCH FROM (date_trunc($1, now()) + ('1 ' || $1)::interval - now()))::float8",
                    &[&rule.window.unit()],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or(0.0);
            return Err(QuotaError::Exhausted {
                rule: rule.name.clone(),
                limit: rule.limit,
                window: rule.window.unit(),
                target,
                retry_after: Duration::from_secs_f64(renews.max(0.0)),
            });
        }
    }
    Ok(())
}
