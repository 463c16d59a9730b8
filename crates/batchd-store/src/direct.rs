//! [`DirectReader`]: a SQLite file's job rows read on the calling thread through `rusqlite`,
//! for the API's Get and List. sqlx runs each SQLite connection on a thread of its own and
//! sends every command and row across a channel to it: two thread switches per read, which
//! under a thousand concurrent calls made most of their latency (docs/benchmarks.md). A read
//! here is a few microseconds of SQLite work; in WAL mode it never waits for a writer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use batchd_core::Job;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, ToSql, params_from_iter, types::ToSqlOutput};

use crate::StoreError;
use crate::sql::{Arg, Columns, DirectReads, row_to_job};

/// How long a read waits for a lock before the pool (whose threads may wait) takes over.
const BUSY_WAIT: Duration = Duration::from_millis(20);
/// Idle connections kept; more are opened while more threads read at once.
const KEEP: usize = 8;

/// Read-only connections to one SQLite file, each used by one thread at a time.
#[derive(Debug)]
pub(crate) struct DirectReader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Each column of `SELECT * FROM jobs` by name: a row's columns are then found without
    /// comparing names (which rusqlite does column by column, for each column read).
    columns: HashMap<String, usize>,
}

impl DirectReader {
    /// Opens one connection now, so a file it cannot read fails at start, not at a call.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let mut reader = Self {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
            columns: HashMap::new(),
        };
        let first = reader.connect()?;
        reader.columns = first
            .prepare("SELECT * FROM jobs LIMIT 0")?
            .column_names()
            .into_iter()
            .enumerate()
            .map(|(i, name)| (name.to_owned(), i))
            .collect();
        reader.put(first);
        Ok(reader)
    }

    fn connect(&self) -> Result<Connection, rusqlite::Error> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Read-write only because a WAL reader may need to set up the shared-memory index;
        // this connection never writes.
        conn.pragma_update(None, "query_only", true)?;
        // Without it the planner reads the value bound to `LIMIT ?`, and every List with
        // another value would parse its statement again (`sqlite3Reprepare` was 6% of the
        // server's time under a thousand Lists).
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        conn.busy_timeout(BUSY_WAIT)?;
        Ok(conn)
    }

    fn take(&self) -> Result<Connection, rusqlite::Error> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match idle {
            Some(conn) => Ok(conn),
            None => self.connect(),
        }
    }

    fn put(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < KEEP
        {
            idle.push(conn);
        }
    }
}

impl DirectReads for DirectReader {
    fn jobs(&self, sql: &str, args: &[Arg]) -> Option<Result<Vec<Job>, StoreError>> {
        let read = self.take().and_then(|conn| {
            let jobs = read_jobs(&conn, sql, args, &self.columns);
            // A connection that failed is dropped rather than reused.
            if jobs.is_ok() {
                self.put(conn);
            }
            jobs
        });
        match read {
            Ok(Some(jobs)) => Some(jobs),
            // Another batchd migrated the file since this one opened it: its pool knows.
            Ok(None) => None,
            Err(e) if busy(&e) => None,
            Err(e) => Some(Err(e.into())),
        }
    }
}

/// Runs `sql`; a row that does not decode is the inner error (the read itself worked), and
/// `None` says the table no longer has the `columns` this reader knows.
fn read_jobs(
    conn: &Connection,
    sql: &str,
    args: &[Arg],
    columns: &HashMap<String, usize>,
) -> Result<Option<Result<Vec<Job>, StoreError>>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut jobs = Vec::new();
    while let Some(row) = rows.next()? {
        // Counted on a row: a cached statement is prepared again, with the table as it is
        // now, only when it runs.
        if row.as_ref().column_count() != columns.len() {
            return Ok(None);
        }
        match row_to_job(&SqliteRow { row, columns }) {
            Ok(job) => jobs.push(job),
            Err(e) => return Ok(Some(Err(e))),
        }
    }
    Ok(Some(Ok(jobs)))
}

fn busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

impl ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Arg::Int(n) => n.to_sql(),
            Arg::Text(t) => t.to_sql(),
        }
    }
}

