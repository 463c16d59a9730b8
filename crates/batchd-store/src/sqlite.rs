//! [`SqliteStore`]: the job store in one SQLite file (or in memory) through `sqlx`, with the
//! schema made by the embedded migrations in `migrations/`.

use std::path::Path;
use std::str::FromStr;

use batchd_core::{
    BatchJobOptions, Checkpoint, Counters, Dialect, DialectKind, FileFilter, FileRecord,
    ItemFormat, Job, JobFile, JobFilter, JobId, JobOrigin, JobRequest, JobRetry, JobStatus, NewJob,
    OpenAiBatchOptions, PhaseTimes, RetryClass,
};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, SqlSafeStr, Sqlite, SqlitePool};

use crate::{ACTIVE_STATUSES, JobStore, StoreError, now_ms};

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
    (
        4,
        "origin and inputs",
        include_str!("../migrations/0004_origin_inputs.sql"),
    ),
    (5, "dialect", include_str!("../migrations/0005_dialect.sql")),
    (
        6,
        "timings position",
        include_str!("../migrations/0006_timings_position.sql"),
    ),
    (7, "files", include_str!("../migrations/0007_files.sql")),
    (8, "account", include_str!("../migrations/0008_account.sql")),
    (
        9,
        "phase times",
        include_str!("../migrations/0009_phase_times.sql"),
    ),
    (
        10,
        "file account",
        include_str!("../migrations/0010_file_account.sql"),
    ),
    (11, "tags", include_str!("../migrations/0011_tags.sql")),
];

fn migrator() -> Migrator {
    migrator_upto(MIGRATIONS.len())
}

/// The first `n` migrations (tests build older schemas with it).
fn migrator_upto(n: usize) -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS[..n.min(MIGRATIONS.len())]
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

/// Jobs in SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
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
}

#[async_trait::async_trait]
impl JobStore for SqliteStore {
    async fn create(&self, job: NewJob) -> Result<Job, StoreError> {
        let now = now_ms();
        let r = &job.request;
        let inputs = serde_json::to_string(&r.inputs).map_err(|e| StoreError::Corrupt {
            column: "inputs",
            value: e.to_string(),
        })?;
        let options = match &r.dialect {
            Dialect::Bedrock => Ok(None),
            Dialect::BatchJob(o) => {
                serde_json::to_string(&StoredOptions::from(o.as_ref())).map(Some)
            }
            Dialect::OpenAi(o) => serde_json::to_string(&StoredOpenAi::from(o.as_ref())).map(Some),
        }
        .map_err(|e| StoreError::Corrupt {
            column: "dialect_options",
            value: e.to_string(),
        })?;
        sqlx::query(
            "INSERT INTO jobs (job_id, job_arn, job_name, model_id, origin, role_arn,
                client_request_token, invocation_type, inputs, input_uri, output_uri, status,
                timeout_hours, submit_time_ms, last_modified_ms, job_expiration_ms, request_json,
                dialect, dialect_options, account_id)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(job.id.as_str())
        .bind(&job.arn)
        .bind(&r.name)
        .bind(&r.model_id)
        .bind(r.origin.as_str())
        .bind(&r.role_arn)
        .bind(&r.client_request_token)
        .bind(r.invocation_type.as_str())
        .bind(inputs)
        // The column `inputs` replaced; kept filled for a batchd from before it that opens
        // this file.
        .bind(r.inputs.join("\n"))
        .bind(&r.output)
        .bind(job.initial_status().as_str())
        .bind(r.timeout_hours.map(i64::from))
        .bind(now)
        .bind(now)
        .bind(job.job_expiration_ms)
        .bind(&r.request_json)
        .bind(r.dialect.kind().as_str())
        .bind(options)
        .bind(&r.account_id)
        .execute(&self.pool)
        .await?;
        if r.dialect.kind() == DialectKind::Bedrock {
            // The request's tags, read from the stored request as migration 11 reads them.
            sqlx::query(
                "INSERT OR REPLACE INTO job_tags (job_id, tag_key, tag_value)
                 SELECT ?, json_extract(t.value, '$.key'), json_extract(t.value, '$.value')
                 FROM json_each(CASE WHEN json_valid(?) THEN ? ELSE '{}' END, '$.tags') AS t
                 WHERE json_type(t.value, '$.key') = 'text'
                     AND json_type(t.value, '$.value') = 'text'",
            )
            .bind(job.id.as_str())
            .bind(&r.request_json)
            .bind(&r.request_json)
            .execute(&self.pool)
            .await?;
        }
        self.get(&job.id).await?.ok_or(StoreError::NotFound(job.id))
    }

