//! Throwaway PostgreSQL databases for tests: each test creates its own on the server named by
//! `VAULT_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432`) and drops it when
//! done. Not used by the vault itself.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// The environment variable naming the test server (a URL without a database name).
pub const TEST_POSTGRES_ENV: &str = "VAULT_TEST_POSTGRES_URL";
/// The server tests use when the variable is unset: this machine's own.
pub const DEFAULT_TEST_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

/// A database created for one test, dropped (forcibly) when this value is dropped.
pub struct TestDatabase {
    server: String,
    name: String,
    /// The database's URL.
    pub url: String,
}

impl TestDatabase {
    /// Creates a fresh, empty database.
    ///
    /// # Errors
    /// A message that says which server was tried and how to point the tests at another.
    pub async fn create() -> Result<Self, String> {
        let server =
            std::env::var(TEST_POSTGRES_ENV).unwrap_or_else(|_| DEFAULT_TEST_POSTGRES.to_owned());
        let name = format!("vault_test_{}", uuid_like());
        let mut admin = connect(&server, "postgres").await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .map_err(|e| format!("creating test database on {server}: {e}"))?;
        let _ = admin.close().await;
        let url = database_url(&server, &name);
        Ok(Self { server, name, url })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        // Drop runs outside any async context we can rely on: use a short-lived runtime on
        // its own thread.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut admin) = connect(&server, "postgres").await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

async fn connect(server: &str, database: &str) -> Result<sqlx::PgConnection, String> {
    PgConnectOptions::from_str(server)
        .map_err(|e| format!("{TEST_POSTGRES_ENV}={server}: {e}"))?
        .database(database)
        .connect()
        .await
        .map_err(|e| {
            format!(
                "no PostgreSQL server reachable at {server} ({e}). The tests need one: start \
                 this machine's (`pg_ctlcluster 15 main start`) or set {TEST_POSTGRES_ENV} to \
                 a server URL without a database name, e.g. postgres://user:pw@host:5432"
            )
        })
}

/// `server` with `database` as its path, keeping any query string.
#[must_use]
pub fn database_url(server: &str, database: &str) -> String {
    let (base, query) = server.split_once('?').unwrap_or((server, ""));
    let base = base.trim_end_matches('/');
    if query.is_empty() {
        format!("{base}/{database}")
    } else {
        format!("{base}/{database}?{query}")
    }
}

fn uuid_like() -> String {
    let bytes: [u8; 8] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
