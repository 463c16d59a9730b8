//! [`SqlStore`]: the job store written once over any database sqlx drives that is a
//! [`Flavor`] (SQLite for one machine, Postgres for several); the queries are the same SQL,
//! with each database's placeholders and the one function they name differently.

use std::borrow::Cow;
use std::sync::Arc;

use batchd_core::{
    BatchJobOptions, Checkpoint, Chunk, ChunkLease, ChunkPlan, ChunkState, Counters, Dialect,
    DialectKind, FileFilter, FileRecord, ItemFormat, Job, JobFile, JobFilter, JobId, JobOrigin,
    JobRequest, JobRetry, JobStatus, NewJob, OpenAiBatchOptions, PhaseTimes, RetryClass,
};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::query::Query;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, QueryBuilder, Row,
    SqlSafeStr, Type,
};

use crate::{ACTIVE_STATUSES, JobStore, Leases, StoreError, now_ms};

/// What differs between the databases the store runs on.
pub trait Flavor: Database {
    /// The SQL function giving the 1-based place of a substring in a string (0: absent).
    const POSITION: &'static str;
    /// Appended to a `SELECT` of one row to hold it until the transaction ends; empty where
    /// a write transaction holds the whole database.
    const LOCK_ROW: &'static str;
    /// Appended to a `SELECT` that claims rows: locked ones are passed over, not waited for.
    const SKIP_LOCKED: &'static str;

    fn rows_affected(done: &Self::QueryResult) -> u64;

    /// `sql`, written with `?` placeholders, as this database numbers them.
    fn placeholders(sql: &str) -> Cow<'_, str>;
}

/// Jobs in a SQL database: [`crate::SqliteStore`] or [`crate::PgStore`].
#[derive(Debug)]
pub struct SqlStore<DB: Database> {
    pub(crate) pool: Pool<DB>,
    /// Where `get` and `list` read instead of the pool, if anywhere (a SQLite file).
    pub(crate) direct: Option<Arc<dyn DirectReads>>,
}

// By hand: the derive would want `DB: Clone`; a pool clone shares its connections.
impl<DB: Database> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            direct: self.direct.clone(),
        }
    }
}

/// A value bound to a `?` of the store's SQL.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    Int(i64),
    Text(String),
}

/// Reads of whole job rows that skip the pool: the API's Get and List, which must stay quick
/// while jobs run (sqlx hands every SQLite command and row to a thread of its own).
pub(crate) trait DirectReads: Send + Sync + std::fmt::Debug {
    /// The jobs `sql` (a `SELECT * FROM jobs ...`) selects; `None` when the database is busy
    /// and the caller should ask the pool instead.
    fn jobs(&self, sql: &str, args: &[Arg]) -> Option<Result<Vec<Job>, StoreError>>;
}

pub(crate) const GET_JOB: &str = "SELECT * FROM jobs WHERE job_id = ?";

/// The `SELECT` of one page of [`JobStore::list`], with `?` placeholders and their values.
pub(crate) fn list_sql(filter: &JobFilter, position: &str) -> (String, Vec<Arg>) {
    let mut sql = String::from("SELECT * FROM jobs WHERE origin = ?");
    let mut args = vec![Arg::Text(filter.origin.as_str().to_owned())];
    let mut and = |clause: &str, arg: Arg| {
        sql.push_str(clause);
        args.push(arg);
    };
    if let Some(dialect) = filter.dialect {
        and(" AND dialect = ?", Arg::Text(dialect.as_str().to_owned()));
    }
    if let Some(account) = &filter.account_id {
        and(" AND account_id = ?", Arg::Text(account.clone()));
    }
    if let Some(t) = filter.submit_time_after_ms {
        and(" AND submit_time_ms > ?", Arg::Int(t));
    }
    if let Some(t) = filter.submit_time_before_ms {
        and(" AND submit_time_ms < ?", Arg::Int(t));
    }
    if let Some(status) = filter.status {
        and(" AND status = ?", Arg::Text(status.as_str().to_owned()));
    }
    if let Some(name) = &filter.name_contains {
        and(
            &format!(" AND {position}(job_name, ?) > 0"),
            Arg::Text(name.clone()),
        );
    }
    let (cmp, order) = if filter.ascending {
        (">", "ASC")
    } else {
        ("<", "DESC")
    };
    if let Some((time, id)) = &filter.after {
        and(
            &format!(" AND (submit_time_ms, job_id) {cmp} (?, ?)"),
            Arg::Int(*time),
        );
        args.push(Arg::Text(id.clone()));
    }
    sql.push_str(&format!(
        " ORDER BY submit_time_ms {order}, job_id {order} LIMIT ?"
    ));
    args.push(Arg::Int(i64::from(filter.limit)));
    (sql, args)
}

