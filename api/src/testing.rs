//! Test support shared by this crate's tests and the end-to-end package: a real Postgres
//! for every test, and nothing to set up by hand.
//!
//! When `DATABASE_URL` or `HODEI_DATABASE_URL` is set, tests use that server. Otherwise the
//! first test to need one creates and starts a throwaway cluster under the system temp
//! directory with the system's `initdb`/`pg_ctl` (see `embedded_postgres`); later tests and
//! test processes reuse it. Each test gets its own database, dropped when the test ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use sqlx::{Connection, Executor, PgConnection, PgPool};

use crate::embedded_postgres::{EmbeddedCluster, PostgresInstallation};

/// The URL of a server database that tests may create databases from.
pub fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        for variable in ["DATABASE_URL", "HODEI_DATABASE_URL"] {
            if let Ok(url) = std::env::var(variable) {
                if !url.is_empty() {
                    return url;
                }
            }
        }
        start_throwaway_cluster()
    })
}

fn start_throwaway_cluster() -> String {
    let root = std::env::temp_dir().join("hodei-test-postgres");
    std::fs::create_dir_all(&root).expect("creating the test cluster directory");
    // Test processes run in parallel: one creates and starts the cluster, the rest wait.
    let lock = std::fs::File::create(root.join("lock")).expect("creating the test cluster lock");
    lock.lock().expect("locking the test cluster");
    let installation = PostgresInstallation::discover().unwrap_or_else(|error| panic!("{error}"));
    let cluster =
        EmbeddedCluster::open_or_init(installation, &root.join("data")).unwrap_or_else(|error| panic!("{error}"));
    cluster.start().unwrap_or_else(|error| panic!("{error}"));
    drop(lock);
    cluster.url("postgres")
}

/// `url` with its database replaced by `database`.
pub fn url_for_database(url: &str, database: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).expect("a valid database URL");
    parsed.set_path(&format!("/{database}"));
    parsed.to_string()
}

/// A database of its own for one test, dropped (with any open connections) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// A fresh database with every migration applied.
    pub async fn migrated() -> Self {
        let database = Self::empty().await;
        let pool = database.pool().await;
        crate::db::migrate(&pool).await.expect("migrating the test database");
        pool.close().await;
        database
    }

    /// A fresh database with no schema at all.
    pub async fn empty() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "hodei_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            uuid::Uuid::now_v7().simple().to_string().get(20..).unwrap_or_default()
        );
        let mut admin = PgConnection::connect(server_url()).await.expect("connecting to the test server");
        admin.execute(format!("create database {name}").as_str()).await.expect("creating a test database");
        admin.close().await.ok();
        let url = url_for_database(server_url(), &name);
        Self { name, url }
    }

    pub async fn pool(&self) -> PgPool {
        crate::db::connect(&self.url, 8).await.expect("connecting to the test database")
    }
}

/// Waits, up to 30 s, until a statement in `pool`'s database waits for a lock: the moment
/// a test that holds a row lock lets its transaction go on. Panics with `what` otherwise.
pub async fn until_a_statement_waits_for_a_lock(pool: &PgPool, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .expect("activity");
        if waiting > 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what} within 30 s");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime, so the cleanup gets a thread and runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(server_url()).await.ok()?;
                admin.execute(format!("drop database if exists {name} with (force)").as_str()).await.ok()?;
                admin.close().await.ok()
            })
        });
        let _ = cleanup.join();
    }
}
