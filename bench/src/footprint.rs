//! What a run cost the database, per job: Postgres CPU (the cluster's processes, from
//! `/proc`, including backends that exited), WAL bytes (`pg_current_wal_lsn()`), row
//! writes by table (`pg_stat_user_tables`), transactions committed (`pg_stat_database`),
//! statements (`pg_stat_statements`, when the cluster loads it) and HTTP requests (the
//! server's own `hodei_http_request_duration_seconds` counts).
//!
//! CPU, WAL and requests are read at the end of the measured window, while the server
//! still runs. Table and transaction counters reach `pg_stat_*` only when a backend
//! flushes them (at most once a second while busy, and when it exits), so they are read
//! after the server and its workers have stopped and their backends are gone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::ensure;
use serde::Serialize;
use sqlx::PgPool;

use crate::workers::{cluster_ticks, postmaster_of, CLOCK_TICKS_PER_SECOND};

/// Cumulative row writes of one table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, sqlx::FromRow)]
pub struct RowWrites {
    pub inserted: i64,
    pub updated: i64,
    /// Of `updated`, those that were HOT (no index entries written).
    pub hot_updated: i64,
    pub deleted: i64,
}

impl RowWrites {
    fn total(&self) -> i64 {
        self.inserted + self.updated + self.deleted
    }

    fn since(&self, before: &RowWrites) -> RowWrites {
        RowWrites {
            inserted: self.inserted - before.inserted,
            updated: self.updated - before.updated,
            hot_updated: self.hot_updated - before.hot_updated,
            deleted: self.deleted - before.deleted,
        }
    }
}

/// The counters that settle late, read together.
#[derive(Debug, Clone, Default)]
struct Settled {
    tables: BTreeMap<String, RowWrites>,
    commits: i64,
    statements: Option<i64>,
}

/// The counters at the start of a window.
#[derive(Debug, Clone)]
pub struct Meter {
    url: String,
    postmaster: Option<u32>,
    at: Instant,
    cpu_ticks: Option<u64>,
    wal_lsn: String,
    requests: f64,
    settled: Settled,
}

/// The counters read at the end of the window, before the server stops.
#[derive(Debug, Clone)]
pub struct WindowEnd {
    start: Meter,
    seconds: f64,
    cpu_ticks: Option<u64>,
    wal_bytes: i64,
    requests: f64,
}

/// Per job, over the window.
#[derive(Debug, Clone, Serialize)]
pub struct Footprint {
    pub jobs: usize,
    pub seconds: f64,
    /// Milliseconds of Postgres CPU per job (`None` when Postgres is not on this machine).
    pub postgres_cpu_ms: Option<f64>,
    /// Postgres CPU over the window, in % of one core.
    pub postgres_cpu_percent: Option<f64>,
    pub wal_bytes: f64,
    pub row_writes: f64,
    pub commits: f64,
    /// `None` when the cluster does not load `pg_stat_statements`.
    pub statements: Option<f64>,
    pub http_requests: f64,
    /// Row writes per job by table, tables with none left out.
    pub tables: BTreeMap<String, RowWrites>,
}

impl Meter {
    /// Starts a window: call it after the server is up and its workers registered.
    pub async fn start(pool: &PgPool, url: &str) -> anyhow::Result<Self> {
        let postmaster = postmaster_of(pool).await?;
        let settled = settled(pool).await?;
        Ok(Self {
            url: url.to_owned(),
            postmaster,
            at: Instant::now(),
            cpu_ticks: postmaster.map(cluster_ticks),
            wal_lsn: sqlx::query_scalar("select pg_current_wal_lsn()::text").fetch_one(pool).await?,
            requests: http_requests(url).await?,
            settled,
        })
    }

    /// Ends the window: call it while the server still runs.
    pub async fn end(self, pool: &PgPool) -> anyhow::Result<WindowEnd> {
        let seconds = self.at.elapsed().as_secs_f64();
        let cpu_ticks = self.postmaster.map(cluster_ticks);
        let wal_bytes: i64 = sqlx::query_scalar("select pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::int8")
            .bind(&self.wal_lsn)
            .fetch_one(pool)
            .await?;
        let requests = http_requests(&self.url).await?;
        Ok(WindowEnd { start: self, seconds, cpu_ticks, wal_bytes, requests })
    }
}

