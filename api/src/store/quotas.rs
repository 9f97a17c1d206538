//! Tenant quotas and burst sessions in the database: the deployment's defaults
//! (`tenancy_settings`), each tenant's own limits, what it uses (summed from the attempts
//! workers hold and the jobs waiting, never counted apart), and its burst sessions. The
//! decisions themselves are `hodei_core::quota`'s.
//!
//! Exactness across replicas: the scheduling cycle takes each limited candidate tenant's
//! advisory lock (`usage_lock`, in one sorted pass) before it reads that tenant's usage,
//! and holds it until its assignments commit; so two cycles never both see the last unit
//! of a quota free. Starting a burst session takes the same lock. Submissions checked
//! against the queued-jobs limit take the tenant's `queued_lock`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::enqueue::take_locks;
use chrono::{DateTime, Utc};
use hodei_core::drf::{Capacity as DrfCapacity, DecayedUsage, TenantShare};
use hodei_core::quota::{Burst, Limits, TenantLoad, TenantQuota, Usage};
use sqlx::{FromRow, PgConnection, PgExecutor};
use uuid::Uuid;

/// The deployment's defaults and burst rules, as written from the configuration.
#[derive(Debug, Clone, PartialEq, Default, FromRow)]
pub struct TenancySettings {
    pub enabled: bool,
    pub default_cpu_millis: Option<i64>,
    pub default_memory_mib: Option<i64>,
    pub default_max_concurrent_jobs: Option<i64>,
    pub default_max_queued_jobs: Option<i64>,
    pub burst_enabled: bool,
    pub burst_max_overage_percentage: i32,
    pub burst_duration_minutes: i32,
    pub burst_cooldown_minutes: i32,
    pub burst_automatic: bool,
    pub burst_tenant_may_request: bool,
    pub budget_enforced: bool,
    pub fair_sharing_enabled: bool,
    pub fair_sharing_half_life_seconds: i32,
}

impl TenancySettings {
    /// The settings `multi_tenancy` (and `cost_tracking.enabled`, which enforces budgets) say.
    pub fn from_config(config: &crate::config::MultiTenancyConfig, budget_enforced: bool) -> Self {
        let quota = &config.default_tenant_quota;
        let burst = &config.burst_capacity;
        Self {
            enabled: config.enabled,
            default_cpu_millis: quota.cpu_m,
            default_memory_mib: quota.memory_mb,
            default_max_concurrent_jobs: quota.max_concurrent_jobs,
            default_max_queued_jobs: quota.max_queued_jobs,
            burst_enabled: burst.enabled,
            burst_max_overage_percentage: burst.max_overage_percentage as i32,
            burst_duration_minutes: burst.burst_duration_minutes as i32,
            burst_cooldown_minutes: burst.cooldown_minutes as i32,
            burst_automatic: burst.automatic,
            burst_tenant_may_request: burst.tenant_may_request,
            budget_enforced,
            fair_sharing_enabled: config.fair_sharing.enabled,
            fair_sharing_half_life_seconds: (config.fair_sharing.half_life_minutes * 60) as i32,
        }
    }
}

const SETTINGS_COLUMNS: &str = "enabled, default_cpu_millis, default_memory_mib, default_max_concurrent_jobs,
    default_max_queued_jobs, burst_enabled, burst_max_overage_percentage, burst_duration_minutes,
    burst_cooldown_minutes, burst_automatic, burst_tenant_may_request, budget_enforced, fair_sharing_enabled,
    fair_sharing_half_life_seconds";

