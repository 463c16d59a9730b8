//! The job store: jobs, their status, counters and timestamps in SQLite through `sqlx`, with
//! the schema made by embedded migrations.
//!
//! Status changes go through [`JobStore::transition`], which checks the legal transitions of
//! `batchd-core` and applies them as a compare-and-set, so two writers never both win.
//! (A Postgres store for several machines will implement the same methods; the trait is
//! extracted when the second implementation lands.)

use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use batchd_core::{Checkpoint, Counters, InvocationType, JobId, JobStatus, StatusError};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, SqlSafeStr, Sqlite, SqlitePool};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job store database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("job store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error("job {job}: {source}")]
    Transition {
        job: JobId,
        #[source]
        source: StatusError,
    },
    #[error("job store holds a bad value in {column}: {value:?}")]
    Corrupt { column: &'static str, value: String },
}

/// What a new job needs.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: JobId,
    pub arn: String,
    pub name: String,
    pub model_id: String,
    pub role_arn: Option<String>,
    pub client_request_token: Option<String>,
    pub invocation_type: InvocationType,
    pub input_uri: String,
    pub output_uri: String,
    pub timeout_hours: Option<u32>,
    pub job_expiration_ms: Option<i64>,
    pub request_json: Option<String>,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub arn: String,
    pub name: String,
    pub model_id: String,
    pub role_arn: Option<String>,
    pub client_request_token: Option<String>,
    pub invocation_type: InvocationType,
    pub input_uri: String,
    pub output_uri: String,
    pub status: JobStatus,
    pub message: Option<String>,
    pub timeout_hours: Option<u32>,
    pub submit_time_ms: i64,
    pub last_modified_ms: i64,
    pub end_time_ms: Option<i64>,
    pub job_expiration_ms: Option<i64>,
    /// Live counters: those of the last checkpoint while running, final once ended.
    pub counters: Counters,
    pub checkpoint: Checkpoint,
    pub request_json: Option<String>,
}

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "jobs", include_str!("../migrations/0001_jobs.sql")),
    (
        2,
        "checkpoints",
        include_str!("../migrations/0002_checkpoints.sql"),
    ),
    (
        3,
        "job files",
        include_str!("../migrations/0003_job_files.sql"),
    ),
];

fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What `JobStore::list` returns: filters, order and a keyset cursor.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs submitted strictly after this time.
    pub submit_time_after_ms: Option<i64>,
    /// Only jobs submitted strictly before this time.
    pub submit_time_before_ms: Option<i64>,
    pub status: Option<JobStatus>,
    /// Substring of the job name (case-sensitive).
    pub name_contains: Option<String>,
    /// Oldest first when true; newest first otherwise.
    pub ascending: bool,
    /// Continue after this `(submit_time_ms, job_id)` in the chosen order.
    pub after: Option<(i64, String)>,
    pub limit: u32,
}

/// Statuses that count as submitted or running (not terminal).
const ACTIVE: &str = "('Submitted','Validating','Scheduled','InProgress','Stopping')";

/// One input file of a job as validation saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFile {
    pub uri: String,
    /// Path relative to its input prefix: the output file is `<relative>.out`.
    pub relative: String,
    pub size: u64,
    /// The object's ETag (for local files: inode, mtime and size), if the store gives one.
    pub version: Option<String>,
}

/// Jobs in SQLite.
#[derive(Debug, Clone)]
pub struct JobStore {
    pool: SqlitePool,
}

