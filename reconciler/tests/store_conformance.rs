//! One behaviour suite for every store backend.
//!
//! Each case in `cases` takes a [`Harness`] (a store factory that can also make a
//! second replica and reopen the store) and is instantiated once per backend by
//! `suite!`. PostgreSQL cases read `FABRIC_PG_URL`: unset, they fail under
//! `CI=true` and skip loudly elsewhere (see `.ci/postgres.sh`).

use std::path::PathBuf;
use std::sync::Arc;

use fabric_reconciler::store::{EmbeddedStore, PostgresConfig, PostgresStore, Store, PG_URL_ENV};

/// Which backend a harness runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The redb-file store.
    Embedded,
    /// PostgreSQL, from `FABRIC_PG_URL`.
    Postgres,
}

/// A store factory for one test.
pub struct Harness {
    backend: Backend,
    /// Embedded: the file, inside a temp dir kept alive by the harness.
    path: PathBuf,
    _dir: Option<tempfile::TempDir>,
    /// Postgres: this test's own schema.
    pg: Option<PostgresConfig>,
    /// The open embedded store; replicas are clones of it (one file, one opener).
    embedded: Option<EmbeddedStore>,
}

impl Harness {
    /// `None` when the backend is unavailable and the test may skip.
    pub async fn new(backend: Backend, test: &str) -> Option<Harness> {
        match backend {
            Backend::Embedded => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("store.redb");
                let store = EmbeddedStore::open(&path)
                    .await
                    .expect("open embedded store");
                Some(Harness {
                    backend,
                    path,
                    _dir: Some(dir),
                    pg: None,
                    embedded: Some(store),
                })
            }
            Backend::Postgres => {
                let config = pg_config(test)?;
                PostgresStore::drop_schema(&config)
                    .await
                    .expect("drop the test schema");
                Some(Harness {
                    backend,
                    path: PathBuf::new(),
                    _dir: None,
                    pg: Some(config),
                    embedded: None,
                })
            }
        }
    }

    /// The backend this harness runs.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Embedded: the store file (empty for PostgreSQL).
    pub fn path(&self) -> &PathBuf {
        &self.path
    }

    /// PostgreSQL: this test's config (`None` for the embedded store).
    pub fn pg_config(&self) -> Option<&PostgresConfig> {
        self.pg.as_ref()
    }

    /// A handle on the store. Each call on PostgreSQL is an independent
    /// connection pool: a separate replica.
    pub async fn store(&self) -> Arc<dyn Store> {
        match self.backend {
            Backend::Embedded => Arc::new(self.embedded.clone().expect("store is open")),
            Backend::Postgres => Arc::new(
                PostgresStore::connect(self.pg.clone().expect("pg config"))
                    .await
                    .expect("connect to postgres"),
            ),
        }
    }

    /// Closes and reopens the store. Every handle from `store()` must have been
    /// dropped (the embedded file is single-opener).
    pub async fn reopen(&mut self) {
        if self.backend == Backend::Embedded {
            self.embedded = None;
            self.embedded = Some(
                EmbeddedStore::open(&self.path)
                    .await
                    .expect("reopen embedded store"),
            );
        }
    }

    /// Drops the embedded handle (for a child process to open the file).
    pub fn close(&mut self) {
        self.embedded = None;
    }
}

/// The PostgreSQL config for a test, or `None` to skip (never in CI).
fn pg_config(test: &str) -> Option<PostgresConfig> {
    match std::env::var(PG_URL_ENV) {
        Ok(url) if !url.is_empty() => {
            Some(PostgresConfig::new(url).with_schema(format!("fabric_t_{test}")))
        }
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "{PG_URL_ENV} is not set but CI=true: PostgreSQL store tests must run in CI. \
                 Run `export {PG_URL_ENV}=\"$(.ci/postgres.sh | tail -n 1)\"` first."
            );
            // Written to the stderr handle directly: libtest captures `eprintln!`,
            // and a skip must be visible in a normal `cargo test` run.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!! SKIPPED postgres::{test}: {PG_URL_ENV} is not set. \
                 Run `export {PG_URL_ENV}=\"$(.ci/postgres.sh | tail -n 1)\"` to test the \
                 PostgreSQL store. !!!!\n"
            );
            None
        }
    }
}

#[path = "store_support/cases.rs"]
mod cases;