/// Writes the deployment's settings (each replica at start; the last one started wins).
pub async fn write_settings(db: impl PgExecutor<'_>, settings: &TenancySettings) -> sqlx::Result<()> {
    sqlx::query(
        "update tenancy_settings set enabled = $1, default_cpu_millis = $2, default_memory_mib = $3,
             default_max_concurrent_jobs = $4, default_max_queued_jobs = $5, burst_enabled = $6,
             burst_max_overage_percentage = $7, burst_duration_minutes = $8, burst_cooldown_minutes = $9,
             burst_automatic = $10, burst_tenant_may_request = $11, budget_enforced = $12,
             fair_sharing_enabled = $13, fair_sharing_half_life_seconds = $14, updated_at = now()
         where id = 1",
    )
    .bind(settings.enabled)
    .bind(settings.default_cpu_millis)
    .bind(settings.default_memory_mib)
    .bind(settings.default_max_concurrent_jobs)
    .bind(settings.default_max_queued_jobs)
    .bind(settings.burst_enabled)
    .bind(settings.burst_max_overage_percentage)
    .bind(settings.burst_duration_minutes)
    .bind(settings.burst_cooldown_minutes)
    .bind(settings.burst_automatic)
    .bind(settings.burst_tenant_may_request)
    .bind(settings.budget_enforced)
    .bind(settings.fair_sharing_enabled)
    .bind(settings.fair_sharing_half_life_seconds)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn settings(db: impl PgExecutor<'_>) -> sqlx::Result<TenancySettings> {
    sqlx::query_as(&format!("select {SETTINGS_COLUMNS} from tenancy_settings where id = 1")).fetch_one(db).await
}

/// Replaces a tenant's own limits (`None`: the default applies).
pub async fn put_own(db: impl PgExecutor<'_>, tenant_id: Uuid, quota: &Limits) -> sqlx::Result<()> {
    sqlx::query(
        "insert into tenant_quotas (tenant_id, cpu_millis, memory_mib, max_concurrent_jobs, max_queued_jobs,
             monthly_budget)
         values ($1, $2, $3, $4, $5, $6::float8::numeric)
         on conflict (tenant_id) do update set cpu_millis = excluded.cpu_millis, memory_mib = excluded.memory_mib,
             max_concurrent_jobs = excluded.max_concurrent_jobs, max_queued_jobs = excluded.max_queued_jobs,
             monthly_budget = excluded.monthly_budget, updated_at = now()",
    )
    .bind(tenant_id)
    .bind(quota.cpu_millis)
    .bind(quota.memory_mib)
    .bind(quota.max_concurrent_jobs)
    .bind(quota.max_queued_jobs)
    .bind(quota.monthly_budget)
    .execute(db)
    .await?;
    Ok(())
}

/// A tenant's own limits (`None`: the default applies).
pub async fn own(db: impl PgExecutor<'_>, tenant_id: Uuid) -> sqlx::Result<Limits> {
    let row: Option<LimitsRow> =
        sqlx::query_as(&format!("select {LIMITS_COLUMNS} from tenant_quotas where tenant_id = $1"))
            .bind(tenant_id)
            .fetch_optional(db)
            .await?;
    Ok(row.map(|row| row.limits()).unwrap_or_default())
}

/// Limits as stored (`tenant_quotas`) or in force (`tenant_limits`).
#[derive(Debug, FromRow)]
struct LimitsRow {
    tenant_id: Uuid,
    cpu_millis: Option<i64>,
    memory_mib: Option<i64>,
    max_concurrent_jobs: Option<i64>,
    max_queued_jobs: Option<i64>,
    monthly_budget: Option<f64>,
}

impl LimitsRow {
    fn limits(&self) -> Limits {
        Limits {
            cpu_millis: self.cpu_millis,
            memory_mib: self.memory_mib,
            max_concurrent_jobs: self.max_concurrent_jobs,
            max_queued_jobs: self.max_queued_jobs,
            monthly_budget: self.monthly_budget,
        }
    }
}

const LIMITS_COLUMNS: &str =
    "tenant_id, cpu_millis, memory_mib, max_concurrent_jobs, max_queued_jobs, monthly_budget::float8 as monthly_budget";

/// A tenant's limits in force (its own, else the defaults).
pub async fn limits(db: impl PgExecutor<'_>, tenant_id: Uuid) -> sqlx::Result<Limits> {
    let row: Option<LimitsRow> =
        sqlx::query_as(&format!("select {LIMITS_COLUMNS} from tenant_limits where tenant_id = $1"))
            .bind(tenant_id)
            .fetch_optional(db)
            .await?;
    Ok(row.map(|row| row.limits()).unwrap_or_default())
}

