//! [`SqliteStore`]: the job store in one SQLite file (or in memory), with the schema made by
//! the embedded migrations in `migrations/`.

use std::path::Path;
use std::str::FromStr;

use std::borrow::Cow;
use std::sync::Arc;

use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};

use crate::StoreError;
use crate::direct::DirectReader;
use crate::sql::{Flavor, SqlStore, migrator};

/// Jobs in SQLite: one machine's store.
pub type SqliteStore = SqlStore<Sqlite>;

impl Flavor for Sqlite {
    const POSITION: &'static str = "instr";
    // One writer at a time: a write transaction already excludes every other.
    const LOCK_ROW: &'static str = "";
    const SKIP_LOCKED: &'static str = "";

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    fn placeholders(sql: &str) -> Cow<'_, str> {
        Cow::Borrowed(sql)
    }
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
    (12, "leases", include_str!("../migrations/0012_leases.sql")),
];

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
        migrator(MIGRATIONS, MIGRATIONS.len()).run(&pool).await?;
        // After the migrations: the reader's statements are prepared against the final schema.
        let direct = DirectReader::open(path)?;
        Ok(Self {
            pool,
            direct: Some(Arc::new(direct)),
        })
    }

    /// An in-memory store (tests, and `batchd run` with no data dir to keep).
    pub async fn in_memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?;
        // One connection: each in-memory connection would otherwise be its own database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        migrator(MIGRATIONS, MIGRATIONS.len()).run(&pool).await?;
        // No direct reads: another connection would be another, empty, database.
        Ok(Self { pool, direct: None })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! What only SQLite does: files, reopening, migrating older files. The behaviour every
    //! store shares is in `tests/conformance.rs`.
    use super::*;
    use crate::JobStore;
    use batchd_core::InvocationType;
    use batchd_core::{Counters, Dialect, JobId, JobOrigin, JobRequest, JobStatus, NewJob};
    use sqlx::SqlitePool;
    use std::path::Path;

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

    /// A Bedrock API job with every optional member set (also the direct reader's tests').
    pub(crate) fn new_job(id: &str) -> NewJob {
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
        migrator(MIGRATIONS, n).run(&pool).await.unwrap();
        pool
    }

    /// The store over a file that a batchd of migration `n` wrote: `insert` ran once a row,
    /// binding the row's values in order; then the store opens it (and migrates it).
    async fn migrated_from(
        n: usize,
        insert: &'static str,
        rows: &[&[Option<&'static str>]],
    ) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batchd.sqlite");
        let pool = pool_upto(&path, n).await;
        for row in rows {
            let mut q = sqlx::query(insert);
            for value in *row {
                q = q.bind(*value);
            }
            q.execute(&pool).await.unwrap();
        }
        pool.close().await;
        let store = SqliteStore::open(&path).await.unwrap();
        (dir, store)
    }

    /// A file written by a batchd from before migration 4 (inputs "\n"-joined, origin
    /// implied by the role ARN) reads back with the inputs as a list and the origin explicit.
    #[tokio::test]
    async fn a_file_from_before_origin_and_inputs_is_migrated() {
        let (_dir, store) = migrated_from(
            3,
            "INSERT INTO jobs (job_id, job_arn, job_name, model_id, role_arn, invocation_type,
                input_uri, output_uri, status, submit_time_ms, last_modified_ms)
             VALUES (?, '', 'n', 'm', ?, 'Converse', ?, 'out', 'Completed', 1, 1)",
            &[
                &[
                    Some("aaaaaaaaaaa1"),
                    Some("arn:aws:iam::1:role/r"),
                    Some("s3://b/in/"),
                ],
                &[
                    Some("aaaaaaaaaaa2"),
                    None,
                    Some("/x/a.jsonl\n/x/b dir/\n/x/\"q\".jsonl"),
                ],
            ],
        )
        .await;
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
        let (_dir, store) = migrated_from(
            7,
            "INSERT INTO jobs (job_id, job_arn, job_name, model_id, invocation_type, inputs,
                input_uri, output_uri, status, submit_time_ms, last_modified_ms, origin)
             VALUES (?, ?, 'n', 'm', 'Converse', '[]', '', 'out', 'Completed', 1, 1, 'api')",
            &[
                &[
                    Some("aaaaaaaaaaa1"),
                    Some(
                        "arn:aws:bedrock:eu-west-1:123456789012:model-invocation-job/aaaaaaaaaaa1",
                    ),
                ],
                &[Some("aaaaaaaaaaa2"), Some("")],
            ],
        )
        .await;
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
        let (_dir, store) = migrated_from(
            10,
            "INSERT INTO jobs (job_id, job_arn, job_name, model_id, invocation_type, inputs,
                input_uri, output_uri, status, submit_time_ms, last_modified_ms, origin,
                request_json)
             VALUES (?, '', 'n', 'm', 'Converse', '[]', '', 'out', 'Completed', 1, 1, 'api', ?)",
            &[
                &[
                    Some("aaaaaaaaaaa1"),
                    Some(r#"{"tags":[{"key":"team","value":"a"}]}"#),
                ],
                &[Some("aaaaaaaaaaa2"), Some("not json")],
                &[Some("aaaaaaaaaaa3"), None],
            ],
        )
        .await;
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

    /// Get and List of a file store read the file themselves: they answer with the pool
    /// closed, and see every write the pool made.
    #[tokio::test]
    async fn get_and_list_read_the_file_without_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("batchd.sqlite"))
            .await
            .unwrap();
        let id = JobId::parse("cccccccccccc").unwrap();
        store.create(new_job(id.as_str())).await.unwrap();
        let c = Counters {
            total: 7,
            processed: 3,
            ..Counters::default()
        };
        store.update_counters(&id, &c).await.unwrap();
        store.close().await;
        let job = store.get(&id).await.unwrap().unwrap();
        assert_eq!(job.counters.processed, 3);
        assert_eq!(job.request, new_job(id.as_str()).request);
        let listed = store
            .list(&batchd_core::JobFilter::new(JobOrigin::Api, 10))
            .await
            .unwrap();
        assert_eq!(listed, vec![job]);
        assert!(
            store
                .get(&JobId::parse("dddddddddddd").unwrap())
                .await
                .unwrap()
                .is_none()
        );
        // The pool's own reads are closed: a `find_by_token` has nothing to run on.
        assert!(store.find_by_token("000000000000", "tok-x").await.is_err());
    }
}
