//! Background loops every replica runs. Each exposes `tick` so tests can step it, and a
//! runner that repeats it until shut down. Loops keep no state between ticks: everything
//! they decide from is in Postgres, so any number of replicas can run them at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hodei_core::ordering::PolicyRegistry;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::key_cache::{ApiKeys, API_KEYS_CHANGED_CHANNEL};
use crate::metrics::{FailureSource, Metrics};
use crate::store::assignment::{self, Assignment};
use crate::store::dispatch;
use crate::worker_tokens::{WorkerTokens, WORKER_GONE_CHANNEL};

/// The channel a statement-level trigger on `ready_jobs` notifies (once per transaction).
pub const READY_CHANNEL: &str = "hodei_ready";

/// Moves scheduled jobs (not-before times, retry backoff) into their queues when due.
#[derive(Debug, Clone)]
pub struct Promoter {
    pub db: PgPool,
    pub policies: Arc<PolicyRegistry>,
    /// Jobs moved per transaction.
    pub batch: i64,
    /// Longest sleep between ticks when nothing is due sooner.
    pub max_idle: Duration,
    /// Where the jobs it dead-letters (their queue no longer exists) are counted.
    pub metrics: Arc<Metrics>,
}

impl Promoter {
    pub fn new(db: PgPool, policies: Arc<PolicyRegistry>) -> Self {
        Self { db, policies, batch: 500, max_idle: Duration::from_secs(1), metrics: Arc::new(Metrics::new()) }
    }

    /// Promotes what is due now; returns how many jobs it moved.
    pub async fn tick(&self) -> anyhow::Result<usize> {
        let mut connection = self.db.acquire().await?;
        let promoted = dispatch::promote_due(&mut connection, &self.policies, self.batch).await?;
        self.metrics.record_dead_letters("queue_deleted", promoted.queue_deleted);
        Ok(promoted.moved)
    }