/// Tenants' limits read recently, for submissions: reading them costs a round trip per
/// submission, and they change rarely. An entry lives for `ttl`, so a change reaches every
/// replica within it (this replica's at once: the quotas API forgets the entry).
#[derive(Debug)]
pub struct LimitsCache {
    ttl: Duration,
    entries: Mutex<HashMap<Uuid, (Instant, Limits)>>,
}

impl LimitsCache {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// The tenant's limits, from the cache or the database.
    pub async fn get(&self, db: impl PgExecutor<'_>, tenant_id: Uuid) -> sqlx::Result<Limits> {
        let cached = self.entries.lock().ok().and_then(|entries| {
            entries.get(&tenant_id).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, limits)| *limits)
        });
        if let Some(limits) = cached {
            return Ok(limits);
        }
        let limits = limits(db, tenant_id).await?;
        if !self.ttl.is_zero() {
            if let Ok(mut entries) = self.entries.lock() {
                entries.insert(tenant_id, (Instant::now(), limits));
            }
        }
        Ok(limits)
    }

    pub fn forget(&self, tenant_id: Uuid) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(&tenant_id);
        }
    }
}

/// What a tenant's attempts on workers hold now.
pub async fn usage(db: impl PgExecutor<'_>, tenant_id: Uuid) -> sqlx::Result<Usage> {
    let (cpu_millis, memory_mib, jobs): (i64, i64, i64) = sqlx::query_as(
        "select coalesce(sum(cpu_millis), 0)::int8, coalesce(sum(memory_mib), 0)::int8, count(*)
         from worker_jobs where tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_one(db)
    .await?;
    Ok(Usage { cpu_millis, memory_mib, jobs })
}

/// A tenant's attributed cost this calendar month (UTC), and the seconds left in it.
pub async fn month_cost(db: impl PgExecutor<'_>, tenant_id: Uuid) -> sqlx::Result<(f64, i64)> {
    sqlx::query_as(
        "select coalesce((select sum(amount) from cost_daily
                          where kind = 'attempt' and tenant_id = $1
                            and day >= date_trunc('month', now() at time zone 'UTC')::date), 0)::float8,
                extract(epoch from date_trunc('month', now() at time zone 'UTC') + interval '1 month'
                                   - (now() at time zone 'UTC'))::int8",
    )
    .bind(tenant_id)
    .fetch_one(db)
    .await
}

/// Everything admission decides a tenant's submission from, reading only what its limits need.
pub async fn load(db: &mut PgConnection, tenant_id: Uuid, limits: Limits) -> sqlx::Result<TenantLoad> {
    let mut load = TenantLoad { limits, ..TenantLoad::default() };
    if limits.limits_running() {
        load.usage = usage(&mut *db, tenant_id).await?;
    }
    if let Some(max) = limits.max_queued_jobs {
        load.queued = crate::store::queue_backlog::of_tenant(&mut *db, tenant_id, max.saturating_add(1)).await?;
    }
    if limits.monthly_budget.is_some() {
        load.budget_enforced = settings(&mut *db).await?.budget_enforced;
        (load.month_cost, load.seconds_to_month_end) = month_cost(&mut *db, tenant_id).await?;
    }
    Ok(load)
}

/// The advisory lock that serializes a tenant's assignments against its limits.
pub fn usage_lock(tenant_id: Uuid) -> String {
    format!("hodei.tenant-usage:{tenant_id}")
}

/// The advisory lock that serializes a tenant's submissions against its queued-jobs limit.
pub fn queued_lock(tenant_id: Uuid) -> String {
    format!("hodei.tenant-queued:{tenant_id}")
}

/// What the cycle learns before it reads candidates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Saturated {
    /// Some tenant has a limit (its own, or the defaults are on).
    pub any_limits: bool,
    /// The half-life of past usage when `fair` queues order tenants by dominant-resource
    /// shares (`hodei_core::drf`); `None` when fair sharing is off.
    pub fair_sharing_half_life_seconds: Option<f64>,
    /// Tenants the cycle need not even read candidates of: at (or past) a running limit,
    /// with no room to burst. Read without locks, as a filter only: `lock_limited` re-reads
    /// what the cycle decides from under the tenants' locks.
    pub tenants: Vec<Uuid>,
}

