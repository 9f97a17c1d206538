//! Connecting to Postgres and applying the schema.
//!
//! Migrations are embedded in the binary. `sqlx`'s migrator holds a Postgres advisory lock
//! while it runs, so any number of replicas may start at once against an empty database:
//! one applies the migrations, the others wait and then find nothing left to do.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Opens a pool. Statements are short by design, so a conservative statement timeout
/// protects the queue tables from a runaway query holding back vacuum; and JIT compilation
/// is off: it is worth it for long analytical queries only, and a short statement whose
/// estimate is high (a table not analysed yet) spent 450 ms of its 480 compiling.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse().context("parsing the database URL")?;
    let options = options.application_name("hodei").options([("statement_timeout", "30s"), ("jit", "off")]);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .context("connecting to Postgres")
}

/// Applies every pending migration; safe to call concurrently from many processes.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying database migrations")
}
