//! Budgets: cost (microdollars) and tokens per user or per group, per calendar day or
//! month in UTC, kept in PostgreSQL (`ai_budget_usage`) so they hold across restarts and
//! replicas.
//!
//! A budget is **checked before** a request (one query for every budget that applies) and
//! **charged after** it, with the cost and tokens the provider reported. The price of a
//! request is unknown until it has run, so the request that crosses a budget's line
//! completes, and the next one is refused with 429 until the window renews. Requests in
//! flight at the same moment (on any replica) can each pass the check; the overshoot is
//! bounded by them. When PostgreSQL cannot be reached, a request a budget applies to is
//! refused rather than left uncounted. Requests no budget applies to never touch the
//! database.
//!
//! Counters are keyed `(budget, subject, window_start)`: `subject` is the user's id, or
//! `*` for a `shared: true` budget (one pool for everyone it applies to).

use std::time::Duration;

use deadpool_postgres::Pool;
use thiserror::Error;

use super::pricing::Dollars;
use crate::policy::hooks::Pattern;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetWindow {
    Day,
    Month,
}

impl BudgetWindow {
    /// The unit PostgreSQL's `date_trunc` takes.
    pub fn unit(self) -> &'static str {
        match self {
            BudgetWindow::Day => "day",
            BudgetWindow::Month => "month",
        }
    }
}

/// Who shares one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetSubject {
    /// Each user the budget applies to has a counter of their own.
    EachUser,
    /// Everyone the budget applies to draws on one counter.
    Shared,
}

/// One entry of `ai.budgets`.
#[derive(Clone, Debug)]
pub struct BudgetRule {
    pub name: String,
    pub window: BudgetWindow,
    /// Applies only to users whose id matches.
    pub user: Option<Pattern>,
    /// Applies only to holders of a matching role.
    pub role: Option<Pattern>,
    /// Applies only to these model aliases.
    pub models: Option<Vec<String>>,
    pub subject: BudgetSubject,
    pub max_cost_microdollars: Option<u64>,
    pub max_tokens: Option<u64>,
}

impl BudgetRule {
    fn applies(&self, user: &str, roles: &[String], alias: &str) -> bool {
        self.user.as_ref().is_none_or(|p| p.matches(user))
            && self
                .role
                .as_ref()
                .is_none_or(|p| roles.iter().any(|r| p.matches(r)))
            && self
                .models
                .as_ref()
                .is_none_or(|m| m.iter().any(|a| a == alias))
    }
}

/// A budget that applies to one request, with the counter it draws on.
#[derive(Clone, Debug)]
pub struct Applied {
    pub name: String,
    pub subject: String,
    pub window: BudgetWindow,
    pub max_cost_microdollars: Option<u64>,
    pub max_tokens: Option<u64>,
}

#[derive(Clone, Debug, Error, PartialEq)]
pub enum BudgetError {
    #[error(
        "budget `{budget}` is spent for {who}: {spent} of {limit} this {window} (UTC); it renews in {}",
        humantime::format_duration(*renews_in)
    )]
    Exhausted {
        budget: String,
        who: String,
        spent: String,
        limit: String,
        window: &'static str,
        renews_in: Duration,
    },
    /// The counters could not be reached: the request is refused rather than uncounted.
    #[error("budget `{budget}` cannot be checked: {error}")]
    Unavailable { budget: String, error: String },
}

impl BudgetError {
    /// Whole seconds until the window renews (at least 1), for `Retry-After`.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            BudgetError::Exhausted { renews_in, .. } => {
                Some((renews_in.as_secs() + u64::from(renews_in.subsec_nanos() > 0)).max(1))
            }
            BudgetError::Unavailable { .. } => None,
        }
    }
}

/// The budgets that apply to `user` (holding `roles`) asking for model `alias`.
pub fn applicable(rules: &[BudgetRule], user: &str, roles: &[String], alias: &str) -> Vec<Applied> {
    rules
        .iter()
        .filter(|rule| rule.applies(user, roles, alias))
        .map(|rule| Applied {
            name: rule.name.clone(),
            subject: match rule.subject {
                BudgetSubject::EachUser => user.to_owned(),
                BudgetSubject::Shared => "*".to_owned(),
            },
            window: rule.window,
            max_cost_microdollars: rule.max_cost_microdollars,
            max_tokens: rule.max_tokens,
        })
        .collect()
}

fn columns(applied: &[Applied]) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
    (
        applied.iter().map(|a| a.name.as_str()).collect(),
        applied.iter().map(|a| a.subject.as_str()).collect(),
        applied.iter().map(|a| a.window.unit()).collect(),
    )
}

