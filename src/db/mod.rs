//! Postgres: the pool, database creation, migrations, and the queries of each
//! resource (one module per table).

pub mod metadata_batch;
pub mod outbox;
pub mod rooms;
pub mod sessions;

use std::str::FromStr;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use crate::config::Settings;

/// The embedded migrations of `migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Creates the database if missing, connects and applies migrations.
pub async fn connect_and_migrate(settings: &Settings) -> anyhow::Result<PgPool> {
    let url = settings.database_url.expose_secret();
    create_database_if_missing(url).await?;
    let pool = pool_options(settings)
        .connect_with(connect_options(settings)?)
        .await
        .context("DATABASE_URL: cannot connect to Postgres")?;
    MIGRATOR
        .run(&pool)
        .await
        .context("applying database migrations")?;
    Ok(pool)
}

/// Pool settings shared by the server and tests.
pub fn pool_options(settings: &Settings) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(settings.db_max_connections)
        // Explicit and short: with Postgres down a request answers 503 quickly
        // instead of waiting sqlx's default 30 s.
        .acquire_timeout(settings.db_acquire_timeout)
        // sqlx would ping every connection before handing it out: one more
        // round trip per request. It pings again on release anyway, so a
        // connection broken by a Postgres restart fails at most one request
        // (503) before the pool drops it.
        .test_before_acquire(false)
}

/// Begins a transaction that is rolled back even when the caller is
/// cancelled (a client hanging up) while `BEGIN` awaits its answer: sqlx
/// queues its rollback only once `BEGIN` has answered, so a cancelled
/// `begin()` hands the connection back to the pool inside a transaction
/// (the test `a_request_cancelled_during_begin_leaves_no_transaction_open`
/// shows it), where the next request's statements would run and be
/// committed or rolled back with someone else's. Here `BEGIN` runs to the
/// end in its own task; a transaction nobody waits for any more is dropped
/// there, which rolls it back.
pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin().await })
        .await
        .map_err(|err| sqlx::Error::Io(std::io::Error::other(err)))?
}

fn connect_options(settings: &Settings) -> anyhow::Result<PgConnectOptions> {
    PgConnectOptions::from_str(settings.database_url.expose_secret())
        .context("DATABASE_URL is not a valid postgres:// URL")
}

async fn create_database_if_missing(url: &str) -> anyhow::Result<()> {
    let exists = Postgres::database_exists(url)
        .await
        .context("DATABASE_URL: cannot connect to Postgres")?;
    if exists {
        return Ok(());
    }
    tracing::info!("creating the database named in DATABASE_URL");
    if let Err(err) = Postgres::create_database(url).await {
        // Another instance may have created it in the meantime.
        if !Postgres::database_exists(url).await.unwrap_or(false) {
            return Err(err).context("DATABASE_URL: cannot create the database");
        }
    }
    Ok(())
}
