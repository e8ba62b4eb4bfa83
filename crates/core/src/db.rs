//! Relational storage: one database per service, SQLite by default, PostgreSQL when scaled out.
//!
//! Services write their SQL once against sqlx's `Any` driver, which runs it on either engine:
//! columns are `TEXT` (ids, RFC 3339 times, JSON) and `BIGINT` (counters, money, versions), and
//! placeholders are `$1, $2, …` numbered in order of first use (SQLite reads them as named
//! parameters and binds them in that order). DDL differs between the engines, so each service
//! keeps two migration folders, `migrations/sqlite` and `migrations/postgres`, applied at
//! start-up together with core's own tables (outbox, processed events, idempotency keys).
//!
//! On PostgreSQL each service lives in its own schema, set as the `search_path` of every pooled
//! connection, so no service can read another's tables by accident.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Connection, Executor, Transaction};

use crate::config::DatabaseConfig;

/// Which engine a [`Db`] runs on, for the few statements that must differ (locking hints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database for {service}: {source}")]
    Connect {
        service: String,
        source: sqlx::Error,
    },
    #[error("migrations for {service}: {source}")]
    Migrate {
        service: String,
        source: sqlx::migrate::MigrateError,
    },
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// Where a service's database is.
#[derive(Debug, Clone)]
pub enum DbTarget {
    /// A SQLite file, created if missing.
    SqliteFile(PathBuf),
    /// A PostgreSQL server and the schema the service owns there (created if missing).
    Postgres { url: SecretString, schema: String },
}

impl DbTarget {
    /// The target for `service` under the given configuration.
    pub fn for_service(config: &DatabaseConfig, data_dir: &Path, service: &str) -> Self {
        match &config.url {
            Some(url) => DbTarget::Postgres {
                url: url.clone(),
                schema: format!("{}{service}", config.schema_prefix),
            },
            None => DbTarget::SqliteFile(data_dir.join(format!("{service}.sqlite"))),
        }
    }
}

/// The migrations of one service, one set per engine (`sqlx::migrate!("./migrations/sqlite")`).
#[derive(Debug)]
pub struct Migrations {
    pub sqlite: Migrator,
    pub postgres: Migrator,
}

impl Migrations {
    /// No tables of the service's own (core's are still made).
    pub fn none() -> Self {
        Self {
            sqlite: Migrator::DEFAULT,
            postgres: Migrator::DEFAULT,
        }
    }
}

/// Core's own tables, present in every service database. Versions 1–999 are reserved for them;
/// services number their migrations from a timestamp (e.g. `20261121000001_vehicles.sql`).
static CORE_SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static CORE_POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// A service's connection pool.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    engine: Engine,
}

impl Db {
    /// Connects (creating the SQLite file or PostgreSQL schema), then applies core's and the
    /// service's migrations.
    pub async fn open(
        service: &str,
        target: &DbTarget,
        config: &DatabaseConfig,
        migrations: &Migrations,
    ) -> Result<Db, DbError> {
        let db = Self::connect(target, config)
            .await
            .map_err(|source| DbError::Connect {
                service: service.into(),
                source,
            })?;
        db.migrate(migrations)
            .await
            .map_err(|source| DbError::Migrate {
                service: service.into(),
                source,
            })?;
        Ok(db)
    }

    async fn connect(target: &DbTarget, config: &DatabaseConfig) -> Result<Db, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(config.connect_timeout_secs))
            .test_before_acquire(false);
        match target {
            DbTarget::SqliteFile(path) => {
                crate::files::private_sqlite(path)?;
                let url = format!("sqlite://{}?mode=rwc", path.display());
                let options: AnyConnectOptions = url.parse()?;
                let pool = pool
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // WAL lets readers run beside the writer; NORMAL sync is durable in
                            // WAL mode across process crashes; busy_timeout queues writers.
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                 PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?;
                Ok(Db {
                    pool,
                    engine: Engine::Sqlite,
                })
            }
            DbTarget::Postgres { url, schema } => {
                let options: AnyConnectOptions = url.expose_secret().parse()?;
                // Schema names come from config (validated) and service names (constants).
                let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
                let set_path = format!("SET search_path TO \"{schema}\"");
                let mut conn = sqlx::AnyConnection::connect_with(&options).await?;
                conn.execute(create.as_str()).await?;
                let pool = pool
                    .after_connect(move |conn, _| {
                        let set_path = set_path.clone();
                        Box::pin(async move {
                            conn.execute(set_path.as_str()).await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?;
                Ok(Db {
                    pool,
                    engine: Engine::Postgres,
                })
            }
        }
    }

    async fn migrate(&self, migrations: &Migrations) -> Result<(), sqlx::migrate::MigrateError> {
        let (core, service) = match self.engine {
            Engine::Sqlite => (&CORE_SQLITE, &migrations.sqlite),
            Engine::Postgres => (&CORE_POSTGRES, &migrations.postgres),
        };
        let mut all: Vec<_> = core.iter().chain(service.iter()).cloned().collect();
        all.sort_by_key(|m| m.version);
        let migrator = Migrator {
            migrations: Cow::Owned(all),
            ..Migrator::DEFAULT
        };
        migrator.run(&self.pool).await
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub async fn begin(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        self.pool.begin().await
    }

    /// A round trip to the database, for readiness checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Waits for in-flight queries and closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// True when `err` is a unique-constraint violation, on either engine.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Whether `err` names the given constraint (PostgreSQL) or index columns (SQLite reports
/// `UNIQUE constraint failed: table.column`), for mapping constraint errors to 4xx in one place.
pub fn violates(err: &sqlx::Error, constraint: &str) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.constraint() == Some(constraint) || db.message().contains(constraint)
        }
        _ => false,
    }
}
