//! The Scheduler actor: background jobs (audit retention first; cleanup and forwarding
//! later, and extensions' jobs), run by exactly one replica at a time.
//!
//! **Leadership.** Every replica runs a Scheduler; the one that holds the PostgreSQL
//! session-level advisory lock [`LEADER_LOCK`] on its own dedicated connection is the
//! leader and the only one that runs jobs. If the leader dies or loses its connection,
//! PostgreSQL releases the lock and another replica takes it at its next tick.
//!
//! **Owns:** the job list, the leader connection, which jobs are running, and when each
//! is next due (read from `scheduler_jobs` on becoming leader, so a failover does not
//! run a job early).
//!
//! **Messages:** `Tick` (self-sent every `tick`; no reply): acquire or check leadership,
//! then start every due job that is not already running — each as a task of its own, so
//! a long job never blocks the mailbox. `Finished { job, outcome }` (from those tasks):
//! record the outcome in `scheduler_jobs` and the log.
//!
//! **On failure:** a job's error is recorded (`last_status = 'failed'`) and the job runs
//! again at its next due time; a job that panics is reported the same way. The actor
//! itself is joined to the root supervisor, which escalates a crash (always a bug).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use deadpool_postgres::Pool;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use tokio_postgres::{Client, NoTls};

/// The advisory-lock key of scheduler leadership.
pub const LEADER_LOCK: i64 = 0x5741_5244_454e_0003;
/// How long one bookkeeping query on the leader connection may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A background job.
pub trait Job: Send + Sync + 'static {
    /// Unique, stable name (the key in `scheduler_jobs`).
    fn name(&self) -> &str;
    /// How often it runs.
    fn every(&self) -> Duration;
    /// One run; `Ok` says what it did, `Err` why it failed.
    fn run(&self) -> BoxFuture<'_, Result<String, String>>;
}

pub struct SchedulerConfig {
    /// For the leader's dedicated connection (the lock lives as long as the session).
    pub pg_config: tokio_postgres::Config,
    /// For bookkeeping.
    pub pool: Pool,
    pub jobs: Vec<Arc<dyn Job>>,
    /// How often leadership and due times are checked.
    pub tick: Duration,
    /// Names this replica in `scheduler_jobs.last_runner`.
    pub runner_name: String,
}

pub enum SchedulerMsg {
    Tick,
    Finished {
        job: String,
        outcome: Result<String, String>,
    },
}

/// The running scheduler.
#[derive(Clone)]
pub struct Scheduler {
    actor: ActorRef<SchedulerMsg>,
    leader: Arc<AtomicBool>,
}

impl Scheduler {
    pub async fn start(
        config: SchedulerConfig,
        parent: Option<ActorCell>,
    ) -> Result<Scheduler, String> {
        let leader = Arc::new(AtomicBool::new(false));
        let args = (config, leader.clone());
        let spawned = match parent {
            Some(parent) => Actor::spawn_linked(None, SchedulerActor, args, parent).await,
            None => Actor::spawn(None, SchedulerActor, args).await,
        };
        let (actor, _) = spawned.map_err(|e| format!("cannot start the scheduler: {e}"))?;
        Ok(Scheduler { actor, leader })
    }

    /// Whether this replica currently leads (runs the jobs).
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Checks leadership and due jobs now instead of at the next tick.
    pub fn tick(&self) {
        let _ = self.actor.send_message(SchedulerMsg::Tick);
    }
}

struct SchedulerActor;

pub struct State {
    config: SchedulerConfig,
    leader_flag: Arc<AtomicBool>,
    leader: Option<Client>,
    due: HashMap<String, Instant>,
    running: HashSet<String>,
}

impl Actor for SchedulerActor {
    type Msg = SchedulerMsg;
    type State = State;
    type Arguments = (SchedulerConfig, Arc<AtomicBool>);

