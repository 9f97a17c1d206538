//! The `job_logs` table: job output shipped by workers, kept as the exact bytes the job
//! wrote, read back by cursor. It never interprets the bytes beyond offering a text view.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

/// One chunk of output.
#[derive(Debug, Clone, PartialEq)]
pub struct LogChunk {
    /// Position; pass the last one seen as `after` to continue.
    pub seq: i64,
    pub attempt: i32,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The chunk as text: its bytes decoded as UTF-8, each invalid sequence shown as U+FFFD.
    /// Workers split output only between whole characters, so valid UTF-8 reads back whole.
    pub data: String,
    /// The exact bytes the job wrote, standard base64 (RFC 4648, padded).
    pub data_base64: String,
    pub at: DateTime<Utc>,
}

/// A chunk's bytes as a worker sent them (`hodei_protocol::NewChunk`: exactly one of
/// `data_base64` and, from older agents, `data`), or why they cannot be read.
pub fn chunk_bytes(chunk: &hodei_protocol::NewChunk) -> Result<Vec<u8>, &'static str> {
    match (&chunk.data, &chunk.data_base64) {
        (Some(text), None) => Ok(text.as_bytes().to_vec()),
        (None, Some(encoded)) => BASE64.decode(encoded).map_err(|_| "data_base64 is not standard padded base64"),
        _ => Err("exactly one of data and data_base64 is required"),
    }
}

/// A chunk to store: its stream and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    /// `stdout` or `stderr`.
    pub stream: String,
    pub bytes: Vec<u8>,
}

/// Appends chunks for the attempt `worker_id` holds; false (nothing written) when it holds
/// no such attempt.
pub async fn append(
    db: impl PgExecutor<'_>,
    worker_id: Uuid,
    job_id: Uuid,
    attempt: i32,
    chunks: &[OutputChunk],
) -> sqlx::Result<bool> {
    let held: bool = sqlx::query_scalar(
        "with held as (
            select 1 from worker_jobs where job_id = $1 and worker_id = $2 and attempt = $3
         ), written as (
            insert into job_logs (job_id, attempt, stream, bytes)
            select $1, $3, stream, bytes from unnest($4::text[], $5::bytea[]) with ordinality as c(stream, bytes, n)
            where exists (select 1 from held) order by n
         )
         select exists (select 1 from held)",
    )
    .bind(job_id)
    .bind(worker_id)
    .bind(attempt)
    .bind(chunks.iter().map(|c| c.stream.as_str()).collect::<Vec<_>>())
    .bind(chunks.iter().map(|c| c.bytes.as_slice()).collect::<Vec<_>>())
    .fetch_one(db)
    .await?;
    Ok(held)
}

#[derive(Debug, FromRow)]
struct LogRow {
    seq: i64,
    attempt: i32,
    stream: String,
    bytes: Vec<u8>,
    at: DateTime<Utc>,
}

/// Chunks of `job_id` after `after`, oldest first.
pub async fn read(db: impl PgExecutor<'_>, job_id: Uuid, after: i64, limit: i64) -> sqlx::Result<Vec<LogChunk>> {
    // Rows written as text before output was kept as bytes (or by a replica that still
    // writes text, during an upgrade) have no bytes: their text is their bytes.
    let rows: Vec<LogRow> = sqlx::query_as(
        "select seq, attempt, stream, coalesce(bytes, convert_to(data, 'UTF8')) as bytes, at
         from job_logs where job_id = $1 and seq > $2 order by seq limit $3",
    )
    .bind(job_id)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| LogChunk {
            seq: row.seq,
            attempt: row.attempt,
            stream: row.stream,
            data: String::from_utf8_lossy(&row.bytes).into_owned(),
            data_base64: BASE64.encode(&row.bytes),
            at: row.at,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{enqueue, tenants, workers};
    use crate::testing::TestDatabase;

    #[tokio::test]
    async fn output_reads_back_exactly_and_only_the_holder_of_the_attempt_appends() {
        let database = TestDatabase::migrated().await;
        let pool = database.pool().await;
        let mut db = pool.acquire().await.expect("connection");
        let tenant = tenants::create(&mut *db, "acme", 1).await.expect("tenant");
        let spec: hodei_core::JobSpec =
            serde_json::from_value(serde_json::json!({"command": {"argv": ["true"]}})).expect("spec");
        let registry = hodei_core::ordering::PolicyRegistry::shipped();
        let settings = enqueue::QueueSettingsCache::disabled();
        let context = enqueue::SubmitContext { registry: &registry, settings: &settings };
        let submitter = crate::store::jobs::Submitter { tenant_id: tenant.id, tenant_name: "acme", traceparent: None };
        let valid = spec.validate(Utc::now()).expect("valid");
        let enqueue::SubmitOutcome::Created { jobs, .. } =
            enqueue::submit(&mut db, context, submitter, &[valid], None, true).await.expect("submit")
        else {
            panic!("not created");
        };
        let job_id = jobs[0].id;
        let labels = std::collections::BTreeMap::new();
        let new_worker = |name| workers::NewWorker {
            name,
            pool: "default",
            cpu_millis: 1000,
            memory_mib: 1024,
            slots: 1,
            labels: &labels,
            instance_id: None,
            token_hash: name.as_bytes(),
        };
        let holder = workers::register(&mut *db, &new_worker("holder")).await.expect("worker").id;
        let other = workers::register(&mut *db, &new_worker("other")).await.expect("worker").id;
        sqlx::query(
            "insert into worker_jobs (job_id, worker_id, attempt, cpu_millis, memory_mib) values ($1, $2, 1, 1, 1)",
        )
        .bind(job_id)
        .bind(holder)
        .execute(&mut *db)
        .await
        .expect("hold the attempt");
        // A chunk written as text before output was kept as bytes (or by an older replica).
        sqlx::query("insert into job_logs (job_id, attempt, stream, data) values ($1, 1, 'stdout', 'from text ')")
            .bind(job_id)
            .execute(&mut *db)
            .await
            .expect("a text chunk");

        let chunk = |stream: &str, bytes: &[u8]| OutputChunk { stream: stream.to_owned(), bytes: bytes.to_vec() };
        let written = [chunk("stdout", b"\xff\xfe\0abc"), chunk("stderr", "€".as_bytes())];
        assert!(append(&mut *db, holder, job_id, 1, &written).await.expect("append"));
        assert!(!append(&mut *db, other, job_id, 1, &written).await.expect("append"), "not its attempt");
        assert!(!append(&mut *db, holder, job_id, 2, &written).await.expect("append"), "not the attempt");

        let chunks = read(&mut *db, job_id, 0, 10).await.expect("read");
        let seen: Vec<(&str, &str, &str)> =
            chunks.iter().map(|c| (c.stream.as_str(), c.data.as_str(), c.data_base64.as_str())).collect();
        assert_eq!(
            seen,
            [
                ("stdout", "from text ", "ZnJvbSB0ZXh0IA=="),
                ("stdout", "\u{FFFD}\u{FFFD}\0abc", "//4AYWJj"),
                ("stderr", "€", "4oKs"),
            ]
        );
        assert_eq!(read(&mut *db, job_id, chunks[1].seq, 10).await.expect("read").len(), 1, "by cursor");
    }
}