/// A row's columns as the store reads them: every sqlx row whose database decodes these types.
pub trait Columns {
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
}

impl<R: Row> Columns for R
where
    for<'a> &'a str: ColumnIndex<R>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
{
    fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
        self.try_get(column)
    }
    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(column)
    }
    fn text(&self, column: &str) -> Result<String, sqlx::Error> {
        self.try_get(column)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(column)
    }
}

/// A query from SQL written with `?` placeholders.
fn query<'q, DB: Flavor>(sql: &str) -> DbQuery<'q, DB> {
    sqlx::query(sqlx::AssertSqlSafe(DB::placeholders(sql).into_owned()))
}

/// `?` placeholders numbered `$1`, `$2`, … (Postgres). The store's SQL has no `?` elsewhere.
pub(crate) fn numbered(sql: &str) -> Cow<'_, str> {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A migrator for the first `n` of `migrations` (`(version, description, sql)`).
pub(crate) fn migrator(migrations: &[(i64, &str, &'static str)], n: usize) -> Migrator {
    Migrator::with_migrations(
        migrations[..n.min(migrations.len())]
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.to_owned().into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// The statement that adds a job's tags or replaces their values; none for no tags.
fn upsert_tags<DB: Database>(id: &JobId, tags: &[(String, String)]) -> Option<QueryBuilder<DB>>
where
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
{
    if tags.is_empty() {
        return None;
    }
    let mut q = QueryBuilder::new("INSERT INTO job_tags (job_id, tag_key, tag_value) ");
    q.push_values(tags, |mut row, (key, value)| {
        row.push_bind(id.as_str())
            .push_bind(key.as_str())
            .push_bind(value.as_str());
    });
    q.push(" ON CONFLICT (job_id, tag_key) DO UPDATE SET tag_value = excluded.tag_value");
    Some(q)
}

/// The `tags` of a Bedrock create request (`[{"key", "value"}]`, both strings, others
/// skipped); none when the request is not JSON or has none.
fn request_tags(request_json: Option<&str>) -> Vec<(String, String)> {
    let request: Option<serde_json::Value> =
        request_json.and_then(|j| serde_json::from_str(j).ok());
    let Some(tags) = request.as_ref().and_then(|r| r.get("tags")?.as_array()) else {
        return Vec::new();
    };
    tags.iter()
        .filter_map(|t| {
            Some((
                t.get("key")?.as_str()?.to_owned(),
                t.get("value")?.as_str()?.to_owned(),
            ))
        })
        .collect()
}

#[async_trait::async_trait]
impl<DB: Flavor> JobStore for SqlStore<DB>
where
    DB::Arguments: IntoArguments<DB>,
    DB::Row: Columns,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
{
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
        let mut tx = self.pool.begin().await?;
        query::<DB>(
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
        .bind(r.role_arn.as_deref())
        .bind(r.client_request_token.as_deref())
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
        .bind(r.request_json.as_deref())
        .bind(r.dialect.kind().as_str())
        .bind(options.as_deref())
        .bind(&r.account_id)
        .execute(&mut *tx)
        .await?;
        if r.dialect.kind() == DialectKind::Bedrock {
            // A Bedrock job's first tags are its request's (migration 11 reads them alike).
            if let Some(mut q) = upsert_tags(&job.id, &request_tags(r.request_json.as_deref())) {
                q.build().execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        self.get(&job.id).await?.ok_or(StoreError::NotFound(job.id))
    }

    async fn tags(&self, id: &JobId) -> Result<Vec<(String, String)>, StoreError> {
        let rows = query::<DB>(
            "SELECT tag_key, tag_value FROM job_tags WHERE job_id = ? ORDER BY tag_key",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.text("tag_key")?, row.text("tag_value")?)))
            .collect()
    }

    async fn set_tags(&self, id: &JobId, tags: &[(String, String)]) -> Result<(), StoreError> {
        // One statement: all the tags or none.
        if let Some(mut q) = upsert_tags(id, tags) {
            q.build().execute(&self.pool).await?;
        }
        Ok(())
    }

    async fn remove_tags(&self, id: &JobId, keys: &[String]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for key in keys {
            query::<DB>("DELETE FROM job_tags WHERE job_id = ? AND tag_key = ?")
                .bind(id.as_str())
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        let args = vec![Arg::Text(id.as_str().to_owned())];
        let rows = match self.direct.as_ref().and_then(|d| d.jobs(GET_JOB, &args)) {
            Some(jobs) => return jobs.map(|mut jobs| jobs.pop()),
            None => bind_args(query::<DB>(GET_JOB), args).fetch_optional(&self.pool),
        };
        rows.await?.as_ref().map(row_to_job).transpose()
    }

    async fn list_in_status(
        &self,
        origin: JobOrigin,
        statuses: &[JobStatus],
    ) -> Result<Vec<Job>, StoreError> {
        if statuses.is_empty() {
            return Ok(Vec::new());
        }
        let mut q: QueryBuilder<DB> = QueryBuilder::new("SELECT * FROM jobs WHERE origin = ");
        q.push_bind(origin.as_str());
        push_status_in(&mut q, statuses);
        q.push(" ORDER BY submit_time_ms, job_id");
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(row_to_job).collect()
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        let (sql, args) = list_sql(filter, DB::POSITION);
        if let Some(jobs) = self.direct.as_ref().and_then(|d| d.jobs(&sql, &args)) {
            return jobs;
        }
        let rows = bind_args(query::<DB>(&sql), args)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row_to_job).collect()
    }

    async fn find_by_token(&self, account: &str, token: &str) -> Result<Option<Job>, StoreError> {
        let row =
            query::<DB>("SELECT * FROM jobs WHERE account_id = ? AND client_request_token = ?")
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
        let mut q: QueryBuilder<DB> = QueryBuilder::new("SELECT * FROM jobs WHERE job_name = ");
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
        query::<DB>("DELETE FROM job_files WHERE job_id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        for (idx, file) in files.iter().enumerate() {
            query::<DB>(
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
        let rows = query::<DB>(
            "SELECT uri, relative, size, version FROM job_files WHERE job_id = ? ORDER BY idx",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(JobFile {
                    uri: row.text("uri")?,
                    relative: row.text("relative")?,
                    size: to_u64(row.int("size")?),
                    version: row.opt_text("version")?,
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
            let done = query::<DB>(
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
            if DB::rows_affected(&done) == 1 {
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
        let done = query::<DB>(
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
        if DB::rows_affected(&done) != 1 {
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
        let done = bind_counters(query::<DB>(&sql), c)
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        if DB::rows_affected(&done) == 0 {
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
        let done = bind_counters(query::<DB>(&sql), c)
            .bind(to_i64(ckpt.file_index))
            .bind(to_i64(ckpt.records_in_file))
            .bind(to_i64(ckpt.position))
            .bind(to_i64(ckpt.timings_position))
            .bind(id.as_str())
            .bind(to_i64(ckpt.file_index))
            .bind(to_i64(ckpt.records_in_file))
            .execute(&self.pool)
            .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    async fn mark_finalizing(&self, id: &JobId) -> Result<(), StoreError> {
        query::<DB>("UPDATE jobs SET finalizing_ms = COALESCE(finalizing_ms, ?) WHERE job_id = ?")
            .bind(now_ms())
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_message(&self, id: &JobId, message: &str) -> Result<(), StoreError> {
        query::<DB>("UPDATE jobs SET message = ?, last_modified_ms = ? WHERE job_id = ?")
            .bind(message)
            .bind(now_ms())
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_file(&self, file: &FileRecord) -> Result<(), StoreError> {
        query::<DB>(
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
        let row = query::<DB>("SELECT * FROM files WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(row_to_file).transpose()
    }

    async fn list_files(&self, filter: &FileFilter) -> Result<Vec<FileRecord>, StoreError> {
        let mut q: QueryBuilder<DB> = QueryBuilder::new("SELECT * FROM files WHERE 1 = 1");
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
        let done = query::<DB>("DELETE FROM files WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    fn leases(&self) -> &dyn Leases {
        self
    }

    async fn close(&self) {
        // For SQLite, closing the pool also checkpoints the WAL into the database file.
        self.pool.close().await;
    }
}

#[async_trait::async_trait]
impl<DB: Flavor> Leases for SqlStore<DB>
where
    DB::Arguments: IntoArguments<DB>,
    DB::Row: Columns,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
{
    async fn claim_job(
        &self,
        id: &JobId,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let row = query::<DB>(
            "UPDATE jobs SET lease_owner = ?, lease_until_ms = ?, lease_fence = lease_fence + 1
             WHERE job_id = ? AND (lease_owner IS NULL OR lease_owner = ? OR lease_until_ms < ?)
             RETURNING lease_fence",
        )
        .bind(owner)
        .bind(until_ms)
        .bind(id.as_str())
        .bind(owner)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.int("lease_fence")).transpose()?)
    }

    async fn renew_job(
        &self,
        id: &JobId,
        owner: &str,
        fence: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = query::<DB>(
            "UPDATE jobs SET lease_until_ms = ?
             WHERE job_id = ? AND lease_owner = ? AND lease_fence = ?",
        )
        .bind(until_ms)
        .bind(id.as_str())
        .bind(owner)
        .bind(fence)
        .execute(&self.pool)
        .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    async fn release_job(&self, id: &JobId, owner: &str, fence: i64) -> Result<(), StoreError> {
        query::<DB>(
            "UPDATE jobs SET lease_owner = NULL, lease_until_ms = NULL
             WHERE job_id = ? AND lease_owner = ? AND lease_fence = ?",
        )
        .bind(id.as_str())
        .bind(owner)
        .bind(fence)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn plan_chunks(&self, id: &JobId, plans: &[ChunkPlan]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Well under either database's limit on bound values per statement.
        for (batch, rows) in plans.chunks(1000).enumerate() {
            let mut q = QueryBuilder::<DB>::new(
                "INSERT INTO chunks (job_id, idx, file_index, start_offset, first_line, records) ",
            );
            q.push_values(rows.iter().enumerate(), |mut row, (i, p)| {
                row.push_bind(id.as_str())
                    .push_bind(to_i64((batch * 1000 + i) as u64))
                    .push_bind(to_i64(p.file_index))
                    .push_bind(to_i64(p.start_offset))
                    .push_bind(to_i64(p.first_line))
                    .push_bind(to_i64(p.records));
            });
            q.push(" ON CONFLICT (job_id, idx) DO NOTHING");
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn chunks(&self, id: &JobId) -> Result<Vec<Chunk>, StoreError> {
        let rows = query::<DB>(&format!(
            "SELECT {CHUNK_COLUMNS} FROM chunks WHERE job_id = ? ORDER BY idx"
        ))
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_chunk).collect()
    }

    async fn claim_chunk(
        &self,
        id: &JobId,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Option<ChunkLease>, StoreError> {
        let sql = format!(
            "UPDATE chunks SET state = 'leased', owner = ?, lease_until_ms = ?,
                fence = fence + 1, {ZERO_CHUNK_COUNTERS}
             WHERE job_id = ? AND idx = (
                SELECT idx FROM chunks
                WHERE job_id = ? AND (state = 'pending' OR (state = 'leased' AND lease_until_ms < ?))
                ORDER BY idx LIMIT 1{})
             RETURNING {CHUNK_COLUMNS}",
            DB::SKIP_LOCKED
        );
        let mut tx = self.pool.begin().await?;
        let row = query::<DB>(&sql)
            .bind(owner)
            .bind(until_ms)
            .bind(id.as_str())
            .bind(id.as_str())
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let chunk = row_to_chunk(&row)?;
        // A taken-over chunk's counters went back to zero: so does its share of the job's.
        if chunk.fence > 1 {
            sum_chunk_counters::<DB>(&mut tx, id).await?;
        }
        tx.commit().await?;
        Ok(Some(ChunkLease {
            job: id.clone(),
            index: chunk.index,
            fence: chunk.fence,
            plan: chunk.plan,
        }))
    }

    async fn renew_chunk(
        &self,
        lease: &ChunkLease,
        c: &Counters,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE chunks SET lease_until_ms = ?, {SET_CHUNK_COUNTERS}
             WHERE job_id = ? AND idx = ? AND fence = ? AND state = 'leased'"
        );
        let q = bind_chunk_counters(query::<DB>(&sql).bind(until_ms), c);
        update_chunk(&self.pool, lease, q).await
    }

    async fn commit_chunk(&self, lease: &ChunkLease, c: &Counters) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE chunks SET state = 'done', lease_until_ms = NULL, {SET_CHUNK_COUNTERS}
             WHERE job_id = ? AND idx = ? AND fence = ? AND state = 'leased'"
        );
        let q = bind_chunk_counters(query::<DB>(&sql), c);
        update_chunk(&self.pool, lease, q).await
    }

    async fn release_chunk(&self, lease: &ChunkLease) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE chunks SET state = 'pending', owner = NULL, lease_until_ms = NULL,
                {ZERO_CHUNK_COUNTERS}
             WHERE job_id = ? AND idx = ? AND fence = ? AND state = 'leased'"
        );
        update_chunk(&self.pool, lease, query::<DB>(&sql)).await
    }
    async fn heartbeat(
        &self,
        instance: &str,
        scopes: &[String],
        now_ms: i64,
        since_ms: i64,
    ) -> Result<Vec<u64>, StoreError> {
        if scopes.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<DB>::new("INSERT INTO instances (instance_id, scope, seen_ms) ");
        q.push_values(scopes, |mut row, scope| {
            row.push_bind(instance)
                .push_bind(scope.as_str())
                .push_bind(now_ms);
        });
        q.push(" ON CONFLICT (instance_id, scope) DO UPDATE SET seen_ms = excluded.seen_ms");
        q.build().execute(&self.pool).await?;
        let rows = query::<DB>(
            "SELECT scope, COUNT(*) AS live FROM instances WHERE seen_ms >= ? GROUP BY scope",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut live = std::collections::HashMap::new();
        for row in &rows {
            live.insert(row.text("scope")?, to_u64(row.int("live")?));
        }
        Ok(scopes
            .iter()
            .map(|s| live.get(s).copied().unwrap_or(1))
            .collect())
    }

    async fn leave(&self, instance: &str) -> Result<(), StoreError> {
        query::<DB>("DELETE FROM instances WHERE instance_id = ?")
            .bind(instance)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// The counters' columns and the modification time, as `bind_counters` binds them.
const CHUNK_COLUMNS: &str = "idx, file_index, start_offset, first_line, records, state, owner,
    lease_until_ms, fence, processed, success, error, input_tokens, output_tokens";

const SET_CHUNK_COUNTERS: &str =
    "processed = ?, success = ?, error = ?, input_tokens = ?, output_tokens = ?";

const ZERO_CHUNK_COUNTERS: &str =
    "processed = 0, success = 0, error = 0, input_tokens = 0, output_tokens = 0";

fn bind_chunk_counters<'q, DB: Database>(q: DbQuery<'q, DB>, c: &Counters) -> DbQuery<'q, DB>
where
    for<'a> i64: Encode<'a, DB> + Type<DB>,
{
    q.bind(to_i64(c.processed))
        .bind(to_i64(c.success))
        .bind(to_i64(c.error))
        .bind(to_i64(c.input_tokens))
        .bind(to_i64(c.output_tokens))
}

/// Runs `update`, a change to one chunk under `lease`'s token whose last binds are the
/// chunk's key and token, and if it changed the chunk, sets the job's counters to the sum of
/// its chunks', in one transaction. False when the token is no longer the chunk's.
async fn update_chunk<'q, DB: Flavor>(
    pool: &Pool<DB>,
    lease: &'q ChunkLease,
    update: DbQuery<'q, DB>,
) -> Result<bool, StoreError>
where
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> i64: Encode<'a, DB> + Type<DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
{
    let mut tx = pool.begin().await?;
    let done = update
        .bind(lease.job.as_str())
        .bind(to_i64(lease.index))
        .bind(lease.fence)
        .execute(&mut *tx)
        .await?;
    if DB::rows_affected(&done) != 1 {
        return Ok(false);
    }
    sum_chunk_counters::<DB>(&mut tx, &lease.job).await?;
    tx.commit().await?;
    Ok(true)
}

/// Sets a job's counters (all but `total`) to the sum of its chunks'. The job's row is
/// locked first, so that the sum reads every chunk update committed before this one.
async fn sum_chunk_counters<DB: Flavor>(
    tx: &mut sqlx::Transaction<'_, DB>,
    id: &JobId,
) -> Result<(), StoreError>
where
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> i64: Encode<'a, DB> + Type<DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
{
    if !DB::LOCK_ROW.is_empty() {
        query::<DB>(&format!(
            "SELECT job_id FROM jobs WHERE job_id = ?{}",
            DB::LOCK_ROW
        ))
        .bind(id.as_str())
        .execute(&mut **tx)
        .await?;
    }
    let sum =
        |column: &str| format!("(SELECT COALESCE(SUM({column}), 0) FROM chunks WHERE job_id = ?)");
    let sql = format!(
        "UPDATE jobs SET processed_records = {}, success_records = {}, error_records = {},
            input_tokens = {}, output_tokens = {}, last_modified_ms = ?
         WHERE job_id = ?",
        sum("processed"),
        sum("success"),
        sum("error"),
        sum("input_tokens"),
        sum("output_tokens"),
    );
    query::<DB>(&sql)
        .bind(id.as_str())
        .bind(id.as_str())
        .bind(id.as_str())
        .bind(id.as_str())
        .bind(id.as_str())
        .bind(now_ms())
        .bind(id.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn row_to_chunk(row: &impl Columns) -> Result<Chunk, StoreError> {
    let state = row.text("state")?;
    Ok(Chunk {
        index: to_u64(row.int("idx")?),
        plan: ChunkPlan {
            file_index: to_u64(row.int("file_index")?),
            start_offset: to_u64(row.int("start_offset")?),
            first_line: to_u64(row.int("first_line")?),
            records: to_u64(row.int("records")?),
        },
        state: ChunkState::parse(&state).ok_or(StoreError::Corrupt {
            column: "state",
            value: state,
        })?,
        owner: row.opt_text("owner")?,
        lease_until_ms: row.opt_int("lease_until_ms")?,
        fence: row.int("fence")?,
        counters: Counters {
            total: 0,
            processed: to_u64(row.int("processed")?),
            success: to_u64(row.int("success")?),
            error: to_u64(row.int("error")?),
            input_tokens: to_u64(row.int("input_tokens")?),
            output_tokens: to_u64(row.int("output_tokens")?),
        },
    })
}

const SET_COUNTERS: &str = "total_records = ?, processed_records = ?, success_records = ?,
    error_records = ?, input_tokens = ?, output_tokens = ?, last_modified_ms = ?";

type DbQuery<'q, DB> = Query<'q, DB, <DB as Database>::Arguments>;

fn bind_counters<'q, DB: Database>(q: DbQuery<'q, DB>, c: &Counters) -> DbQuery<'q, DB>
where
    for<'a> i64: Encode<'a, DB> + Type<DB>,
{
    q.bind(to_i64(c.total))
        .bind(to_i64(c.processed))
        .bind(to_i64(c.success))
        .bind(to_i64(c.error))
        .bind(to_i64(c.input_tokens))
        .bind(to_i64(c.output_tokens))
        .bind(now_ms())
}

fn bind_args<'q, DB: Database>(mut q: DbQuery<'q, DB>, args: Vec<Arg>) -> DbQuery<'q, DB>
where
    for<'a> i64: Encode<'a, DB> + Type<DB>,
    for<'a> String: Encode<'a, DB> + Type<DB>,
{
    for arg in args {
        q = match arg {
            Arg::Int(n) => q.bind(n),
            Arg::Text(t) => q.bind(t),
        };
    }
    q
}

/// ` AND status IN (?, ...)` for `statuses` (non-empty).
fn push_status_in<DB: Database>(q: &mut QueryBuilder<DB>, statuses: &[JobStatus])
where
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
{
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

pub(crate) fn row_to_job(row: &impl Columns) -> Result<Job, StoreError> {
    let id: String = row.text("job_id")?;
    let status: String = row.text("status")?;
    let origin: String = row.text("origin")?;
    let invocation_type: String = row.text("invocation_type")?;
    let inputs: String = row.text("inputs")?;
    let timeout_hours: Option<i64> = row.opt_int("timeout_hours")?;
    let dialect: String = row.text("dialect")?;
    let options: Option<String> = row.opt_text("dialect_options")?;
    let corrupt = |column: &'static str, value: &str| StoreError::Corrupt {
        column,
        value: value.to_owned(),
    };
    let counters = Counters {
        total: to_u64(row.int("total_records")?),
        processed: to_u64(row.int("processed_records")?),
        success: to_u64(row.int("success_records")?),
        error: to_u64(row.int("error_records")?),
        input_tokens: to_u64(row.int("input_tokens")?),
        output_tokens: to_u64(row.int("output_tokens")?),
    };
    Ok(Job {
        id: JobId::parse(&id).map_err(|_| corrupt("job_id", &id))?,
        arn: row.text("job_arn")?,
        request: JobRequest {
            name: row.text("job_name")?,
            account_id: row.text("account_id")?,
            model_id: row.text("model_id")?,
            origin: origin.parse().map_err(|_| corrupt("origin", &origin))?,
            role_arn: row.opt_text("role_arn")?,
            client_request_token: row.opt_text("client_request_token")?,
            invocation_type: invocation_type
                .parse()
                .map_err(|_| corrupt("invocation_type", &invocation_type))?,
            inputs: serde_json::from_str(&inputs).map_err(|_| corrupt("inputs", &inputs))?,
            output: row.text("output_uri")?,
            timeout_hours: timeout_hours.and_then(|h| u32::try_from(h).ok()),
            request_json: row.opt_text("request_json")?,
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
        message: row.opt_text("message")?,
        submit_time_ms: row.int("submit_time_ms")?,
        last_modified_ms: row.int("last_modified_ms")?,
        end_time_ms: row.opt_int("end_time_ms")?,
        job_expiration_ms: row.opt_int("job_expiration_ms")?,
        phases: PhaseTimes {
            in_progress_ms: row.opt_int("in_progress_ms")?,
            finalizing_ms: row.opt_int("finalizing_ms")?,
            stopping_ms: row.opt_int("stopping_ms")?,
        },
        counters,
        checkpoint: Checkpoint {
            file_index: to_u64(row.int("ckpt_file")?),
            records_in_file: to_u64(row.int("ckpt_records")?),
            position: to_u64(row.int("ckpt_position")?),
            timings_position: to_u64(row.int("ckpt_timings_position")?),
            counters,
        },
    })
}

fn row_to_file(row: &impl Columns) -> Result<FileRecord, StoreError> {
    Ok(FileRecord {
        id: row.text("id")?,
        account_id: row.text("account_id")?,
        bytes: to_u64(row.int("bytes")?),
        created_at: row.int("created_at")?,
        expires_at: row.opt_int("expires_at")?,
        filename: row.text("filename")?,
        purpose: row.text("purpose")?,
        uri: row.text("uri")?,
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