    async fn tags(&self, id: &JobId) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT tag_key, tag_value FROM job_tags WHERE job_id = ? ORDER BY tag_key",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("tag_key")?, row.try_get("tag_value")?)))
            .collect()
    }

    async fn set_tags(&self, id: &JobId, tags: &[(String, String)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (key, value) in tags {
            sqlx::query(
                "INSERT INTO job_tags (job_id, tag_key, tag_value) VALUES (?, ?, ?)
                 ON CONFLICT (job_id, tag_key) DO UPDATE SET tag_value = excluded.tag_value",
            )
            .bind(id.as_str())
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn remove_tags(&self, id: &JobId, keys: &[String]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for key in keys {
            sqlx::query("DELETE FROM job_tags WHERE job_id = ? AND tag_key = ?")
                .bind(id.as_str())
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        self.find_one("job_id", id.as_str()).await
    }

    async fn list_in_status(
        &self,
        origin: JobOrigin,
        statuses: &[JobStatus],
    ) -> Result<Vec<Job>, StoreError> {
        if statuses.is_empty() {
            return Ok(Vec::new());
        }
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT * FROM jobs WHERE origin = ");
        q.push_bind(origin.as_str());
        push_status_in(&mut q, statuses);
        q.push(" ORDER BY submit_time_ms, job_id");
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(row_to_job).collect()
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT * FROM jobs WHERE origin = ");
        q.push_bind(filter.origin.as_str());
        if let Some(dialect) = filter.dialect {
            q.push(" AND dialect = ").push_bind(dialect.as_str());
        }
        if let Some(account) = &filter.account_id {
            q.push(" AND account_id = ").push_bind(account.clone());
        }
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

    async fn find_by_token(&self, account: &str, token: &str) -> Result<Option<Job>, StoreError> {
        let row =
            sqlx::query("SELECT * FROM jobs WHERE account_id = ? AND client_request_token = ?")
                .bind(account)
                .bind(token)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(row_to_job).transpose()
    }

    async fn find_active_by_name(
        &self,
        origin: JobOrigin,
        account: &str,
        name: &str,
    ) -> Result<Option<Job>, StoreError> {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT * FROM jobs WHERE job_name = ");
        q.push_bind(name)
            .push(" AND account_id = ")
            .push_bind(account)
            .push(" AND origin = ")
            .push_bind(origin.as_str())
            .push(" AND dialect = ")
            .push_bind(DialectKind::Bedrock.as_str());
        push_status_in(&mut q, &ACTIVE_STATUSES);
        q.push(" LIMIT 1");
        let row = q.build().fetch_optional(&self.pool).await?;
        row.as_ref().map(row_to_job).transpose()
    }

    async fn set_job_files(&self, id: &JobId, files: &[JobFile]) -> Result<(), StoreError> {
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

    async fn job_files(&self, id: &JobId) -> Result<Vec<JobFile>, StoreError> {
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

    async fn transition(
        &self,
        id: &JobId,
        to: JobStatus,
        message: Option<&str>,
    ) -> Result<Job, StoreError> {
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
            let in_progress = (to == JobStatus::InProgress).then_some(now);
            let stopping = (to == JobStatus::Stopping).then_some(now);
            let done = sqlx::query(
                "UPDATE jobs SET status = ?, message = COALESCE(?, message), last_modified_ms = ?,
                    end_time_ms = COALESCE(?, end_time_ms),
                    in_progress_ms = COALESCE(in_progress_ms, ?),
                    stopping_ms = COALESCE(stopping_ms, ?)
                 WHERE job_id = ? AND status = ?",
            )
            .bind(to.as_str())
            .bind(message)
            .bind(now)
            .bind(end_time)
            .bind(in_progress)
            .bind(stopping)
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

    async fn start(&self, id: &JobId, job_expiration_ms: Option<i64>) -> Result<Job, StoreError> {
        let job = self
            .get(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.clone()))?;
        let refused = |from: JobStatus| StoreError::Transition {
            job: id.clone(),
            source: batchd_core::StatusError::IllegalTransition {
                from,
                to: JobStatus::Submitted,
            },
        };
        if job.status != JobStatus::Created {
            return Err(refused(job.status));
        }
        let done = sqlx::query(
            "UPDATE jobs SET status = ?, job_expiration_ms = ?, last_modified_ms = ?
             WHERE job_id = ? AND status = ?",
        )
        .bind(JobStatus::Submitted.as_str())
        .bind(job_expiration_ms)
        .bind(now_ms())
        .bind(id.as_str())
        .bind(JobStatus::Created.as_str())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() != 1 {
            // Someone else moved it first (a start or a stop): report what it is now.
            let now = self.get(id).await?.map_or(JobStatus::Created, |j| j.status);
            return Err(refused(now));
        }
        self.get(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.clone()))
    }

    async fn update_counters(&self, id: &JobId, c: &Counters) -> Result<(), StoreError> {
        let sql = format!("UPDATE jobs SET {SET_COUNTERS} WHERE job_id = ?");
        let done = bind_counters(sqlx::query(sqlx::AssertSqlSafe(sql)), c)
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(id.clone()));
        }
        Ok(())
    }

    async fn checkpoint(&self, id: &JobId, ckpt: &Checkpoint) -> Result<bool, StoreError> {
        let c = &ckpt.counters;
        let sql = format!(
            "UPDATE jobs SET {SET_COUNTERS}, ckpt_file = ?, ckpt_records = ?, ckpt_position = ?,
                ckpt_timings_position = ?
             WHERE job_id = ? AND (ckpt_file, ckpt_records) <= (?, ?)"
        );
        let done = bind_counters(sqlx::query(sqlx::AssertSqlSafe(sql)), c)
            .bind(to_i64(ckpt.file_index))
            .bind(to_i64(ckpt.records_in_file))
            .bind(to_i64(ckpt.position))
            .bind(to_i64(ckpt.timings_position))
            .bind(id.as_str())
            .bind(to_i64(ckpt.file_index))
            .bind(to_i64(ckpt.records_in_file))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn mark_finalizing(&self, id: &JobId) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET finalizing_ms = COALESCE(finalizing_ms, ?) WHERE job_id = ?")
            .bind(now_ms())
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_message(&self, id: &JobId, message: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET message = ?, last_modified_ms = ? WHERE job_id = ?")
            .bind(message)
            .bind(now_ms())
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_file(&self, file: &FileRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO files (id, account_id, bytes, created_at, expires_at, filename, purpose, uri)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&file.id)
        .bind(&file.account_id)
        .bind(to_i64(file.bytes))
        .bind(file.created_at)
        .bind(file.expires_at)
        .bind(&file.filename)
        .bind(&file.purpose)
        .bind(&file.uri)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_file(&self, id: &str) -> Result<Option<FileRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM files WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(row_to_file).transpose()
    }

    async fn list_files(&self, filter: &FileFilter) -> Result<Vec<FileRecord>, StoreError> {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT * FROM files WHERE 1 = 1");
        if let Some(account) = &filter.account_id {
            q.push(" AND account_id = ").push_bind(account.clone());
        }
        if let Some(purpose) = &filter.purpose {
            q.push(" AND purpose = ").push_bind(purpose.clone());
        }
        let (cmp, order) = if filter.ascending {
            (">", "ASC")
        } else {
            ("<", "DESC")
        };
        if let Some(after) = &filter.after {
            // A cursor that names no file compares with NULL: an empty page.
            q.push(format_args!(
                " AND (created_at, id) {cmp} (SELECT created_at, id FROM files WHERE id = "
            ))
            .push_bind(after.clone())
            .push(")");
        }
        q.push(format_args!(
            " ORDER BY created_at {order}, id {order} LIMIT "
        ))
        .push_bind(i64::from(filter.limit));
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(row_to_file).collect()
    }

    async fn delete_file(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM files WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn close(&self) {
        // Closing the pool checkpoints SQLite's WAL into the database file.
        self.pool.close().await;
    }
}

impl SqliteStore {
    /// The job whose `column` (a column name, never user input) equals `value`.
    async fn find_one(&self, column: &'static str, value: &str) -> Result<Option<Job>, StoreError> {
        let sql = format!("SELECT * FROM jobs WHERE {column} = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(value)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(row_to_job).transpose()
    }
}

/// The counters' columns and the modification time, as `bind_counters` binds them.
const SET_COUNTERS: &str = "total_records = ?, processed_records = ?, success_records = ?,
    error_records = ?, input_tokens = ?, output_tokens = ?, last_modified_ms = ?";

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, <Sqlite as sqlx::Database>::Arguments>;

fn bind_counters<'q>(q: SqliteQuery<'q>, c: &Counters) -> SqliteQuery<'q> {
    q.bind(to_i64(c.total))
        .bind(to_i64(c.processed))
        .bind(to_i64(c.success))
        .bind(to_i64(c.error))
        .bind(to_i64(c.input_tokens))
        .bind(to_i64(c.output_tokens))
        .bind(now_ms())
}

/// ` AND status IN (?, ...)` for `statuses` (non-empty).
fn push_status_in(q: &mut QueryBuilder<Sqlite>, statuses: &[JobStatus]) {
    q.push(" AND status IN (");
    let mut list = q.separated(", ");
    for status in statuses {
        list.push_bind(status.as_str());
    }
    q.push(")");
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn row_to_job(row: &SqliteRow) -> Result<Job, StoreError> {
    let id: String = row.try_get("job_id")?;
    let status: String = row.try_get("status")?;
    let origin: String = row.try_get("origin")?;
    let invocation_type: String = row.try_get("invocation_type")?;
    let inputs: String = row.try_get("inputs")?;
    let timeout_hours: Option<i64> = row.try_get("timeout_hours")?;
    let dialect: String = row.try_get("dialect")?;
    let options: Option<String> = row.try_get("dialect_options")?;
    let corrupt = |column: &'static str, value: &str| StoreError::Corrupt {
        column,
        value: value.to_owned(),
    };
    let counters = Counters {
        total: to_u64(row.try_get("total_records")?),
        processed: to_u64(row.try_get("processed_records")?),
        success: to_u64(row.try_get("success_records")?),
        error: to_u64(row.try_get("error_records")?),
        input_tokens: to_u64(row.try_get("input_tokens")?),
        output_tokens: to_u64(row.try_get("output_tokens")?),
    };
    Ok(Job {
        id: JobId::parse(&id).map_err(|_| corrupt("job_id", &id))?,
        arn: row.try_get("job_arn")?,
        request: JobRequest {
            name: row.try_get("job_name")?,
            account_id: row.try_get("account_id")?,
            model_id: row.try_get("model_id")?,
            origin: origin.parse().map_err(|_| corrupt("origin", &origin))?,
            role_arn: row.try_get("role_arn")?,
            client_request_token: row.try_get("client_request_token")?,
            invocation_type: invocation_type
                .parse()
                .map_err(|_| corrupt("invocation_type", &invocation_type))?,
            inputs: serde_json::from_str(&inputs).map_err(|_| corrupt("inputs", &inputs))?,
            output: row.try_get("output_uri")?,
            timeout_hours: timeout_hours.and_then(|h| u32::try_from(h).ok()),
            request_json: row.try_get("request_json")?,
            dialect: match (DialectKind::parse(&dialect), options) {
                (Some(DialectKind::Bedrock), _) => Dialect::Bedrock,
                (Some(DialectKind::BatchJob), Some(options)) => {
                    let stored: StoredOptions = serde_json::from_str(&options)
                        .map_err(|_| corrupt("dialect_options", &options))?;
                    Dialect::BatchJob(Box::new(
                        stored
                            .into_options()
                            .ok_or_else(|| corrupt("dialect_options", &options))?,
                    ))
                }
                (Some(DialectKind::OpenAi), Some(options)) => {
                    let stored: StoredOpenAi = serde_json::from_str(&options)
                        .map_err(|_| corrupt("dialect_options", &options))?;
                    Dialect::OpenAi(Box::new(stored.into()))
                }
                _ => return Err(corrupt("dialect", &dialect)),
            },
        },
        status: status.parse().map_err(|_| corrupt("status", &status))?,
        message: row.try_get("message")?,
        submit_time_ms: row.try_get("submit_time_ms")?,
        last_modified_ms: row.try_get("last_modified_ms")?,
        end_time_ms: row.try_get("end_time_ms")?,
        job_expiration_ms: row.try_get("job_expiration_ms")?,
        phases: PhaseTimes {
            in_progress_ms: row.try_get("in_progress_ms")?,
            finalizing_ms: row.try_get("finalizing_ms")?,
            stopping_ms: row.try_get("stopping_ms")?,
        },
        counters,
        checkpoint: Checkpoint {
            file_index: to_u64(row.try_get("ckpt_file")?),
            records_in_file: to_u64(row.try_get("ckpt_records")?),
            position: to_u64(row.try_get("ckpt_position")?),
            timings_position: to_u64(row.try_get("ckpt_timings_position")?),
            counters,
        },
    })
}

fn row_to_file(row: &SqliteRow) -> Result<FileRecord, StoreError> {
    Ok(FileRecord {
        id: row.try_get("id")?,
        account_id: row.try_get("account_id")?,
        bytes: to_u64(row.try_get("bytes")?),
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        filename: row.try_get("filename")?,
        purpose: row.try_get("purpose")?,
        uri: row.try_get("uri")?,
    })
}

/// [`BatchJobOptions`] as the `dialect_options` column holds them (JSON; the names are the
/// stored format, so renaming one needs a migration).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredOptions {
    batch_size: u32,
    max_concurrent_batches: u32,
    timeout_seconds: u64,
    input_format: String,
    output_format: String,
    prompt_template: Option<String>,
    retry: Option<StoredRetry>,
}

/// [`OpenAiBatchOptions`] in the `dialect_options` column.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredOpenAi {
    endpoint: String,
    input_file_id: String,
    completion_window: String,
    metadata: Vec<(String, String)>,
    output_expires_after_seconds: Option<i64>,
}

impl From<&OpenAiBatchOptions> for StoredOpenAi {
    fn from(o: &OpenAiBatchOptions) -> Self {
        Self {
            endpoint: o.endpoint.clone(),
            input_file_id: o.input_file_id.clone(),
            completion_window: o.completion_window.clone(),
            metadata: o.metadata.clone(),
            output_expires_after_seconds: o.output_expires_after_seconds,
        }
    }
}

impl From<StoredOpenAi> for OpenAiBatchOptions {
    fn from(o: StoredOpenAi) -> Self {
        Self {
            endpoint: o.endpoint,
            input_file_id: o.input_file_id,
            completion_window: o.completion_window,
            metadata: o.metadata,
            output_expires_after_seconds: o.output_expires_after_seconds,
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredRetry {
    max_attempts: u32,
    initial_backoff_ms: u64,
    max_backoff_ms: u64,
    retry_on: Vec<String>,
}

impl From<&BatchJobOptions> for StoredOptions {
    fn from(o: &BatchJobOptions) -> Self {
        Self {
            batch_size: o.batch_size,
            max_concurrent_batches: o.max_concurrent_batches,
            timeout_seconds: o.timeout_seconds,
            input_format: o.input_format.as_str().to_owned(),
            output_format: o.output_format.as_str().to_owned(),
            prompt_template: o.prompt_template.clone(),
            retry: o.retry.as_ref().map(|r| StoredRetry {
                max_attempts: r.max_attempts,
                initial_backoff_ms: r.initial_backoff_ms,
                max_backoff_ms: r.max_backoff_ms,
                retry_on: r.retry_on.iter().map(|c| c.as_str().to_owned()).collect(),
            }),
        }
    }
}

impl StoredOptions {
    /// `None` when a stored name is not one this build knows.
    fn into_options(self) -> Option<BatchJobOptions> {
        let retry = match self.retry {
            Some(r) => Some(JobRetry {
                max_attempts: r.max_attempts,
                initial_backoff_ms: r.initial_backoff_ms,
                max_backoff_ms: r.max_backoff_ms,
                retry_on: r
                    .retry_on
                    .iter()
                    .map(|c| RetryClass::parse(c))
                    .collect::<Option<_>>()?,
            }),
            None => None,
        };
        Some(BatchJobOptions {
            batch_size: self.batch_size,
            max_concurrent_batches: self.max_concurrent_batches,
            timeout_seconds: self.timeout_seconds,
            input_format: ItemFormat::parse(&self.input_format)?,
            output_format: ItemFormat::parse(&self.output_format)?,
            prompt_template: self.prompt_template,
            retry,
        })
    }
}

#[cfg(test)]
mod tests {
    //! What only SQLite does: files, reopening, migrating older files. The behaviour every
    //! store shares is in `tests/conformance.rs`.
    use super::*;
    use batchd_core::InvocationType;

    /// A migration file that is not in `MIGRATIONS` never runs: each file is listed, under
    /// the number its name starts with, with its own text.
    #[test]
    fn every_migration_file_is_embedded_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert_eq!(files.len(), MIGRATIONS.len(), "{files:?}");
        for (path, (version, _, sql)) in files.iter().zip(MIGRATIONS) {
            let name = path.file_name().unwrap().to_string_lossy();
            let number: i64 = name.split('_').next().unwrap().parse().unwrap();
            assert_eq!(number, *version, "{name}");
            assert_eq!(std::fs::read_to_string(path).unwrap(), *sql, "{name}");
        }
    }

    fn new_job(id: &str) -> NewJob {
        NewJob {
            id: JobId::parse(id).unwrap(),
            arn: format!("arn:aws:bedrock:us-east-1:000000000000:model-invocation-job/{id}"),
            request: JobRequest {
                name: "job".into(),
                account_id: "000000000000".into(),
                model_id: "m".into(),
                origin: JobOrigin::Api,
                role_arn: Some("arn:aws:iam::000000000000:role/r".into()),
                client_request_token: Some(format!("tok-{id}")),
                invocation_type: InvocationType::Converse,
                inputs: vec!["in".into()],
                output: "out".into(),
                timeout_hours: Some(24),
                request_json: None,
                dialect: Dialect::Bedrock,
            },
            job_expiration_ms: None,
        }
    }

    #[tokio::test]
    async fn counters_and_jobs_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db/batchd.sqlite");
        let id = JobId::parse("bbbbbbbbbbbb").unwrap();
        {
            let store = SqliteStore::open(&path).await.unwrap();
            store.create(new_job(id.as_str())).await.unwrap();
            store
                .transition(&id, JobStatus::Validating, None)
                .await
                .unwrap();
            let c = Counters {
                total: 10,
                processed: 4,
                output_tokens: 50,
                ..Counters::default()
            };
            store.update_counters(&id, &c).await.unwrap();
            store.close().await;
        }
        let store = SqliteStore::open(&path).await.unwrap();
        let job = store.get(&id).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Validating);
        assert_eq!(job.counters.processed, 4);
        assert_eq!(job.counters.output_tokens, 50);
        assert_eq!(job.request, new_job(id.as_str()).request);
        let validating = store
            .list_in_status(JobOrigin::Api, &[JobStatus::Validating])
            .await
            .unwrap();
        assert_eq!(validating.len(), 1);
    }

    /// A database file made by the first `n` migrations only, as an older batchd left it.
    async fn pool_upto(path: &Path, n: usize) -> SqlitePool {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .unwrap();
        migrator_upto(n).run(&pool).await.unwrap();
        pool
    }

    /// A file written by a batchd from before migration 4 (inputs "\n"-joined, origin
    /// implied by the role ARN) reads back with the inputs as a list and the origin explicit.
    #[tokio::test]
    async fn a_file_from_before_origin_and_inputs_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batchd.sqlite");
        let pool = pool_upto(&path, 3).await;
        for (id, role, inputs) in [
            ("aaaaaaaaaaa1", Some("arn:aws:iam::1:role/r"), "s3://b/in/"),
            (
                "aaaaaaaaaaa2",
                None,
                "/x/a.jsonl\n/x/b dir/\n/x/\"q\".jsonl",
            ),
        ] {
            sqlx::query(
                "INSERT INTO jobs (job_id, job_arn, job_name, model_id, role_arn, invocation_type,
                    input_uri, output_uri, status, submit_time_ms, last_modified_ms)
                 VALUES (?, '', 'n', 'm', ?, 'Converse', ?, 'out', 'Completed', 1, 1)",
            )
            .bind(id)
            .bind(role)
            .bind(inputs)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        let get = |id: &'static str| {
            let store = store.clone();
            async move {
                store
                    .get(&JobId::parse(id).unwrap())
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        let api = get("aaaaaaaaaaa1").await;
        assert_eq!(api.request.origin, JobOrigin::Api);
        assert_eq!(api.request.inputs, ["s3://b/in/"]);
        let run = get("aaaaaaaaaaa2").await;
        assert_eq!(run.request.origin, JobOrigin::Run);
        assert_eq!(
            run.request.inputs,
            ["/x/a.jsonl", "/x/b dir/", "/x/\"q\".jsonl"]
        );
    }

    /// Jobs from before migration 8 belong to the account their ARN names (the server's
    /// configured one); one without an ARN (`batchd run`'s, once) to the default account.
    #[tokio::test]
    async fn jobs_from_before_accounts_take_the_account_of_their_arn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batchd.sqlite");
        let pool = pool_upto(&path, 7).await;
        for (id, arn) in [
            (
                "aaaaaaaaaaa1",
                "arn:aws:bedrock:eu-west-1:123456789012:model-invocation-job/aaaaaaaaaaa1",
            ),
            ("aaaaaaaaaaa2", ""),
        ] {
            sqlx::query(
                "INSERT INTO jobs (job_id, job_arn, job_name, model_id, invocation_type, inputs,
                    input_uri, output_uri, status, submit_time_ms, last_modified_ms, origin)
                 VALUES (?, ?, 'n', 'm', 'Converse', '[]', '', 'out', 'Completed', 1, 1, 'api')",
            )
            .bind(id)
            .bind(arn)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        for (id, account) in [
            ("aaaaaaaaaaa1", "123456789012"),
            ("aaaaaaaaaaa2", "000000000000"),
        ] {
            let job = store
                .get(&JobId::parse(id).unwrap())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(job.request.account_id, account, "{id}");
        }
    }

    /// Migration 11 gives the jobs before it the tags of their create request; a request with
    /// no tags, or one that is not JSON, gives none.
    #[tokio::test]
    async fn jobs_from_before_tags_take_the_tags_of_their_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batchd.sqlite");
        let pool = pool_upto(&path, 10).await;
        for (id, request) in [
            (
                "aaaaaaaaaaa1",
                Some(r#"{"tags":[{"key":"team","value":"a"}]}"#),
            ),
            ("aaaaaaaaaaa2", Some("not json")),
            ("aaaaaaaaaaa3", None),
        ] {
            sqlx::query(
                "INSERT INTO jobs (job_id, job_arn, job_name, model_id, invocation_type, inputs,
                    input_uri, output_uri, status, submit_time_ms, last_modified_ms, origin,
                    request_json)
                 VALUES (?, '', 'n', 'm', 'Converse', '[]', '', 'out', 'Completed', 1, 1, 'api', ?)",
            )
            .bind(id)
            .bind(request)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        let tags = |id: &str| {
            let id = JobId::parse(id).unwrap();
            let store = &store;
            async move { store.tags(&id).await.unwrap() }
        };
        assert_eq!(
            tags("aaaaaaaaaaa1").await,
            vec![("team".into(), "a".into())]
        );
        assert!(tags("aaaaaaaaaaa2").await.is_empty());
        assert!(tags("aaaaaaaaaaa3").await.is_empty());
    }
}