    async fn pre_start(
        &self,
        myself: ActorRef<SchedulerMsg>,
        (config, leader_flag): (SchedulerConfig, Arc<AtomicBool>),
    ) -> Result<State, ActorProcessingErr> {
        myself.send_interval(config.tick, || SchedulerMsg::Tick);
        let _ = myself.send_message(SchedulerMsg::Tick);
        Ok(State {
            config,
            leader_flag,
            leader: None,
            due: HashMap::new(),
            running: HashSet::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SchedulerMsg>,
        message: SchedulerMsg,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SchedulerMsg::Tick => state.tick(&myself).await,
            SchedulerMsg::Finished { job, outcome } => state.finished(job, outcome).await,
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SchedulerMsg>,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        state.leader_flag.store(false, Ordering::Relaxed);
        // Dropping the connection ends the session, which releases the lock.
        state.leader = None;
        Ok(())
    }
}

impl State {
    async fn tick(&mut self, myself: &ActorRef<SchedulerMsg>) {
        if self.leader.as_ref().is_some_and(Client::is_closed) {
            tracing::warn!(
                "the scheduler lost its leader connection; another replica may take over"
            );
            self.leader = None;
            self.leader_flag.store(false, Ordering::Relaxed);
        }
        if self.leader.is_none() && !self.try_lead().await {
            return;
        }
        let now = Instant::now();
        let jobs: Vec<Arc<dyn Job>> = self.config.jobs.clone();
        for job in jobs {
            let name = job.name().to_owned();
            if self.running.contains(&name) || self.due.get(&name).is_some_and(|due| *due > now) {
                continue;
            }
            self.due.insert(name.clone(), now + job.every());
            self.running.insert(name.clone());
            self.record_start(&name).await;
            let actor = myself.clone();
            tokio::spawn(async move {
                let outcome = std::panic::AssertUnwindSafe(job.run())
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Err("the job panicked".to_owned()));
                let _ = actor.send_message(SchedulerMsg::Finished { job: name, outcome });
            });
        }
    }

    /// Takes the leader lock if it is free; loads due times when it does.
    async fn try_lead(&mut self) -> bool {
        let connect = tokio::time::timeout(QUERY_TIMEOUT, self.config.pg_config.connect(NoTls));
        let Ok(Ok((client, connection))) = connect.await else {
            return false;
        };
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let locked = tokio::time::timeout(
            QUERY_TIMEOUT,
            client.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK]),
        )
        .await;
        let Ok(Ok(row)) = locked else { return false };
        if !row.get::<_, bool>(0) {
            return false;
        }
        tracing::info!("this replica now leads the scheduler (runs background jobs)");
        let names: Vec<String> = self
            .config
            .jobs
            .iter()
            .map(|j| j.name().to_owned())
            .collect();
        let last = tokio::time::timeout(
            QUERY_TIMEOUT,
            client.query(
                "SELECT name, last_started_at FROM scheduler_jobs WHERE name = ANY($1)",
                &[&names],
            ),
        )
        .await;
        if let Ok(Ok(rows)) = last {
            let now_wall = SystemTime::now();
            let now = Instant::now();
            for row in rows {
                let name: String = row.get(0);
                let started: Option<SystemTime> = row.get(1);
                let Some(job) = self.config.jobs.iter().find(|j| j.name() == name) else {
                    continue;
                };
                if let Some(started) = started {
                    let since = now_wall.duration_since(started).unwrap_or_default();
                    let wait = job.every().saturating_sub(since);
                    self.due.insert(name, now + wait);
                }
            }
        }
        self.leader = Some(client);
        self.leader_flag.store(true, Ordering::Relaxed);
        true
    }

    async fn record_start(&self, job: &str) {
        let Some(client) = &self.leader else { return };
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&job, &self.config.runner_name];
        let query = client.execute(
            "INSERT INTO scheduler_jobs (name, last_started_at, last_runner) VALUES ($1, now(), $2)
             ON CONFLICT (name) DO UPDATE SET last_started_at = now(), last_runner = $2",
            &params,
        );
        if let Ok(Err(error)) = tokio::time::timeout(QUERY_TIMEOUT, query).await {
            tracing::warn!(job, %error, "cannot record a job's start in scheduler_jobs");
        }
    }

    async fn finished(&mut self, job: String, outcome: Result<String, String>) {
        self.running.remove(&job);
        let (status, detail) = match &outcome {
            Ok(detail) => {
                tracing::info!(job, %detail, "background job finished");
                ("ok", detail.as_str())
            }
            Err(error) => {
                tracing::error!(job, %error, "background job failed");
                ("failed", error.as_str())
            }
        };
        let Ok(client) = self.config.pool.get().await else {
            return;
        };
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&job, &status, &detail, &self.config.runner_name];
        let query = client.execute(
            "INSERT INTO scheduler_jobs (name, last_finished_at, last_status, last_detail, last_runner)
             VALUES ($1, now(), $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET last_finished_at = now(), last_status = $2,
                 last_detail = $3, last_runner = $4",
            &params,
        );
        if let Ok(Err(error)) = tokio::time::timeout(QUERY_TIMEOUT, query).await {
            tracing::warn!(job, %error, "cannot record a job's outcome in scheduler_jobs");
        }
    }
}
