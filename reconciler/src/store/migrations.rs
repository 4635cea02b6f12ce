//! PostgreSQL schema migrations: numbered, append-only, each applied in its own
//! transaction together with its `schema_migrations` row, under an advisory
//! lock so replicas starting at once do not race.
//!
//! Never edit a released migration; add a new one. Times are `bigint`
//! milliseconds since the Unix epoch, the unit the whole store uses.

use tokio_postgres::Client;

use super::{Result, StoreError};

/// One schema change.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// 1, 2, 3, ...; recorded in `schema_migrations` once applied.
    pub version: i64,
    /// Short description, recorded with the version.
    pub name: &'static str,
    /// The statements, run in one transaction.
    pub sql: &'static str,
}

/// Every migration, in order. Versions are 1, 2, 3, ... without gaps.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial tables",
        sql: r#"
CREATE SEQUENCE resource_version_seq;

-- Desired objects. A deleted object stays as a tombstone (deleted = true) so
-- that a re-created object continues above its old generation.
CREATE TABLE objects (
    kind             text    NOT NULL,
    name             text    NOT NULL,
    spec             jsonb   NOT NULL,
    status           jsonb,
    labels           jsonb   NOT NULL DEFAULT '{}',
    annotations      jsonb   NOT NULL DEFAULT '{}',
    generation       bigint  NOT NULL CHECK (generation >= 1),
    resource_version bigint  NOT NULL,
    updated_at       bigint  NOT NULL,
    deleted          boolean NOT NULL DEFAULT false,
    PRIMARY KEY (kind, name)
);

-- Signed envelopes as published to the fleet, byte for byte.
CREATE TABLE records (
    kind       text   NOT NULL,
    name       text   NOT NULL,
    generation bigint NOT NULL CHECK (generation >= 1),
    envelope   bytea  NOT NULL,
    stored_at  bigint NOT NULL,
    PRIMARY KEY (kind, name)
);

CREATE TABLE heartbeats (
    node           text   PRIMARY KEY,
    body           jsonb  NOT NULL,
    received_at    bigint NOT NULL,
    first_seen     bigint NOT NULL,
    received_count bigint NOT NULL
);

CREATE TABLE rollout_states (
    name       text   PRIMARY KEY,
    state      jsonb  NOT NULL,
    version    bigint NOT NULL CHECK (version >= 1),
    updated_at bigint NOT NULL
);

CREATE TABLE leases (
    id         text   PRIMARY KEY,
    rollout    text   NOT NULL,
    node       text   NOT NULL,
    body       jsonb  NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX leases_by_rollout ON leases (rollout);

CREATE TABLE events (
    seq     bigserial PRIMARY KEY,
    at      bigint NOT NULL,
    subject text   NOT NULL,
    reason  text   NOT NULL,
    message text   NOT NULL,
    data    jsonb  NOT NULL
);

-- One row per election; expires_at is in the database's clock so replicas'
-- clock skew does not matter.
CREATE TABLE leader_leases (
    election   text   PRIMARY KEY,
    holder     text   NOT NULL,
    term       bigint NOT NULL,
    expires_at bigint NOT NULL
);
"#,
    },
    Migration {
        version: 2,
        name: "events are append-only",
        sql: r#"
-- The audit log must not be rewritten, even by a buggy replica or a hand-typed
-- query: refuse UPDATE and DELETE at the database.
CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events is an append-only audit log (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
"#,
    },
];

/// Highest migration this binary knows.
pub(crate) fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Key of the advisory lock that serialises migrations of one schema.
const MIGRATION_LOCK_SQL: &str = "SELECT pg_advisory_xact_lock(hashtext('fabric-migrate:' || $1))";

/// Creates `schema` if needed and applies every pending migration in it. The
/// caller's connection must already have `search_path` set to `schema`.
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<()> {
    let pg = |op| move |source| StoreError::Postgres { op, source };
    {
        let tx = client
            .transaction()
            .await
            .map_err(pg("begin migration bootstrap"))?;
        tx.execute(MIGRATION_LOCK_SQL, &[&schema])
            .await
            .map_err(pg("take migration lock"))?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                 version    bigint PRIMARY KEY,
                 name       text   NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .await
        .map_err(pg("create schema_migrations"))?;
        tx.commit()
            .await
            .map_err(pg("commit migration bootstrap"))?;
    }

    for migration in MIGRATIONS {
        let tx = client.transaction().await.map_err(pg("begin migration"))?;
        tx.execute(MIGRATION_LOCK_SQL, &[&schema])
            .await
            .map_err(pg("take migration lock"))?;
        // Re-read under the lock: another replica may have applied it meanwhile.
        let row = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await
            .map_err(pg("read schema_migrations"))?;
        let applied: i64 = row.get(0);
        if applied > latest_version() {
            return Err(StoreError::SchemaTooNew {
                found: applied,
                known: latest_version(),
            });
        }
        if applied >= migration.version {
            continue;
        }
        let failed = |source| StoreError::Migration {
            version: migration.version,
            name: migration.name,
            source,
        };
        tx.batch_execute(migration.sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(
            schema,
            version = migration.version,
            name = migration.name,
            "applied store migration"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_versions_are_dense_and_ordered() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "migration {:?}", m.name);
        }
    }
}