/// Which tenants are saturated now; nothing is read when no tenant has a limit.
pub async fn saturated(db: impl PgExecutor<'_>) -> sqlx::Result<Saturated> {
    let (any_limits, half_life, tenants): (bool, Option<f64>, Vec<Uuid>) = sqlx::query_as(
        "with settings as (
            select s.*, s.enabled or exists (select 1 from tenant_quotas) as any_limits
            from tenancy_settings s where s.id = 1
         ), used as (
            select tenant_id, sum(cpu_millis) as cpu, sum(memory_mib) as memory, count(*) as jobs
            from worker_jobs where tenant_id is not null and (select any_limits from settings)
            group by tenant_id
         ), open as (
            select distinct on (b.tenant_id) b.tenant_id, b.max_overage_percentage
            from burst_sessions b cross join settings s
            where s.burst_enabled and b.ended_at > now() and b.started_at <= now()
            order by b.tenant_id, b.id desc
         ), recent as (
            select distinct b.tenant_id from burst_sessions b cross join settings s
            where s.burst_automatic and b.ended_at > now() - make_interval(mins => s.burst_cooldown_minutes)
         ), scaled as (
            select u.*, l.cpu_millis, l.memory_mib, l.max_concurrent_jobs,
                   case when o.tenant_id is not null then o.max_overage_percentage
                        when s.burst_enabled and s.burst_automatic and r.tenant_id is null
                        then s.burst_max_overage_percentage
                        else 100 end as percentage
            from used u join tenant_limits l on l.tenant_id = u.tenant_id cross join settings s
            left join open o on o.tenant_id = u.tenant_id
            left join recent r on r.tenant_id = u.tenant_id
         )
         select (select any_limits from settings),
                (select fair_sharing_half_life_seconds::float8 from settings where fair_sharing_enabled),
                array(select tenant_id from scaled
                      where cpu >= cpu_millis * percentage / 100 or memory >= memory_mib * percentage / 100
                         or jobs >= max_concurrent_jobs * percentage / 100)",
    )
    .fetch_one(db)
    .await?;
    Ok(Saturated { any_limits, fair_sharing_half_life_seconds: half_life, tenants })
}

#[derive(Debug, FromRow)]
struct LockedRow {
    #[sqlx(flatten)]
    limits: LimitsRow,
    cpu: i64,
    memory: i64,
    jobs: i64,
    session_id: Option<i64>,
    session_percentage: Option<i32>,
    automatic_percentage: Option<i32>,
}

/// A limited tenant under its lock: its quota for the cycle and its open session.
#[derive(Debug, Clone, PartialEq)]
pub struct Locked {
    pub quota: TenantQuota,
    pub session_id: Option<i64>,
}

/// Takes the usage locks of those of `tenants` that have a running limit (in one sorted
/// pass, `enqueue::take_locks`), then reads their limits, usage and burst state: a snapshot taken after the locks
/// are granted, so it sees every assignment other cycles committed under them.
pub async fn lock_limited(db: &mut PgConnection, tenants: &[Uuid]) -> sqlx::Result<BTreeMap<Uuid, Locked>> {
    let locked: Vec<Uuid> = sqlx::query_scalar(
        "select tenant_id from tenant_limits
         where tenant_id = any($1)
           and (cpu_millis is not null or memory_mib is not null or max_concurrent_jobs is not null)",
    )
    .bind(tenants)
    .fetch_all(&mut *db)
    .await?;
    if locked.is_empty() {
        return Ok(BTreeMap::new());
    }
    take_locks(&mut *db, locked.iter().map(|tenant| usage_lock(*tenant)).collect()).await?;
    let rows: Vec<LockedRow> = sqlx::query_as(&format!(
        "with s as (
            select * from tenancy_settings where id = 1
         ), l as (
            select {LIMITS_COLUMNS} from tenant_limits where tenant_id = any($1)
         ), u as (
            select tenant_id, sum(cpu_millis) as cpu, sum(memory_mib) as memory, count(*) as jobs
            from worker_jobs where tenant_id = any($1) group by tenant_id
         ), open as (
            select distinct on (b.tenant_id) b.tenant_id, b.id, b.max_overage_percentage
            from burst_sessions b cross join s
            where b.tenant_id = any($1) and s.burst_enabled and b.started_at <= now() and b.ended_at > now()
            order by b.tenant_id, b.id desc
         ), recent as (
            select distinct b.tenant_id from burst_sessions b cross join s
            where b.tenant_id = any($1) and b.ended_at > now() - make_interval(mins => s.burst_cooldown_minutes)
         )
         select l.*, coalesce(u.cpu, 0)::int8 as cpu, coalesce(u.memory, 0)::int8 as memory,
                coalesce(u.jobs, 0) as jobs, o.id as session_id, o.max_overage_percentage as session_percentage,
                case when s.burst_enabled and s.burst_automatic and r.tenant_id is null
                     then s.burst_max_overage_percentage end as automatic_percentage
         from l cross join s
         left join u on u.tenant_id = l.tenant_id
         left join open o on o.tenant_id = l.tenant_id
         left join recent r on r.tenant_id = l.tenant_id"
    ))
    .bind(&locked)
    .fetch_all(&mut *db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let burst = match (row.session_percentage, row.automatic_percentage) {
                (Some(percentage), _) => Burst::Session { percentage: percentage as u32 },
                (None, Some(percentage)) => Burst::Automatic { percentage: percentage as u32 },
                _ => Burst::None,
            };
            let usage = Usage { cpu_millis: row.cpu, memory_mib: row.memory, jobs: row.jobs };
            let quota = TenantQuota { limits: row.limits.limits(), usage, burst };
            (row.limits.tenant_id, Locked { quota, session_id: row.session_id })
        })
        .collect())
}