impl WindowEnd {
    /// The footprint of `jobs` jobs. Call it after the server and the workers were
    /// stopped: it waits for their backends to leave, so their counters are flushed.
    pub async fn per_job(self, pool: &PgPool, jobs: usize) -> anyhow::Result<Footprint> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let others: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity where datname = current_database() and backend_type = 'client backend'",
            )
            .fetch_one(pool)
            .await?;
            if others <= i64::from(pool.size()) {
                break;
            }
            ensure!(Instant::now() < deadline, "the server's database sessions did not end within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = settled(pool).await?;
        let n = jobs.max(1) as f64;
        let mut tables = BTreeMap::new();
        let mut row_writes = 0;
        for (table, writes) in &after.tables {
            let delta = writes.since(self.start.settled.tables.get(table).unwrap_or(&RowWrites::default()));
            if delta.total() > 0 {
                row_writes += delta.total();
                tables.insert(table.clone(), delta);
            }
        }
        let cpu_seconds = match (self.start.cpu_ticks, self.cpu_ticks) {
            (Some(from), Some(to)) => Some(to.saturating_sub(from) as f64 / CLOCK_TICKS_PER_SECOND),
            _ => None,
        };
        Ok(Footprint {
            jobs,
            seconds: self.seconds,
            postgres_cpu_ms: cpu_seconds.map(|s| s * 1000.0 / n),
            postgres_cpu_percent: cpu_seconds.map(|s| s / self.seconds.max(1e-9) * 100.0),
            wal_bytes: self.wal_bytes as f64 / n,
            row_writes: row_writes as f64 / n,
            commits: (after.commits - self.start.settled.commits) as f64 / n,
            statements: after.statements.zip(self.start.settled.statements).map(|(to, from)| (to - from) as f64 / n),
            http_requests: (self.requests - self.start.requests) / n,
            tables,
        })
    }
}

impl std::fmt::Display for Footprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "per job ({} jobs, {:.1} s): ", self.jobs, self.seconds)?;
        match (self.postgres_cpu_ms, self.postgres_cpu_percent) {
            (Some(ms), Some(percent)) => write!(f, "Postgres CPU {ms:.2} ms ({percent:.0}% of one core)")?,
            _ => write!(f, "Postgres CPU n/a")?,
        }
        write!(f, ", WAL {:.0} B, {:.1} row writes, {:.1} commits, ", self.wal_bytes, self.row_writes, self.commits)?;
        match self.statements {
            Some(statements) => write!(f, "{statements:.1} statements")?,
            None => write!(f, "statements n/a (pg_stat_statements not loaded)")?,
        }
        write!(f, ", {:.2} HTTP requests", self.http_requests)?;
        let n = self.jobs.max(1) as f64;
        for (table, writes) in &self.tables {
            write!(
                f,
                "\n    {table:<20} ins {:.2}  upd {:.2} (HOT {:.2})  del {:.2}",
                writes.inserted as f64 / n,
                writes.updated as f64 / n,
                writes.hot_updated as f64 / n,
                writes.deleted as f64 / n
            )?;
        }
        Ok(())
    }
}

async fn settled(pool: &PgPool) -> anyhow::Result<Settled> {
    let rows: Vec<(String, i64, i64, i64, i64)> =
        sqlx::query_as("select relname::text, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del from pg_stat_user_tables")
            .fetch_all(pool)
            .await?;
    let tables = rows
        .into_iter()
        .map(|(table, inserted, updated, hot_updated, deleted)| {
            (table, RowWrites { inserted, updated, hot_updated, deleted })
        })
        .collect();
    let commits: i64 =
        sqlx::query_scalar("select xact_commit from pg_stat_database where datname = current_database()")
            .fetch_one(pool)
            .await?;
    let loaded: bool = sqlx::query_scalar(
        "select exists (select 1 from pg_extension where extname = 'pg_stat_statements')
            and current_setting('shared_preload_libraries') like '%pg_stat_statements%'",
    )
    .fetch_one(pool)
    .await?;
    let statements = if loaded {
        Some(
            sqlx::query_scalar(
                "select coalesce(sum(calls), 0)::int8 from pg_stat_statements
                 where dbid = (select oid from pg_database where datname = current_database())",
            )
            .fetch_one(pool)
            .await?,
        )
    } else {
        None
    };
    Ok(Settled { tables, commits, statements })
}

/// Requests the server has answered, from its own metrics.
async fn http_requests(url: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("{url}/metrics")).await?.error_for_status()?.text().await?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with("hodei_http_request_duration_seconds_count"))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}
