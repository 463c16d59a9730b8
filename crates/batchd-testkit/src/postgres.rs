//! A new empty database per test on the throwaway PostgreSQL server `scripts/pg.sh` starts
//! (its admin URL in `BATCHD_TEST_PG_URL`), so Postgres tests never see each other's jobs.

use sqlx::Connection;

/// The variable that names the test server's admin URL.
pub const URL_VAR: &str = "BATCHD_TEST_PG_URL";

/// The URL of a new, empty database on the test server; `None` when no server is named (the
/// test then returns; under CI it fails instead, see [`crate::skip_unless_ci`]).
pub async fn fresh_database() -> Option<String> {
    let Some(admin) = std::env::var_os(URL_VAR).and_then(|v| v.into_string().ok()) else {
        crate::skip_unless_ci(
            &format!("no PostgreSQL server: {URL_VAR} is not set"),
            "scripts/test.sh starts one with scripts/pg.sh",
        );
        return None;
    };
    let name = format!("batchd_test_{:016x}", fastrand::u64(..));
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {admin}: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let _ = conn.close().await;
    let mut url = reqwest::Url::parse(&admin).unwrap_or_else(|e| panic!("{URL_VAR}={admin}: {e}"));
    url.set_path(&name);
    Some(url.to_string())
}