/// Records what a cycle's bursts did: each open session's peak, and a new automatic
/// session for each tenant in `opened`. Call it holding the tenants' usage locks.
pub async fn record_bursts(
    db: &mut PgConnection,
    locked: &BTreeMap<Uuid, Locked>,
    bursting: &BTreeMap<Uuid, f64>,
    opened: &[Uuid],
) -> sqlx::Result<()> {
    if bursting.is_empty() {
        return Ok(());
    }
    let sessions: Vec<(i64, f64)> =
        bursting.iter().filter_map(|(tenant, peak)| Some((locked.get(tenant)?.session_id?, *peak))).collect();
    if !sessions.is_empty() {
        sqlx::query(
            "update burst_sessions b set peak_percentage = greatest(b.peak_percentage, p.peak)
             from unnest($1::int8[], $2::float8[]) as p(id, peak) where b.id = p.id",
        )
        .bind(sessions.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind(sessions.iter().map(|(_, peak)| *peak).collect::<Vec<_>>())
        .execute(&mut *db)
        .await?;
    }
    if !opened.is_empty() {
        let peaks: Vec<f64> = opened.iter().map(|tenant| bursting.get(tenant).copied().unwrap_or(0.0)).collect();
        sqlx::query(
            "insert into burst_sessions (tenant_id, ends_at, ended_at, max_overage_percentage, automatic,
                 peak_percentage)
             select o.tenant_id, now() + make_interval(mins => s.burst_duration_minutes),
                 now() + make_interval(mins => s.burst_duration_minutes), s.burst_max_overage_percentage, true, o.peak
             from unnest($1::uuid[], $2::float8[]) as o(tenant_id, peak) cross join tenancy_settings s",
        )
        .bind(opened)
        .bind(&peaks)
        .execute(&mut *db)
        .await?;
    }
    Ok(())
}

/// A burst session as stored.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct BurstSession {
    pub id: i64,
    pub tenant_id: Uuid,
    pub started_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub max_overage_percentage: i32,
    pub automatic: bool,
    pub peak_percentage: f64,
    /// Whether it is open now (on the database's clock).
    pub active: bool,
}

const SESSION_COLUMNS: &str = "id, tenant_id, started_at, ends_at, ended_at, max_overage_percentage, automatic,
    peak_percentage, (started_at <= now() and ended_at > now()) as active";

/// The tenant's latest session, open or not.
pub async fn latest_session(db: impl PgExecutor<'_>, tenant_id: Uuid) -> sqlx::Result<Option<BurstSession>> {
    sqlx::query_as(&format!(
        "select {SESSION_COLUMNS} from burst_sessions where tenant_id = $1 order by ended_at desc, id desc limit 1"
    ))
    .bind(tenant_id)
    .fetch_optional(db)
    .await
}