/// A rusqlite row as the store's row decoder reads it.
struct SqliteRow<'a> {
    row: &'a rusqlite::Row<'a>,
    columns: &'a HashMap<String, usize>,
}

impl SqliteRow<'_> {
    fn get<T: rusqlite::types::FromSql>(&self, column: &str) -> Result<T, sqlx::Error> {
        let index = self
            .columns
            .get(column)
            .ok_or_else(|| sqlx::Error::ColumnNotFound(column.to_owned()))?;
        self.row
            .get(*index)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))
    }
}

impl Columns for SqliteRow<'_> {
    fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
        self.get(column)
    }
    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
        self.get(column)
    }
    fn text(&self, column: &str) -> Result<String, sqlx::Error> {
        self.get(column)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        self.get(column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobStore, SqliteStore};
    use batchd_core::{JobId, JobOrigin};

    /// A store file in `dir` holding one job, closed; its path and the job's id.
    async fn file_with_a_job(dir: &Path) -> (PathBuf, JobId) {
        let path = dir.join("batchd.sqlite");
        let id = JobId::parse("ffffffffffff").unwrap();
        let store = SqliteStore::open(&path).await.unwrap();
        store
            .create(crate::sqlite::tests::new_job(id.as_str()))
            .await
            .unwrap();
        store.close().await;
        (path, id)
    }

    /// While another connection holds the whole file, a read gives up after [`BUSY_WAIT`]
    /// with `None` (the store then asks its pool, whose threads may wait), not an error.
    #[tokio::test]
    async fn a_locked_file_is_left_to_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let (path, id) = file_with_a_job(dir.path()).await;
        // A rollback journal, where a writer's EXCLUSIVE lock keeps readers out (WAL never).
        let locker = Connection::open(&path).unwrap();
        let mode: String = locker
            .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
        let reader = DirectReader::open(&path).unwrap();
        let args = [Arg::Text(id.as_str().to_owned())];
        locker
            .execute_batch("BEGIN EXCLUSIVE; UPDATE jobs SET job_name = 'renamed';")
            .unwrap();
        assert!(reader.jobs(crate::sql::GET_JOB, &args).is_none());
        locker.execute_batch("COMMIT").unwrap();
        let jobs = reader.jobs(crate::sql::GET_JOB, &args).unwrap().unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].request.name, "renamed");
    }

    /// A List's statement is prepared once, whatever page size is bound to it.
    #[tokio::test]
    async fn a_list_statement_is_not_prepared_again_for_another_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batchd.sqlite");
        SqliteStore::open(&path).await.unwrap().close().await;
        let reader = DirectReader::open(&path).unwrap();
        let mut filter = batchd_core::JobFilter::new(JobOrigin::Api, 10);
        let (sql, _) = crate::sql::list_sql(&filter, "instr");
        for limit in [10, 11, 12] {
            filter.limit = limit;
            let (same, args) = crate::sql::list_sql(&filter, "instr");
            assert_eq!(same, sql);
            assert!(reader.jobs(&sql, &args).unwrap().unwrap().is_empty());
        }
        let conn = reader.take().unwrap();
        let stmt = conn.prepare_cached(&sql).unwrap();
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::Run), 3);
    }

    /// A table with columns the reader did not see at open (a newer batchd migrated the file
    /// since) is left to the pool, which reads rows by column name, rather than misread.
    #[tokio::test]
    async fn a_table_it_does_not_know_is_left_to_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let (path, id) = file_with_a_job(dir.path()).await;
        let reader = DirectReader::open(&path).unwrap();
        let args = [Arg::Text(id.as_str().to_owned())];
        assert_eq!(
            reader
                .jobs(crate::sql::GET_JOB, &args)
                .unwrap()
                .unwrap()
                .len(),
            1
        );
        Connection::open(&path)
            .unwrap()
            .execute_batch("ALTER TABLE jobs ADD COLUMN from_the_future TEXT")
            .unwrap();
        assert!(reader.jobs(crate::sql::GET_JOB, &args).is_none());
    }
}