impl JobStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL survives a process crash (not a power loss) without an fsync per commit.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        migrator().run(&pool).await?;
        Ok(Self { pool })
    }

    /// An in-memory store (tests, and `batchd run` with no data dir to keep).
    pub async fn in_memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?;
        // One connection: each in-memory connection would otherwise be its own database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        migrator().run(&pool).await?;
        Ok(Self { pool })
    }

    /// Inserts a job in `Submitted`.
    pub async fn create(&self, job: NewJob) -> Result<JobRecord, StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO jobs (job_id, job_arn, job_name, model_id, role_arn, client_request_token,
                invocation_type, input_uri, output_uri, status, timeout_hours, submit_time_ms,
                last_modified_ms, job_expiration_ms, request_json)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(job.id.as_str())
        .bind(&job.arn)
        .bind(&job.name)
        .bind(&job.model_id)
        .bind(&job.role_arn)
        .bind(&job.client_request_token)
        .bind(job.invocation_type.as_str())
        .bind(&job.input_uri)
        .bind(&job.output_uri)
        .bind(JobStatus::Submitted.as_str())
        .bind(job.timeout_hours.map(i64::from))
        .bind(now)
        .bind(now)
        .bind(job.job_expiration_ms)
        .bind(&job.request_json)
        .execute(&self.pool)
        .await?;
        self.get(&job.id).await?.ok_or(StoreError::NotFound(job.id))
    }

    pub async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM jobs WHERE job_id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(row_to_job).transpose()
    }

    /// Jobs in the given statuses, oldest first (the scheduler's and resume's view).
    pub async fn list_in_status(
        &self,
        statuses: &[JobStatus],
    ) -> Result<Vec<JobRecord>, StoreError> {
        if statuses.is_empty() {
            return Ok(Vec::new());
        }
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT * FROM jobs WHERE status IN (");
        let mut list = q.separated(", ");
        for status in statuses {
            list.push_bind(status.as_str());
        }
        q.push(") ORDER BY submit_time_ms, job_id");
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(row_to_job).collect()
    }

    /// One page of jobs, in submit-time order (ties broken by id), after the cursor.
    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT * FROM jobs WHERE 1 = 1");
        if let Some(t) = filter.submit_time_after_ms {
            q.push(" AND submit_time_ms > ").push_bind(t);
        }
        if let Some(t) = filter.submit_time_before_ms {
            q.push(" AND submit_time_ms < ").push_bind(t);
        }
        if let Some(status) = filter.status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(name) = &filter.name_contains {
            q.push(" AND instr(job_name, ")
                .push_bind(name.clone())
                .push(") > 0");
        }
        let (cmp, order) = if filter.ascending {
            (">", "ASC")
        } else {
            ("<", "DESC")
        };
        if let Some((time, id)) = &filter.after {
            q.push(format_args!(" AND (submit_time_ms, job_id) {cmp} ("))
                .push_bind(*time)
                .push(", ")
                .push_bind(id.clone())
                .push(")");
        }
        q.push(format_args!(
            " ORDER BY submit_time_ms {order}, job_id {order} LIMIT "
        ))
        .push_bind(i64::from(filter.limit));
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(row_to_job).collect()
    }

    /// The job created with this `clientRequestToken`, if any.
    pub async fn find_by_token(&self, token: &str) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM jobs WHERE client_request_token = ?")
            .bind(token)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(row_to_job).transpose()
    }

    /// A job with this name that has not ended, if any.
    pub async fn find_active_by_name(&self, name: &str) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT * FROM jobs WHERE job_name = ? AND status IN {ACTIVE} LIMIT 1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(row_to_job).transpose()
    }

    /// Jobs of this model that are submitted or running.
    /// Records the input files a job validated (replacing any earlier list): what its
    /// execution and every resume read.
    pub async fn set_job_files(&self, id: &JobId, files: &[JobFile]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM job_files WHERE job_id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        for (idx, file) in files.iter().enumerate() {
            sqlx::query(
                "INSERT INTO job_files (job_id, idx, uri, relative, size, version) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(id.as_str())
            .bind(i64::try_from(idx).unwrap_or(i64::MAX))
            .bind(&file.uri)
            .bind(&file.relative)
            .bind(i64::try_from(file.size).unwrap_or(i64::MAX))
            .bind(file.version.as_deref())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The input files recorded for a job, in order; empty for a job not validated yet (or
    /// validated by a batchd from before the list was kept).
    pub async fn job_files(&self, id: &JobId) -> Result<Vec<JobFile>, StoreError> {
        let rows = sqlx::query(
            "SELECT uri, relative, size, version FROM job_files WHERE job_id = ? ORDER BY idx",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(JobFile {
                    uri: row.try_get("uri")?,
                    relative: row.try_get("relative")?,
                    size: to_u64(row.try_get("size")?),
                    version: row.try_get("version")?,
                })
            })
            .collect()
    }

    pub async fn count_active_by_model(&self, model_id: &str) -> Result<u64, StoreError> {
        let sql = format!("SELECT COUNT(*) FROM jobs WHERE model_id = ? AND status IN {ACTIVE}");
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(model_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(to_u64(n))
    }

    /// Moves a job to `to` if that is legal from its current status; sets `message` when
    /// given, and `end_time` when `to` is terminal. Compare-and-set: a concurrent change
    /// makes it re-check against the new status.
    pub async fn transition(
        &self,
        id: &JobId,
        to: JobStatus,
        message: Option<&str>,
    ) -> Result<JobRecord, StoreError> {
        loop {
            let job = self
                .get(id)
                .await?
                .ok_or_else(|| StoreError::NotFound(id.clone()))?;
            job.status
                .transition(to)
                .map_err(|source| StoreError::Transition {
                    job: id.clone(),
                    source,
                })?;
            let now = now_ms();
            let end_time = to.is_terminal().then_some(now);
            let done = sqlx::query(
                "UPDATE jobs SET status = ?, message = COALESCE(?, message), last_modified_ms = ?,
                    end_time_ms = COALESCE(?, end_time_ms)
                 WHERE job_id = ? AND status = ?",
            )
            .bind(to.as_str())
            .bind(message)
            .bind(now)
            .bind(end_time)
            .bind(id.as_str())
            .bind(job.status.as_str())
            .execute(&self.pool)
            .await?;
            if done.rows_affected() == 1 {
                return self
                    .get(id)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(id.clone()));
            }
        }
    }

    /// Records the live counters of a running job.
    pub async fn update_counters(&self, id: &JobId, c: &Counters) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET total_records = ?, processed_records = ?, success_records = ?,
                error_records = ?, input_tokens = ?, output_tokens = ?, last_modified_ms = ?
             WHERE job_id = ?",
        )
        .bind(to_i64(c.total))
        .bind(to_i64(c.processed))
        .bind(to_i64(c.success))
        .bind(to_i64(c.error))
        .bind(to_i64(c.input_tokens))
        .bind(to_i64(c.output_tokens))
        .bind(now_ms())
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(id.clone()));
        }
        Ok(())
    }

    /// Records a checkpoint and its counters, atomically. A checkpoint behind the stored one
    /// is refused (the stored one stays), so it never moves backwards.
    pub async fn checkpoint(&self, id: &JobId, ckpt: &Checkpoint) -> Result<bool, StoreError> {
        let c = &ckpt.counters;
        let done = sqlx::query(
            "UPDATE jobs SET ckpt_file = ?, ckpt_records = ?, ckpt_position = ?,
                total_records = ?, processed_records = ?, success_records = ?, error_records = ?,
                input_tokens = ?, output_tokens = ?, last_modified_ms = ?
             WHERE job_id = ? AND (ckpt_file, ckpt_records) <= (?, ?)",
        )
        .bind(to_i64(ckpt.file_index))
        .bind(to_i64(ckpt.records_in_file))
        .bind(to_i64(ckpt.position))
        .bind(to_i64(c.total))
        .bind(to_i64(c.processed))
        .bind(to_i64(c.success))
        .bind(to_i64(c.error))
        .bind(to_i64(c.input_tokens))
        .bind(to_i64(c.output_tokens))
        .bind(now_ms())
        .bind(id.as_str())
        .bind(to_i64(ckpt.file_index))
        .bind(to_i64(ckpt.records_in_file))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Sets the job's message without changing its status.
    pub async fn set_message(&self, id: &JobId, message: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET message = ?, last_modified_ms = ? WHERE job_id = ?")
            .bind(message)
            .bind(now_ms())
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Closes the pool, flushing SQLite's WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn row_to_job(row: &SqliteRow) -> Result<JobRecord, StoreError> {
    let id: String = row.try_get("job_id")?;
    let status: String = row.try_get("status")?;
    let invocation_type: String = row.try_get("invocation_type")?;
    let timeout_hours: Option<i64> = row.try_get("timeout_hours")?;
    let counters = Counters {
        total: to_u64(row.try_get("total_records")?),
        processed: to_u64(row.try_get("processed_records")?),
        success: to_u64(row.try_get("success_records")?),
        error: to_u64(row.try_get("error_records")?),
        input_tokens: to_u64(row.try_get("input_tokens")?),
        output_tokens: to_u64(row.try_get("output_tokens")?),
    };
    Ok(JobRecord {
        id: JobId::parse(&id).map_err(|_| StoreError::Corrupt {
            column: "job_id",
            value: id.clone(),
        })?,
        arn: row.try_get("job_arn")?,
        name: row.try_get("job_name")?,
        model_id: row.try_get("model_id")?,
        role_arn: row.try_get("role_arn")?,
        client_request_token: row.try_get("client_request_token")?,
        invocation_type: invocation_type.parse().map_err(|_| StoreError::Corrupt {
            column: "invocation_type",
            value: invocation_type.clone(),
        })?,
        input_uri: row.try_get("input_uri")?,
        output_uri: row.try_get("output_uri")?,
        status: status.parse().map_err(|_| StoreError::Corrupt {
            column: "status",
            value: status.clone(),
        })?,
        message: row.try_get("message")?,
        timeout_hours: timeout_hours.and_then(|h| u32::try_from(h).ok()),
        submit_time_ms: row.try_get("submit_time_ms")?,
        last_modified_ms: row.try_get("last_modified_ms")?,
        end_time_ms: row.try_get("end_time_ms")?,
        job_expiration_ms: row.try_get("job_expiration_ms")?,
        counters,
        checkpoint: Checkpoint {
            file_index: to_u64(row.try_get("ckpt_file")?),
            records_in_file: to_u64(row.try_get("ckpt_records")?),
            position: to_u64(row.try_get("ckpt_position")?),
            counters,
        },
        request_json: row.try_get("request_json")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_job(id: &str) -> NewJob {
        NewJob {
            id: JobId::parse(id).unwrap(),
            arn: format!("arn:aws:bedrock:us-east-1:000000000000:model-invocation-job/{id}"),
            name: "job".into(),
            model_id: "m".into(),
            role_arn: None,
            client_request_token: Some(format!("tok-{id}")),
            invocation_type: InvocationType::Converse,
            input_uri: "in".into(),
            output_uri: "out".into(),
            timeout_hours: Some(24),
            job_expiration_ms: None,
            request_json: None,
        }
    }

    #[tokio::test]
    async fn a_jobs_file_list_round_trips_in_order_and_is_replaced_whole() {
        let store = JobStore::in_memory().await.unwrap();
        let job = store.create(new_job("fffffffffff1")).await.unwrap();
        assert!(store.job_files(&job.id).await.unwrap().is_empty());
        let file = |n: u64, version: Option<&str>| JobFile {
            uri: format!("s3://b/in/{n}.jsonl"),
            relative: format!("{n}.jsonl"),
            size: n * 1000,
            version: version.map(str::to_owned),
        };
        let files = vec![
            file(2, Some("\"e2\"")),
            file(1, None),
            file(3, Some("\"e3\"")),
        ];
        store.set_job_files(&job.id, &files).await.unwrap();
        assert_eq!(store.job_files(&job.id).await.unwrap(), files);
        store.set_job_files(&job.id, &files[..1]).await.unwrap();
        assert_eq!(store.job_files(&job.id).await.unwrap(), files[..1]);
        let other = store.create(new_job("fffffffffff2")).await.unwrap();
        assert!(store.job_files(&other.id).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn jobs_move_only_through_legal_transitions() {
        let store = JobStore::in_memory().await.unwrap();
        let job = store.create(new_job("aaaaaaaaaaaa")).await.unwrap();
        assert_eq!(job.status, JobStatus::Submitted);
        assert_eq!(job.end_time_ms, None);
        let err = store
            .transition(&job.id, JobStatus::InProgress, None)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Transition { .. }), "{err}");
        for to in [
            JobStatus::Validating,
            JobStatus::Scheduled,
            JobStatus::InProgress,
        ] {
            assert_eq!(
                store.transition(&job.id, to, None).await.unwrap().status,
                to
            );
        }
        let done = store
            .transition(&job.id, JobStatus::Completed, Some("all done"))
            .await
            .unwrap();
        assert_eq!(done.message.as_deref(), Some("all done"));
        assert!(done.end_time_ms.is_some());
        assert!(
            store
                .transition(&job.id, JobStatus::Stopping, None)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn list_filters_orders_and_pages_with_a_cursor() {
        let store = JobStore::in_memory().await.unwrap();
        for (i, id) in [
            "aaaaaaaaaaa1",
            "aaaaaaaaaaa2",
            "aaaaaaaaaaa3",
            "aaaaaaaaaaa4",
        ]
        .iter()
        .enumerate()
        {
            let mut job = new_job(id);
            job.name = format!("{}-job-{i}", if i % 2 == 0 { "even" } else { "odd" });
            store.create(job).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
        let id = |s: &str| JobId::parse(s).unwrap();
        store
            .transition(&id("aaaaaaaaaaa2"), JobStatus::Validating, None)
            .await
            .unwrap();

        let page = |after, ascending| JobFilter {
            limit: 2,
            ascending,
            after,
            ..Default::default()
        };
        let first = store.list(&page(None, false)).await.unwrap();
        let ids: Vec<_> = first.iter().map(|j| j.id.as_str().to_owned()).collect();
        assert_eq!(ids, ["aaaaaaaaaaa4", "aaaaaaaaaaa3"]);
        let last = first.last().unwrap();
        let cursor = Some((last.submit_time_ms, last.id.to_string()));
        let second = store.list(&page(cursor, false)).await.unwrap();
        let ids: Vec<_> = second.iter().map(|j| j.id.as_str().to_owned()).collect();
        assert_eq!(ids, ["aaaaaaaaaaa2", "aaaaaaaaaaa1"]);
        let asc = store.list(&page(None, true)).await.unwrap();
        assert_eq!(asc[0].id.as_str(), "aaaaaaaaaaa1");

        let odd = JobFilter {
            name_contains: Some("odd".into()),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(store.list(&odd).await.unwrap().len(), 2);
        let validating = JobFilter {
            status: Some(JobStatus::Validating),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(
            store.list(&validating).await.unwrap()[0].id.as_str(),
            "aaaaaaaaaaa2"
        );
        let t2 = second[0].submit_time_ms;
        let after = JobFilter {
            submit_time_after_ms: Some(t2),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(store.list(&after).await.unwrap().len(), 2);

        assert_eq!(store.count_active_by_model("m").await.unwrap(), 4);
        assert!(
            store
                .find_active_by_name("odd-job-1")
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .find_by_token("tok-aaaaaaaaaaa3")
                .await
                .unwrap()
                .is_some()
        );
        assert!(store.find_by_token("nope").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn checkpoints_never_move_backwards() {
        let store = JobStore::in_memory().await.unwrap();
        let job = store.create(new_job("dddddddddddd")).await.unwrap();
        let at = |file, records, processed| Checkpoint {
            file_index: file,
            records_in_file: records,
            position: records * 10,
            counters: Counters {
                total: 100,
                processed,
                success: processed,
                ..Counters::default()
            },
        };
        assert!(store.checkpoint(&job.id, &at(0, 5, 5)).await.unwrap());
        assert!(store.checkpoint(&job.id, &at(1, 2, 12)).await.unwrap());
        assert!(
            !store.checkpoint(&job.id, &at(0, 9, 9)).await.unwrap(),
            "backwards is refused"
        );
        let job = store.get(&job.id).await.unwrap().unwrap();
        assert_eq!(job.checkpoint, at(1, 2, 12));
        assert_eq!(job.counters.processed, 12);
    }

    #[tokio::test]
    async fn counters_and_jobs_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db/batchd.sqlite");
        let id = JobId::parse("bbbbbbbbbbbb").unwrap();
        {
            let store = JobStore::open(&path).await.unwrap();
            store.create(new_job(id.as_str())).await.unwrap();
            store
                .transition(&id, JobStatus::Validating, None)
                .await
                .unwrap();
            let c = Counters {
                total: 10,
                processed: 4,
                success: 3,
                error: 1,
                input_tokens: 40,
                output_tokens: 50,
            };
            store.update_counters(&id, &c).await.unwrap();
            store.close().await;
        }
        let store = JobStore::open(&path).await.unwrap();
        let job = store.get(&id).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Validating);
        assert_eq!(job.counters.processed, 4);
        assert_eq!(job.counters.output_tokens, 50);
        assert_eq!(
            job.client_request_token.as_deref(),
            Some("tok-bbbbbbbbbbbb")
        );
        let running = store
            .list_in_status(&[JobStatus::Validating])
            .await
            .unwrap();
        assert_eq!(running.len(), 1);
        assert!(
            store
                .get(&JobId::parse("cccccccccccc").unwrap())
                .await
                .unwrap()
                .is_none()
        );
    }
}