/// What starting a session did.
#[derive(Debug, Clone, PartialEq)]
pub enum StartBurst {
    Started(BurstSession),
    /// A session is open already.
    AlreadyActive(BurstSession),
    /// The last session ended too recently: a new one may start at `until`.
    CoolingDown {
        until: DateTime<Utc>,
    },
}

/// Starts a session for `tenant_id` under its usage lock, unless one is open or the
/// cool-down since the last has not passed.
pub async fn start_session(
    db: &mut PgConnection,
    tenant_id: Uuid,
    percentage: i32,
    seconds: i32,
) -> sqlx::Result<StartBurst> {
    use sqlx::Acquire;
    let mut transaction = db.begin().await?;
    take_locks(&mut transaction, vec![usage_lock(tenant_id)]).await?;
    if let Some(latest) = latest_session(&mut *transaction, tenant_id).await? {
        if latest.active {
            return Ok(StartBurst::AlreadyActive(latest));
        }
        let until: Option<DateTime<Utc>> = sqlx::query_scalar(
            "select $1 + make_interval(mins => s.burst_cooldown_minutes) from tenancy_settings s
             where $1 + make_interval(mins => s.burst_cooldown_minutes) > now()",
        )
        .bind(latest.ended_at)
        .fetch_optional(&mut *transaction)
        .await?;
        if let Some(until) = until {
            return Ok(StartBurst::CoolingDown { until });
        }
    }
    let session: BurstSession = sqlx::query_as(&format!(
        "insert into burst_sessions (tenant_id, ends_at, ended_at, max_overage_percentage)
         values ($1, now() + make_interval(secs => $3), now() + make_interval(secs => $3), $2)
         returning {SESSION_COLUMNS}"
    ))
    .bind(tenant_id)
    .bind(percentage)
    .bind(f64::from(seconds))
    .fetch_one(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(StartBurst::Started(session))
}

/// Ends the tenant's open session now; `None` when none is open. Running jobs go on.
pub async fn end_session(db: impl PgExecutor<'_>, tenant_id: Uuid) -> sqlx::Result<Option<BurstSession>> {
    sqlx::query_as(
        "update burst_sessions set ended_at = now()
         where tenant_id = $1 and started_at <= now() and ended_at > now()
         returning id, tenant_id, started_at, ends_at, ended_at, max_overage_percentage, automatic, peak_percentage,
             false as active",
    )
    .bind(tenant_id)
    .fetch_optional(db)
    .await
}

/// A tenant's admission decisions over the last `hours`, by decision and reason.
pub async fn admissions(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    hours: i32,
) -> sqlx::Result<Vec<(String, Option<String>, i64)>> {
    sqlx::query_as(
        "select kind, reason, sum(jobs)::int8 from queue_activity
         where tenant_id = $1 and at > now() - make_interval(hours => $2)
           and kind in ('accepted', 'redirected', 'deferred', 'rejected')
         group by kind, reason order by kind, reason",
    )
    .bind(tenant_id)
    .bind(hours)
    .fetch_all(db)
    .await
}

/// The dominant-resource view of `tenants` (`hodei_core::drf`): what each holds now, its
/// past usage decayed to now, its weight; and the capacity of every live worker.
pub async fn fair_shares(
    db: impl PgExecutor<'_>,
    tenants: &[Uuid],
    half_life_seconds: f64,
) -> sqlx::Result<(BTreeMap<Uuid, TenantShare>, DrfCapacity)> {
    #[allow(clippy::type_complexity)]
    let rows: Vec<(Uuid, i32, i64, i64, Option<f64>, Option<f64>, Option<f64>, i64, i64, f64)> = sqlx::query_as(
        "select t.id, t.weight, coalesce(h.cpu, 0)::int8, coalesce(h.memory, 0)::int8,
                u.cpu_millis_seconds, u.memory_mib_seconds, u.at,
                (select coalesce(sum(cpu_millis), 0) from workers where gone_at is null)::int8,
                (select coalesce(sum(memory_mib), 0) from workers where gone_at is null)::int8,
                extract(epoch from now())::float8
         from unnest($1::uuid[]) as c(id) join tenants t on t.id = c.id
         left join lateral (
             select sum(cpu_millis) as cpu, sum(memory_mib) as memory from worker_jobs where tenant_id = t.id
         ) h on true
         left join tenant_fair_usage u on u.tenant_id = t.id",
    )
    .bind(tenants)
    .fetch_all(db)
    .await?;
    let capacity = rows.first().map_or(DrfCapacity { cpu_millis: 0.0, memory_mib: 0.0 }, |row| DrfCapacity {
        cpu_millis: row.7 as f64,
        memory_mib: row.8 as f64,
    });
    let shares = rows
        .into_iter()
        .map(|(id, weight, cpu, memory, cpu_past, memory_past, at, _, _, now)| {
            let past = DecayedUsage {
                cpu_millis_seconds: cpu_past.unwrap_or(0.0),
                memory_mib_seconds: memory_past.unwrap_or(0.0),
                at: at.unwrap_or(now),
            }
            .decayed_to(now, half_life_seconds);
            let share =
                TenantShare { cpu_millis: cpu as f64, memory_mib: memory as f64, past, weight: f64::from(weight) };
            (id, share)
        })
        .collect();
    Ok((shares, capacity))
}

/// Brings every tenant's past usage up to now: decays it, and adds what its attempts hold
/// now as held since the last update (`hodei_core::drf::DecayedUsage::accrue`). One
/// replica at a time (a transaction-scoped advisory lock); returns the tenants updated, or
/// `None` when another replica holds the lock.
pub async fn accrue_fair_usage(db: &mut PgConnection, half_life_seconds: f64) -> sqlx::Result<Option<usize>> {
    use sqlx::Acquire;
    let mut transaction = db.begin().await?;
    let locked: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock(hashtextextended('hodei.fair-usage', 0))")
        .fetch_one(&mut *transaction)
        .await?;
    if !locked {
        return Ok(None);
    }
    #[allow(clippy::type_complexity)]
    let rows: Vec<(Uuid, i64, i64, Option<f64>, Option<f64>, Option<f64>, f64)> = sqlx::query_as(
        "with held as (
            select tenant_id, sum(cpu_millis) as cpu, sum(memory_mib) as memory
            from worker_jobs where tenant_id is not null group by tenant_id
         )
         select coalesce(h.tenant_id, u.tenant_id), coalesce(h.cpu, 0)::int8, coalesce(h.memory, 0)::int8,
                u.cpu_millis_seconds, u.memory_mib_seconds, u.at, extract(epoch from now())::float8
         from held h full join tenant_fair_usage u on u.tenant_id = h.tenant_id",
    )
    .fetch_all(&mut *transaction)
    .await?;
    let updated: Vec<(Uuid, DecayedUsage)> = rows
        .into_iter()
        .map(|(tenant, cpu, memory, cpu_past, memory_past, at, now)| {
            let past = DecayedUsage {
                cpu_millis_seconds: cpu_past.unwrap_or(0.0),
                memory_mib_seconds: memory_past.unwrap_or(0.0),
                at: at.unwrap_or(now),
            };
            (tenant, past.accrue(now, half_life_seconds, cpu as f64, memory as f64))
        })
        .collect();
    sqlx::query(
        "insert into tenant_fair_usage (tenant_id, cpu_millis_seconds, memory_mib_seconds, at)
         select u.* from unnest($1::uuid[], $2::float8[], $3::float8[], $4::float8[]) as u(id, cpu, memory, at)
         where exists (select 1 from tenants t where t.id = u.id)
         on conflict (tenant_id) do update set cpu_millis_seconds = excluded.cpu_millis_seconds,
             memory_mib_seconds = excluded.memory_mib_seconds, at = excluded.at",
    )
    .bind(updated.iter().map(|(tenant, _)| *tenant).collect::<Vec<_>>())
    .bind(updated.iter().map(|(_, usage)| usage.cpu_millis_seconds).collect::<Vec<_>>())
    .bind(updated.iter().map(|(_, usage)| usage.memory_mib_seconds).collect::<Vec<_>>())
    .bind(updated.iter().map(|(_, usage)| usage.at).collect::<Vec<_>>())
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(Some(updated.len()))
}
