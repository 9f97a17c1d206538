//! The `leader_leases` table: leadership of singleton loops with a term and an expiry on
//! the database's clock, and the fence every leader write checks. Never decides what a
//! leader does; only whether it still is one.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// How a holder describes itself in `leader_leases.holder_info`: its host and process.
pub fn holder_info() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|name| name.trim().to_owned()).unwrap_or_default();
    format!("{host} pid {}", std::process::id())
}

/// A lease as its holder knows it: writes are fenced by this term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub holder: Uuid,
    pub term: i64,
}

/// Takes the lease `name` for `holder` if it is free or expired (a new term), or renews it
/// if `holder` already holds it (the same term); `None` while someone else holds it.
pub async fn acquire_or_renew(
    db: impl PgExecutor<'_>,
    name: &str,
    holder: Uuid,
    holder_info: &str,
    lease_seconds: f64,
) -> sqlx::Result<Option<Lease>> {
    let term: Option<i64> = sqlx::query_scalar(
        "insert into leader_leases as l (name, holder, holder_info, term, expires_at)
         values ($1, $2, $3, 1, now() + make_interval(secs => $4))
         on conflict (name) do update set
             term = case when l.holder = excluded.holder and l.expires_at > now() then l.term else l.term + 1 end,
             acquired_at = case when l.holder = excluded.holder and l.expires_at > now()
                 then l.acquired_at else now() end,
             holder = excluded.holder, holder_info = excluded.holder_info, expires_at = excluded.expires_at
         where l.holder = excluded.holder or l.expires_at <= now()
         returning term",
    )
    .bind(name)
    .bind(holder)
    .bind(holder_info)
    .bind(lease_seconds)
    .fetch_optional(db)
    .await?;
    Ok(term.map(|term| Lease { holder, term }))
}

/// Gives the lease up at once (on shutdown), if `lease` still holds it.
pub async fn release(db: impl PgExecutor<'_>, name: &str, lease: Lease) -> sqlx::Result<()> {
    sqlx::query("update leader_leases set expires_at = now() where name = $1 and holder = $2 and term = $3")
        .bind(name)
        .bind(lease.holder)
        .bind(lease.term)
        .execute(db)
        .await?;
    Ok(())
}

/// The fence: inside a leader's write transaction, checks that `lease` is still current
/// and holds it (`for share`) until the transaction ends, so no takeover can slip between
/// the check and the write. Returns the database's clock, or `None` when the lease was
/// lost (the caller must write nothing).
pub async fn check(db: &mut PgConnection, name: &str, lease: Lease) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(
        "select now() from leader_leases
         where name = $1 and holder = $2 and term = $3 and expires_at > now() for share",
    )
    .bind(name)
    .bind(lease.holder)
    .bind(lease.term)
    .fetch_optional(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDatabase;

    #[tokio::test]
    async fn one_holder_at_a_time_and_a_deposed_one_is_fenced_off() {
        let database = TestDatabase::migrated().await;
        let pool = database.pool().await;
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());

        let lease = acquire_or_renew(&pool, "loop", first, "first", 30.0).await.expect("acquire").expect("free");
        assert_eq!(lease.term, 1);
        assert_eq!(acquire_or_renew(&pool, "loop", second, "second", 30.0).await.expect("try"), None);
        let renewed = acquire_or_renew(&pool, "loop", first, "first", 30.0).await.expect("renew");
        assert_eq!(renewed, Some(lease), "renewing keeps the term");
        let mut tx = pool.begin().await.expect("begin");
        assert!(check(&mut tx, "loop", lease).await.expect("check").is_some());
        tx.commit().await.expect("commit");

        // The first holder goes silent past its expiry: the second takes over in a new term.
        sqlx::query("update leader_leases set expires_at = now() - interval '1 second'")
            .execute(&pool)
            .await
            .expect("expire");
        let taken = acquire_or_renew(&pool, "loop", second, "second", 30.0).await.expect("take").expect("expired");
        assert_eq!(taken.term, 2);
        let mut tx = pool.begin().await.expect("begin");
        assert_eq!(check(&mut tx, "loop", lease).await.expect("check"), None, "the old term is fenced off");
        tx.rollback().await.expect("rollback");
        assert_eq!(acquire_or_renew(&pool, "loop", first, "first", 30.0).await.expect("try"), None);

        // A takeover waits for a fenced write in flight, and the old term cannot write after it.
        let mut writing = pool.begin().await.expect("begin");
        assert!(check(&mut writing, "loop", taken).await.expect("check").is_some());
        let takeover = tokio::spawn({
            let pool = pool.clone();
            async move {
                // Expire and retake from a third holder: blocks on the share lock until the write ends.
                let mut db = pool.acquire().await.expect("connection");
                sqlx::query("update leader_leases set expires_at = now() - interval '1 second'")
                    .execute(&mut *db)
                    .await
                    .expect("expire");
                acquire_or_renew(&mut *db, "loop", Uuid::now_v7(), "third", 30.0).await.expect("take")
            }
        });
        crate::testing::until_a_statement_waits_for_a_lock(&pool, "the takeover waits for the fenced write").await;
        assert!(!takeover.is_finished(), "a takeover must wait for the fenced write in flight");
        writing.commit().await.expect("the write lands in its term");
        let third = takeover.await.expect("takeover task").expect("taken after the write");
        assert_eq!(third.term, 3);
        release(&pool, "loop", third).await.expect("release");
        assert!(acquire_or_renew(&pool, "loop", second, "second", 30.0).await.expect("take").is_some());
    }
}