/// Instantiates every case for one backend.
macro_rules! suite {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::{cases, Backend, Harness};

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        // In the child process that the killed-writer case
                        // spawns (this binary, re-run for that one test), be
                        // the writer it SIGKILLs instead.
                        if std::env::var_os(cases::CHILD_ENV).is_some() {
                            cases::crash_writer_child_main().await;
                            return;
                        }
                        let backend: Backend = $backend;
                        let Some(mut harness) = Harness::new(backend, stringify!($name)).await
                        else {
                            return;
                        };
                        cases::$name(&mut harness).await;
                    }
                };
            }

            case!(generation_bumps_only_when_the_spec_changes);
            case!(stale_resource_version_is_a_conflict);
            case!(status_write_never_bumps_generation);
            case!(record_generation_rollback_is_refused);
            case!(latest_heartbeat_wins_and_all_are_counted);
            case!(rollout_state_is_versioned);
            case!(leases_rollout_state_and_events_survive_reopen);
            case!(events_are_paged_in_commit_order);
            case!(batch_with_one_invalid_op_changes_nothing);
            case!(batch_ops_see_earlier_ops);
            case!(exactly_one_leader_among_contending_replicas);
            case!(leadership_is_taken_over_after_expiry);
            case!(killed_writer_leaves_no_half_applied_batch);
            case!(invalid_names_are_refused);
        }
    };
}

suite!(embedded, Backend::Embedded);
suite!(postgres, Backend::Postgres);

/// Behaviours only one backend has.
mod embedded_only {
    use fabric_reconciler::store::{EmbeddedStore, PutObject, Store, StoreError};
    use fabric_schemas::kinds::Kind;
    use serde_json::json;

    #[tokio::test]
    async fn garbage_file_is_reported_as_corrupt_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-store.redb");
        std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
        let err = EmbeddedStore::open(&path).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("corrupt"), "{msg}");
    }

    #[tokio::test]
    async fn damaged_store_file_is_reported_as_corrupt_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let store = EmbeddedStore::open(&path).await.unwrap();
            for i in 0..200 {
                store
                    .put_object(PutObject::new(
                        Kind::FabricNode,
                        format!("n{i}"),
                        json!({"pad": "y".repeat(500)}),
                    ))
                    .await
                    .unwrap();
            }
        }
        // Overwrite the middle of the file (data pages), leaving the header intact.
        let mut bytes = std::fs::read(&path).unwrap();
        let len = bytes.len();
        for b in &mut bytes[len / 3..len / 3 * 2] {
            *b = 0xa5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = EmbeddedStore::open(&path).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_second_opener_of_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let _first = EmbeddedStore::open(&path).await.unwrap();
        let err = EmbeddedStore::open(&path).await.unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("already open"), "{err}");
    }
}

mod postgres_only {
    use super::{Backend, Harness};
    use fabric_reconciler::store::{PostgresStore, MIGRATIONS};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_replicas_migrate_once_and_record_every_migration() {
        let Some(h) = Harness::new(Backend::Postgres, "migrations").await else {
            return;
        };
        let config = h.pg_config().unwrap().clone();
        let starts = (0..4).map(|_| PostgresStore::connect(config.clone()));
        for store in futures_join_all(starts).await {
            store.expect("every replica starts against the same fresh schema");
        }
        let client = raw_client(&config.url).await;
        let rows = client
            .query(
                &format!(
                    "SELECT version FROM {}.schema_migrations ORDER BY version",
                    config.schema
                ),
                &[],
            )
            .await
            .unwrap();
        let versions: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let expected: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert_eq!(versions, expected);
    }

    #[tokio::test]
    async fn events_cannot_be_rewritten_in_the_database() {
        use fabric_reconciler::store::NewEvent;
        let Some(h) = Harness::new(Backend::Postgres, "append_only").await else {
            return;
        };
        let store = h.store().await;
        store
            .append_event(NewEvent::new("x", "Test", "immutable"))
            .await
            .unwrap();
        let config = h.pg_config().unwrap();
        let client = raw_client(&config.url).await;
        for sql in [
            "UPDATE {}.events SET message = 'forged'",
            "DELETE FROM {}.events",
        ] {
            let err = client
                .batch_execute(&sql.replace("{}", &config.schema))
                .await
                .unwrap_err();
            let db = err.as_db_error().map(|e| e.message().to_owned());
            assert!(
                db.as_deref().is_some_and(|m| m.contains("append-only")),
                "{sql}: {err:?}"
            );
        }
    }

    async fn raw_client(url: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    /// Runs futures concurrently (no `futures` dependency needed for one use).
    async fn futures_join_all<F: std::future::Future + Send + 'static>(
        futs: impl Iterator<Item = F>,
    ) -> Vec<F::Output>
    where
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = futs.map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }
}
