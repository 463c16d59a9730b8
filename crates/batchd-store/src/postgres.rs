//! [`PgStore`]: the job store in PostgreSQL, for `batchd serve` instances that share one
//! database (or one machine that wants a database server's durability). The schema comes from
//! the embedded migrations in `migrations-postgres/`; sqlx takes an advisory lock around them,
//! so instances that start at once migrate one after the other.

use std::borrow::Cow;
use std::time::Duration;

use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgQueryResult};

use crate::StoreError;
use crate::sql::{Flavor, SqlStore, migrator, numbered};

/// Jobs in Postgres.
pub type PgStore = SqlStore<Postgres>;

impl Flavor for Postgres {
    const POSITION: &'static str = "strpos";
    const LOCK_ROW: &'static str = " FOR UPDATE";
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    fn placeholders(sql: &str) -> Cow<'_, str> {
        numbered(sql)
    }
}

pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "schema",
        include_str!("../migrations-postgres/0001_schema.sql"),
    ),
    (
        2,
        "leases",
        include_str!("../migrations-postgres/0002_leases.sql"),
    ),
];

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`, libpq's options such
    /// as `sslmode` included) and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        migrator(MIGRATIONS, MIGRATIONS.len()).run(&pool).await?;
        Ok(Self { pool, direct: None })
    }
}