    /// How long until the next scheduled job is due (capped at `max_idle`).
    async fn idle_time(&self) -> anyhow::Result<Duration> {
        let seconds: Option<f64> =
            sqlx::query_scalar("select extract(epoch from min(run_at) - now())::float8 from scheduled_jobs")
                .fetch_one(&self.db)
                .await?;
        let wait = seconds.map_or(self.max_idle, |s| Duration::from_secs_f64(s.max(0.0)));
        Ok(wait.min(self.max_idle))
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let wait = match self.tick().await {
                Ok(moved) if moved as i64 >= self.batch => Duration::ZERO,
                Ok(_) => self.idle_time().await.unwrap_or(self.max_idle),
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "promoting scheduled jobs failed; retrying");
                    self.max_idle
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The channel the scheduling cycle notifies (payload: the worker id) after assigning.
pub const ASSIGNED_CHANNEL: &str = "hodei_assigned";

/// Wakes waiters when a Postgres channel is notified (LISTEN/NOTIFY): the scheduler when
/// jobs become ready or capacity frees, a worker's long poll when work is assigned to it
/// (the payload names the worker, so only its own poll wakes). A notification that comes
/// while a waiter is busy is kept for its next wait, never lost. Waiters still poll as a
/// fallback: a notification can be missed while the listener reconnects. The listening
/// is `Notifications`'.
///
/// A keyed waiter can also tell that a look is not needed: after a look that took
/// everything there was for its key (`Waiter::took_all`), nothing new can be there until
/// a notification for the key arrives, as long as the process has listened throughout.
/// A worker's poll right after it was handed work (it polls again at once) then waits
/// without a query.
#[derive(Debug, Clone)]
pub struct Wakeup {
    inner: Arc<WakeupInner>,
}

#[derive(Debug)]
struct WakeupInner {
    /// Bumped by every notification.
    any: watch::Sender<u64>,
    keyed: Mutex<Keyed>,
    /// A session listens: every notification from now on reaches `notify`.
    listening: AtomicBool,
}

/// Entries live while waited on, and a while longer after a look took everything, so the
/// key's next wait can skip its first look.
#[derive(Debug, Default)]
struct Keyed {
    entries: HashMap<String, KeyEntry>,
    swept_at: Option<Instant>,
}

#[derive(Debug)]
struct KeyEntry {
    /// Bumped by notifications whose payload is the key.
    sender: watch::Sender<u64>,
    /// The key's notification count when a look that took everything began.
    took_all_at: Option<u64>,
    /// When the entry was made or a look that took everything was recorded.
    touched: Instant,
}

/// How long an entry outlives its last waiter.
const KEEP_ENTRY: Duration = Duration::from_secs(60);

impl Default for Wakeup {
    fn default() -> Self {
        Self {
            inner: Arc::new(WakeupInner {
                any: watch::channel(0).0,
                keyed: Mutex::default(),
                listening: AtomicBool::new(false),
            }),
        }
    }
}

fn bump(sender: &watch::Sender<u64>) {
    sender.send_modify(|count| *count = count.wrapping_add(1));
}

impl WakeupInner {
    fn keyed(&self) -> MutexGuard<'_, Keyed> {
        // The map holds no invariant a panic elsewhere could break half-way.
        self.keyed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Wakeup {
    /// Records a notification with `payload`.
    fn notify(&self, payload: &str) {
        bump(&self.inner.any);
        if let Some(entry) = self.inner.keyed().entries.get(payload) {
            bump(&entry.sender);
        }
    }

    fn notify_all(&self) {
        bump(&self.inner.any);
        self.inner.keyed().entries.values().for_each(|entry| bump(&entry.sender));
    }

    /// A session listens (or stopped listening): until it does again, a waiter cannot
    /// know that nothing came. Either way every waiter looks again, since what was
    /// notified before the session started may have been missed.
    fn set_listening(&self, listening: bool) {
        self.inner.listening.store(listening, Ordering::SeqCst);
        self.notify_all();
    }

    /// A waiter for every notification, counting from now.
    pub fn waiter(&self) -> Waiter {
        Waiter { receiver: self.inner.any.subscribe(), key: None, inner: self.inner.clone() }
    }

    /// A waiter for notifications whose payload is `key`, counting from now.
    pub fn waiter_for(&self, key: &str) -> Waiter {
        let mut keyed = self.inner.keyed();
        let now = Instant::now();
        if keyed.swept_at.is_none_or(|swept| now.duration_since(swept) >= KEEP_ENTRY) {
            keyed
                .entries
                .retain(|_, entry| entry.sender.receiver_count() > 0 || now.duration_since(entry.touched) < KEEP_ENTRY);
            keyed.swept_at = Some(now);
        }
        let entry = keyed.entries.entry(key.to_owned()).or_insert_with(|| KeyEntry {
            sender: watch::channel(0).0,
            took_all_at: None,
            touched: now,
        });
        Waiter { receiver: entry.sender.subscribe(), key: Some(key.to_owned()), inner: self.inner.clone() }
    }
}

/// Waits for notifications that arrived since it last waited (or was made).
#[derive(Debug)]
pub struct Waiter {
    receiver: watch::Receiver<u64>,
    key: Option<String>,
    inner: Arc<WakeupInner>,
}

/// Where a look began, for `Waiter::took_all`.
#[derive(Debug, Clone, Copy)]
pub struct LookMark(Option<u64>);

impl Waiter {
    /// Returns at once if a notification came since the last wait; otherwise waits for
    /// one, or until `fallback` passes.
    pub async fn wait(&mut self, fallback: Duration) {
        let _ = tokio::time::timeout(fallback, self.receiver.changed()).await;
    }

    /// Taken just before a look (a query) for the key's work begins.
    pub fn mark(&self) -> LookMark {
        LookMark(self.inner.listening.load(Ordering::SeqCst).then(|| *self.receiver.borrow()))
    }

    /// The look that began at `mark` took everything there was for the key: until a
    /// notification for the key comes, the next look would find nothing.
    pub fn took_all(&self, mark: LookMark) {
        let (Some(key), LookMark(Some(count))) = (&self.key, mark) else { return };
        if let Some(entry) = self.inner.keyed().entries.get_mut(key) {
            entry.took_all_at = Some(count);
            entry.touched = Instant::now();
        }
    }

    /// Whether a look could find something: false only while a session has listened
    /// since the last look that took everything and no notification for the key came.
    pub fn may_find_some(&self) -> bool {
        let Some(key) = &self.key else { return true };
        if !self.inner.listening.load(Ordering::SeqCst) {
            return true;
        }
        let keyed = self.inner.keyed();
        keyed.entries.get(key).is_none_or(|entry| entry.took_all_at != Some(*entry.sender.borrow()))
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let Some(key) = &self.key else { return };
        let mut keyed = self.inner.keyed();
        // This waiter's receiver still counts until the drop ends. An entry that can still
        // spare its key a look stays, until the sweep in `waiter_for`.
        if keyed.entries.get(key).is_some_and(|entry| entry.sender.receiver_count() <= 1 && entry.took_all_at.is_none())
        {
            keyed.entries.remove(key);
        }
    }
}

/// A worker's long poll: its new assignments at once when there are any, else as soon as
/// some are made, or none when `wait` ends or the server shuts down. Woken by the
/// scheduler's notification; every second it looks anyway, as a fallback. A poll that
/// waits does not look first when its last look took everything and nothing was
/// assigned to it since (`Waiter::may_find_some`): a worker polls again as soon as it is
/// handed work. A poll that does not wait always looks.
pub async fn long_poll(
    db: &PgPool,
    assigned: &Wakeup,
    worker_id: Uuid,
    wait: Duration,
    shutdown: &CancellationToken,
) -> sqlx::Result<Vec<Assignment>> {
    let deadline = tokio::time::Instant::now() + wait;
    // Made before the first look, so an assignment in between still wakes this poll.
    let mut woken = assigned.waiter_for(&worker_id.to_string());
    let mut look = wait.is_zero() || woken.may_find_some();
    loop {
        if look {
            let mark = woken.mark();
            let mut connection = db.acquire().await?;
            let assignments = assignment::take_assignments(&mut connection, worker_id).await?;
            drop(connection);
            woken.took_all(mark);
            if !assignments.is_empty() {
                return Ok(assignments);
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(Vec::new());
        }
        tokio::select! {
            _ = woken.wait((deadline - now).min(Duration::from_secs(1))) => {}
            _ = shutdown.cancelled() => return Ok(Vec::new()),
        }
        look = true;
    }
}

/// What the process's notifications wake: the scheduler (`READY_CHANNEL`), workers' long
/// polls (`ASSIGNED_CHANNEL`), the worker-token cache (`WORKER_GONE_CHANNEL`) and the
/// API-key cache (`API_KEYS_CHANGED_CHANNEL`).
#[derive(Debug, Clone)]
pub struct Notifications {
    pub ready: Wakeup,
    pub assigned: Wakeup,
    pub worker_tokens: Arc<WorkerTokens>,
    pub api_keys: Arc<ApiKeys>,
}

impl Notifications {
    /// Listens on every channel in one session until `shutdown`, reconnecting after
    /// errors. One session, because Postgres signals every session that listens in a
    /// database for every notification there, whatever its channel: a session per
    /// channel would wake three backends per notification.
    pub fn spawn(db: PgPool, shutdown: CancellationToken) -> Self {
        let notifications = Self {
            ready: Wakeup::default(),
            assigned: Wakeup::default(),
            worker_tokens: WorkerTokens::uncached(),
            api_keys: ApiKeys::uncached(),
        };
        let listening = notifications.clone();
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                if let Err(error) = listening.listen(&db, &shutdown).await {
                    tracing::warn!(%error, "listening for notifications failed; reconnecting");
                }
                // The session ended: what was notified meanwhile may be missed. Wake
                // everyone, and stop trusting cached tokens until a session is back.
                listening.worker_tokens.stop_listening();
                listening.api_keys.stop_listening();
                listening.ready.notify_all();
                listening.assigned.set_listening(false);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        notifications
    }

    /// Until `shutdown`, or until the session is lost (`try_recv` answers `None`).
    async fn listen(&self, db: &PgPool, shutdown: &CancellationToken) -> sqlx::Result<()> {
        let mut listener = PgListener::connect_with(db).await?;
        listener.listen_all([READY_CHANNEL, ASSIGNED_CHANNEL, WORKER_GONE_CHANNEL, API_KEYS_CHANGED_CHANNEL]).await?;
        self.assigned.set_listening(true);
        self.api_keys.start_listening();
        self.worker_tokens.start_listening();
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                message = listener.try_recv() => message?,
            };
            let Some(notification) = message else { return Ok(()) };
            match notification.channel() {
                READY_CHANNEL => self.ready.notify(notification.payload()),
                ASSIGNED_CHANNEL => self.assigned.notify(notification.payload()),
                WORKER_GONE_CHANNEL => self.worker_tokens.notified(notification.payload()),
                API_KEYS_CHANGED_CHANNEL => self.api_keys.forget_all(),
                _ => {}
            }
        }
    }
}

/// The scheduling cycle, run by every replica: assigns ready jobs to free workers.
#[derive(Debug, Clone)]
pub struct Scheduler {
    pub db: PgPool,
    pub strategy: hodei_core::placement::Strategy,
    pub limits: crate::store::assignment::CycleLimits,
    /// Cycle at least this often when nothing wakes it.
    pub fallback: Duration,
    /// Where each cycle's duration, batch and waits are recorded.
    pub metrics: Arc<Metrics>,
}

impl Scheduler {
    pub fn new(db: PgPool) -> Self {
        Self {
            db,
            strategy: hodei_core::placement::Strategy::BestFit,
            limits: crate::store::assignment::CycleLimits::default(),
            fallback: Duration::from_millis(500),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// One cycle.
    pub async fn tick(&self) -> anyhow::Result<crate::store::assignment::CycleOutcome> {
        let started = std::time::Instant::now();
        let mut connection = self.db.acquire().await?;
        let outcome = crate::store::assignment::run_cycle(&mut connection, self.strategy, self.limits).await?;
        self.metrics.record_cycle(&outcome, started.elapsed());
        Ok(outcome)
    }

    pub async fn run(self, ready: Wakeup, shutdown: CancellationToken) {
        let mut woken = ready.waiter();
        loop {
            let busy = match self.tick().await {
                Ok(outcome) => outcome.more,
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "scheduling cycle failed; retrying");
                    false
                }
            };
            if busy {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = woken.wait(self.fallback) => {}
            }
        }
    }
}

/// Gives up attempts whose worker stopped heartbeating (their lease expired) or did not
/// start them in time, and marks silent workers gone. Runs in every replica; rows are taken with `skip locked`.
#[derive(Debug, Clone)]
pub struct LeaseReaper {
    pub db: PgPool,
    pub timeouts: crate::store::assignment::Timeouts,
    pub interval: Duration,
    /// Where the attempts it gives up are counted.
    pub metrics: Arc<Metrics>,
}

impl LeaseReaper {
    pub fn new(db: PgPool, timeouts: crate::store::assignment::Timeouts) -> Self {
        Self { db, timeouts, interval: Duration::from_secs(1), metrics: Arc::new(Metrics::new()) }
    }

    /// One pass; returns how many attempts it gave up. Counts them, and the workers it
    /// marked gone (how many jobs each had run), once the pass has committed.
    pub async fn tick(&self) -> anyhow::Result<usize> {
        let mut connection = self.db.acquire().await?;
        let random = dispatch::random_fraction()?;
        let expired = crate::store::assignment::expire_leases(&mut connection, self.timeouts, random).await?;
        for attempt in &expired.attempts {
            let source =
                if attempt.lease_expired { FailureSource::LeaseExpired } else { FailureSource::AssignmentTimedOut };
            self.metrics.record_failure(source, &attempt.result);
        }
        for worker in &expired.workers_gone {
            self.metrics.record_worker_left(&worker.pool, worker.jobs_run);
        }
        Ok(expired.attempts.len())
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.tick().await {
                tracing::warn!(error = format!("{error:#}"), "expiring leases failed; retrying");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}

/// Leadership of a periodic singleton loop through a `leader_leases` lease that outlasts
/// the loop's interval: the replica that holds it renews it at every tick and does the
/// work; the others skip their ticks, and one of them takes over when the holder stops
/// renewing (it died, froze or shut down).
#[derive(Debug, Clone)]
pub struct Leadership {
    pub name: &'static str,
    holder: uuid::Uuid,
    holder_info: String,
    /// The lease this replica last held, to give up on shutdown.
    held: Arc<Mutex<Option<crate::store::leases::Lease>>>,
}

impl Leadership {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            holder: uuid::Uuid::now_v7(),
            holder_info: crate::store::leases::holder_info(),
            held: Arc::default(),
        }
    }

    /// Takes or renews the lease for a loop that ticks every `interval`; whether this
    /// replica leads until its next tick. The lease lasts 1.5 intervals and a minute more,
    /// so a holder that keeps ticking keeps it.
    pub async fn lead(&self, db: &PgPool, interval: Duration) -> sqlx::Result<bool> {
        let lease = interval.mul_f64(1.5) + Duration::from_secs(60);
        let held =
            crate::store::leases::acquire_or_renew(db, self.name, self.holder, &self.holder_info, lease.as_secs_f64())
                .await?;
        if let Ok(mut last) = self.held.lock() {
            *last = held;
        }
        Ok(held.is_some())
    }

    /// Gives the lease up (on shutdown) so another replica takes over at its next tick.
    pub async fn release(&self, db: &PgPool) {
        let Some(lease) = self.held.lock().ok().and_then(|mut last| last.take()) else { return };
        if let Err(error) = crate::store::leases::release(db, self.name, lease).await {
            tracing::debug!(%error, lease = self.name, "releasing the lease failed; it expires by itself");
        }
    }
}

/// Rolls the instance ledger and the job attempts up into `cost_allocations` (see
/// `store::cost`): every closed hour once more (the last one again, for attempts that
/// ended as it closed) and the current hour so far. One replica does it at a time (the
/// `cost-rollup` lease); should two ever overlap (a leader that froze past its lease), a
/// bucket's recomputation holds a lock, and recomputing never counts twice.
#[derive(Debug, Clone)]
pub struct CostRollup {
    pub db: PgPool,
    pub leadership: Leadership,
    pub tracking: crate::store::cost::Tracking,
    pub interval: Duration,
    pub retention_days: u32,
    /// Closed buckets rolled per tick (the first run after a long gap catches up over
    /// several ticks).
    pub max_buckets: u32,
}

impl CostRollup {
    pub fn new(db: PgPool, tracking: crate::store::cost::Tracking) -> Self {
        Self {
            db,
            leadership: Leadership::new("cost-rollup"),
            tracking,
            interval: Duration::from_secs(3600),
            retention_days: 90,
            max_buckets: 24 * 7,
        }
    }

    /// One pass as of the database's clock, if this replica leads; `None` when another does.
    pub async fn tick(&self) -> anyhow::Result<Option<crate::store::cost::RolledUp>> {
        if !self.leadership.lead(&self.db, self.interval).await? {
            return Ok(None);
        }
        let now = crate::store::database_now(&self.db).await?;
        Ok(Some(self.tick_at(now).await?))
    }

    /// One pass as of `now` (tests roll up what they recorded in the past).
    pub async fn tick_at(&self, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<crate::store::cost::RolledUp> {
        crate::store::cost::end_orphaned_instances(&self.db).await?;
        let rolled = crate::store::cost::roll_up(&self.db, now, self.tracking, self.max_buckets).await?;
        crate::store::cost::prune(&self.db, now, self.retention_days).await?;
        Ok(rolled)
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.tick().await {
                Ok(Some(rolled)) => tracing::debug!(
                    buckets = rolled.buckets,
                    instances = rolled.instances,
                    attempts = rolled.attempts,
                    "rolled up costs"
                ),
                Ok(None) => tracing::debug!("another replica rolls up costs"),
                Err(error) => tracing::warn!(error = format!("{error:#}"), "rolling up costs failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        self.leadership.release(&self.db).await;
    }
}

/// Keeps spot instances' prices current: every `interval`, asks each pool that has spot
/// instances open in the ledger for the spot market's prices, once per pool
/// (`Provider::spot_prices`), and records a price change in force from now for each
/// instance whose price moved (`hodei_core::cost::spot_price_in_force`,
/// `store::cost::record_spot_prices`), which the roll-up applies from then on. One replica
/// asks at a time (the `spot-price-refresh` lease); should two ever overlap, the write takes
/// a lock and records only prices that differ from the one in force, so a change is never
/// written twice. An instance whose type is not quoted, or whose pool's provider fails to
/// answer, keeps its price.
#[derive(Debug, Clone)]
pub struct SpotPriceRefresh {
    pub db: PgPool,
    pub leadership: Leadership,
    pub providers: crate::provider::Providers,
    pub interval: Duration,
}

/// What a spot price refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpotPricesRefreshed {
    /// Pools whose provider was asked.
    pub pools: u32,
    /// Open spot instances a price was observed for.
    pub observed: u64,
    /// Instances whose price changed.
    pub changed: u64,
}

impl SpotPriceRefresh {
    pub fn new(db: PgPool, providers: crate::provider::Providers) -> Self {
        Self { db, leadership: Leadership::new("spot-price-refresh"), providers, interval: Duration::from_secs(3600) }
    }

    /// One pass as of the database's clock, if this replica leads; `None` when another does.
    pub async fn tick(&self) -> anyhow::Result<Option<SpotPricesRefreshed>> {
        if !self.leadership.lead(&self.db, self.interval).await? {
            return Ok(None);
        }
        let now = crate::store::database_now(&self.db).await?;
        Ok(Some(self.tick_at(now).await?))
    }

    /// One pass, recording changes in force from `now` (tests refresh in the past).
    pub async fn tick_at(&self, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<SpotPricesRefreshed> {
        use crate::store::cost::{self, ObservedPrice, OpenSpotInstance};
        let open = cost::open_spot_instances(&self.db).await?;
        if open.is_empty() {
            return Ok(SpotPricesRefreshed::default());
        }
        let specs: HashMap<String, hodei_core::pool::PoolSpec> = crate::store::pools::specs(&self.db)
            .await?
            .into_iter()
            .map(|pool| (pool.spec.id.clone(), pool.spec))
            .collect();
        let mut by_pool: std::collections::BTreeMap<&str, Vec<&OpenSpotInstance>> = Default::default();
        for instance in &open {
            by_pool.entry(instance.pool_id.as_str()).or_default().push(instance);
        }
        let mut done = SpotPricesRefreshed::default();
        let mut observed = Vec::new();
        for (pool, instances) in by_pool {
            let Some((spec, provider)) =
                specs.get(pool).and_then(|spec| Some((spec, self.providers.get(&spec.provider)?)))
            else {
                tracing::debug!(pool, "no pool or provider here for open spot instances; their prices stay");
                continue;
            };
            done.pools += 1;
            let quotes = match provider.spot_prices(spec).await {
                Ok(quotes) => quotes,
                Err(error) => {
                    tracing::warn!(pool, %error, "reading spot prices failed; the pool's prices stay");
                    continue;
                }
            };
            for instance in instances {
                match hodei_core::cost::spot_price_in_force(&quotes, &instance.instance_type, instance.zone.as_deref())
                {
                    Some(price_per_hour) => observed.push(ObservedPrice { instance: instance.id, price_per_hour }),
                    None => tracing::debug!(pool, instance_type = %instance.instance_type,
                        "no spot price quoted for the instance type; its price stays"),
                }
            }
        }
        done.observed = observed.len() as u64;
        let mut connection = self.db.acquire().await?;
        done.changed = cost::record_spot_prices(&mut connection, &observed, now).await?;
        Ok(done)
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.tick().await {
                Ok(Some(done)) => tracing::debug!(
                    pools = done.pools,
                    observed = done.observed,
                    changed = done.changed,
                    "refreshed spot prices"
                ),
                Ok(None) => tracing::debug!("another replica refreshes spot prices"),
                Err(error) => tracing::warn!(error = format!("{error:#}"), "refreshing spot prices failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        self.leadership.release(&self.db).await;
    }
}

/// Keeps tenants' past usage (`tenant_fair_usage`) up to date for dominant-resource fair
/// sharing: every `interval`, decays it and adds what each tenant's attempts hold
/// (`store::quotas::accrue_fair_usage`). Runs in every replica; one at a time does the work.
#[derive(Debug, Clone)]
pub struct FairUsage {
    pub db: PgPool,
    pub half_life: Duration,
    pub interval: Duration,
}

impl FairUsage {
    pub fn new(db: PgPool, half_life: Duration) -> Self {
        Self { db, half_life, interval: Duration::from_secs(5) }
    }

    pub async fn tick(&self) -> anyhow::Result<Option<usize>> {
        let mut connection = self.db.acquire().await?;
        Ok(crate::store::quotas::accrue_fair_usage(&mut connection, self.half_life.as_secs_f64()).await?)
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.tick().await {
                tracing::warn!(error = format!("{error:#}"), "updating tenants' past usage failed; retrying");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}

/// Rolls historical metrics up (`store::history`) every `interval`: the event metrics of
/// every minute and hour since the last final one, and a sample of the gauges. Runs in
/// every replica; one at a time does the work, the others skip that tick.
#[derive(Debug, Clone)]
pub struct MetricHistory {
    pub db: PgPool,
    pub interval: Duration,
    /// How long hour buckets are kept (minute buckets: a day).
    pub retention: chrono::Duration,
}

impl MetricHistory {
    pub fn new(db: PgPool) -> Self {
        Self { db, interval: Duration::from_secs(60), retention: chrono::Duration::days(90) }
    }

    /// One pass as of the database's clock.
    pub async fn tick(&self) -> anyhow::Result<crate::store::history::RolledUp> {
        let now = crate::store::database_now(&self.db).await?;
        self.tick_at(now).await
    }

    /// One pass as of `now` (tests roll up what they recorded in the past).
    pub async fn tick_at(&self, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<crate::store::history::RolledUp> {
        Ok(crate::store::history::roll_up(&self.db, now, self.retention).await?)
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.tick().await {
                tracing::warn!(error = format!("{error:#}"), "rolling up historical metrics failed; retrying");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}

/// Fires due job schedules (`store::schedules::fire_next`) in every replica: each tick
/// claims due schedules one transaction at a time, up to `batch`, and carries out what
/// `hodei_core::schedule` decides for each. Replicas share the work through `for update
/// skip locked`; a fire is recorded with its job in one transaction, so it happens exactly
/// once whichever replica does it, and a replica killed mid-fire leaves it to the others.
#[derive(Debug, Clone)]
pub struct Schedules {
    pub db: PgPool,
    pub policies: Arc<PolicyRegistry>,
    pub settings: Arc<crate::store::enqueue::QueueSettingsCache>,
    /// Schedules fired per tick at most (more wait for the next tick, which comes at once).
    pub batch: usize,
    pub interval: Duration,
    /// Where the jobs it submits are counted (as the API's are).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// What one `Schedules` tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulesFired {
    pub schedules: usize,
    pub jobs: usize,
}

impl Schedules {
    pub fn new(
        db: PgPool,
        policies: Arc<PolicyRegistry>,
        settings: Arc<crate::store::enqueue::QueueSettingsCache>,
    ) -> Self {
        Self {
            db,
            policies,
            settings,
            batch: 100,
            interval: Duration::from_millis(500),
            metrics: Arc::new(crate::metrics::Metrics::new()),
        }
    }

    /// Fires what is due now (the database's clock).
    pub async fn tick(&self) -> anyhow::Result<SchedulesFired> {
        let mut connection = self.db.acquire().await?;
        let context = crate::store::enqueue::SubmitContext { registry: &self.policies, settings: &self.settings };
        let mut outcome = SchedulesFired::default();
        while outcome.schedules < self.batch {
            let Some(fired) = crate::store::schedules::fire_next(&mut connection, context).await? else { break };
            outcome.schedules += 1;
            outcome.jobs += fired.jobs.len();
            for (queue, submitted) in &fired.submissions {
                self.metrics.record_submission(&fired.tenant, &[queue.as_str()], submitted);
            }
            for queue in &fired.abandoned {
                self.metrics.record_abandoned(queue);
            }
            if !fired.jobs.is_empty() || fired.skipped > 0 || fired.rejected > 0 {
                tracing::debug!(
                    schedule = %fired.schedule_id,
                    jobs = fired.jobs.len(),
                    skipped = fired.skipped,
                    rejected = fired.rejected,
                    "fired a schedule"
                );
            }
        }
        Ok(outcome)
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let wait = match self.tick().await {
                Ok(fired) if fired.schedules >= self.batch => Duration::ZERO,
                Ok(_) => self.interval,
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "firing schedules failed; retrying");
                    self.interval
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Prunes what is past its retention (`store::retention`): finished jobs with their events
/// and logs, the logs of finished jobs, queue activity; and folds the waiting-job counters
/// of backends that have exited (`store::queue_backlog`). One replica at a time (the
/// `retention` lease); each tick deletes batch after batch of each kind until a batch
/// comes back short or `max_batches` ran, so a backlog is worked off over several ticks
/// and no statement holds its locks for long.
#[derive(Debug, Clone)]
pub struct Retention {
    pub db: PgPool,
    pub leadership: Leadership,
    pub policy: crate::store::retention::Policy,
    pub interval: Duration,
    /// Batches of each kind per tick at most.
    pub max_batches: u32,
}

impl Retention {
    pub fn new(db: PgPool, policy: crate::store::retention::Policy) -> Self {
        Self {
            db,
            leadership: Leadership::new("retention"),
            policy,
            interval: Duration::from_secs(60),
            max_batches: 100,
        }
    }

    /// One pass as of the database's clock, if this replica leads; `None` when another does.
    pub async fn tick(&self) -> anyhow::Result<Option<crate::store::retention::Pruned>> {
        if !self.leadership.lead(&self.db, self.interval).await? {
            return Ok(None);
        }
        let now = crate::store::database_now(&self.db).await?;
        Ok(Some(self.tick_at(now).await?))
    }

    /// One pass as of `now` (tests prune as of a later time).
    pub async fn tick_at(&self, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<crate::store::retention::Pruned> {
        use crate::store::retention::{self, Kind, Pruned};
        let mut pruned = Pruned::default();
        let batch = u64::try_from(self.policy.batch).unwrap_or(u64::MAX);
        for kind in Kind::ALL {
            for _ in 0..self.max_batches {
                let done = retention::prune(&self.db, now, &self.policy, kind).await?;
                pruned.add(done);
                if done.rows(kind) < batch {
                    break;
                }
            }
        }
        // The waiting-job counters of backends that have exited (`store::queue_backlog`).
        crate::store::queue_backlog::fold(&self.db).await?;
        Ok(pruned)
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.tick().await {
                Ok(Some(pruned)) if pruned != crate::store::retention::Pruned::default() => tracing::info!(
                    jobs = pruned.jobs,
                    events = pruned.events,
                    logs = pruned.logs,
                    queue_activity = pruned.queue_activity,
                    "pruned what is past its retention"
                ),
                Ok(_) => {}
                Err(error) => tracing::warn!(error = format!("{error:#}"), "pruning failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        self.leadership.release(&self.db).await;
    }
}