/// Refuses when any of `applied` is spent. One round trip for all of them.
pub async fn check(pool: &Pool, applied: &[Applied]) -> Result<(), BudgetError> {
    let Some(first) = applied.first() else {
        return Ok(());
    };
    let unavailable = |error: String| BudgetError::Unavailable {
        budget: first.name.clone(),
        error,
    };
    let client = pool.get().await.map_err(|e| unavailable(e.to_string()))?;
    let (names, subjects, units) = columns(applied);
    let rows = client
        .query(
            "SELECT b.idx, COALESCE(u.cost_microdollars, 0), COALESCE(u.tokens, 0),
                    EXTRACT(EPOCH FROM ((date_trunc(b.unit, now() AT TIME ZONE 'UTC')
                        + ('1 ' || b.unit)::interval) AT TIME ZONE 'UTC' - now()))::float8
             FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS b(name, subject, unit, idx)
             LEFT JOIN ai_budget_usage u
               ON u.budget = b.name AND u.subject = b.subject
              AND u.window_start = date_trunc(b.unit, now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
             ORDER BY b.idx",
            &[&names, &subjects, &units],
        )
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    for row in rows {
        let index: i64 = row.get(0);
        let Some(budget) = usize::try_from(index - 1).ok().and_then(|i| applied.get(i)) else {
            continue;
        };
        let cost: i64 = row.get(1);
        let tokens: i64 = row.get(2);
        let renews: f64 = row.get(3);
        let who = if budget.subject == "*" {
            "everyone it covers".to_owned()
        } else {
            format!("user `{}`", budget.subject)
        };
        let exhausted = |spent: String, limit: String| BudgetError::Exhausted {
            budget: budget.name.clone(),
            who: who.clone(),
            spent,
            limit,
            window: budget.window.unit(),
            renews_in: Duration::from_secs(renews.max(0.0).ceil() as u64),
        };
        if let Some(max) = budget.max_cost_microdollars
            && cost.max(0) as u64 >= max
        {
            return Err(exhausted(
                Dollars(cost).to_string(),
                Dollars(i64::try_from(max).unwrap_or(i64::MAX)).to_string(),
            ));
        }
        if let Some(max) = budget.max_tokens
            && tokens.max(0) as u64 >= max
        {
            return Err(exhausted(
                format!("{tokens} tokens"),
                format!("{max} tokens"),
            ));
        }
    }
    Ok(())
}

/// Adds a finished request's cost and tokens to every budget in `applied`.
pub async fn charge(
    pool: &Pool,
    applied: &[Applied],
    cost_microdollars: i64,
    tokens: i64,
) -> Result<(), BudgetError> {
    let Some(first) = applied.first() else {
        return Ok(());
    };
    let unavailable = |error: String| BudgetError::Unavailable {
        budget: first.name.clone(),
        error,
    };
    let client = pool.get().await.map_err(|e| unavailable(e.to_string()))?;
    let (names, subjects, units) = columns(applied);
    client
        .execute(
            "INSERT INTO ai_budget_usage AS u
                 (budget, subject, window_start, cost_microdollars, tokens, requests, updated_at)
             SELECT b.name, b.subject,
                    date_trunc(b.unit, now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
                    $4, $5, 1, now()
             FROM unnest($1::text[], $2::text[], $3::text[]) AS b(name, subject, unit)
             ON CONFLICT (budget, subject, window_start) DO UPDATE
             SET cost_microdollars = u.cost_microdollars + EXCLUDED.cost_microdollars,
                 tokens = u.tokens + EXCLUDED.tokens,
                 requests = u.requests + 1,
                 updated_at = now()",
            &[&names, &subjects, &units, &cost_microdollars, &tokens],
        )
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, user: Option<&str>, role: Option<&str>, shared: bool) -> BudgetRule {
        BudgetRule {
            name: name.into(),
            window: BudgetWindow::Day,
            user: user.map(|u| Pattern::compile(u).unwrap()),
            role: role.map(|r| Pattern::compile(r).unwrap()),
            models: None,
            subject: if shared {
                BudgetSubject::Shared
            } else {
                BudgetSubject::EachUser
            },
            max_cost_microdollars: Some(1),
            max_tokens: None,
        }
    }

    #[test]
    fn budgets_apply_by_user_role_and_model_and_pick_their_counter() {
        let mut only_claude = rule("claude", None, None, false);
        only_claude.models = Some(vec!["claude".into()]);
        let rules = vec![
            rule("everyone", None, None, false),
            rule("alice", Some("alice"), None, false),
            rule("interns", None, Some("intern"), true),
            only_claude,
        ];
        let names = |user: &str, roles: &[&str], alias: &str| -> Vec<(String, String)> {
            let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
            applicable(&rules, user, &roles, alias)
                .into_iter()
                .map(|a| (a.name, a.subject))
                .collect()
        };
        assert_eq!(
            names("alice", &["user"], "gpt"),
            [
                ("everyone".into(), "alice".into()),
                ("alice".into(), "alice".into())
            ]
        );
        assert_eq!(
            names("bob", &["intern"], "claude"),
            [
                ("everyone".into(), "bob".into()),
                ("interns".into(), "*".into()),
                ("claude".into(), "bob".into())
            ]
        );
    }

    #[test]
    fn exhaustion_message_names_the_budget_the_amounts_and_the_renewal() {
        let error = BudgetError::Exhausted {
            budget: "daily".into(),
            who: "user `alice`".into(),
            spent: Dollars(5_000_100).to_string(),
            limit: Dollars(5_000_000).to_string(),
            window: "day",
            renews_in: Duration::from_secs(3 * 3600 + 60),
        };
        assert_eq!(
            error.to_string(),
            "budget `daily` is spent for user `alice`: $5.000100 of $5.000000 this day (UTC); it renews in 3h 1m"
        );
        assert_eq!(error.retry_after_secs(), Some(3 * 3600 + 60));
    }
}
