//! The citrusd releases the engine serves (`releases`, migration 0006): one row per binary,
//! keyed by its SHA-256; the file itself lives under `releases_dir` (see
//! [`crate::engine::releases`]).

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{ctx, Result, Store};

/// A stored release, as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseRow {
    /// SHA-256 of the binary, 64 lowercase hex digits: its name and its checksum.
    pub sha256: String,
    pub version: String,
    /// `x86_64` or `aarch64`.
    pub arch: String,
    /// Bytes.
    pub size: i64,
    pub created_at: i64,
}

const COLUMNS: &str = "sha256, version, arch, size, created_at";

fn row(row: AnyRow) -> std::result::Result<ReleaseRow, sqlx::Error> {
    Ok(ReleaseRow {
        sha256: row.try_get("sha256")?,
        version: row.try_get("version")?,
        arch: row.try_get("arch")?,
        size: row.try_get("size")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// Records a release; the same binary uploaded again keeps its first row. Answers the row
    /// and whether it is new.
    pub async fn insert_release(&self, release: &ReleaseRow) -> Result<(ReleaseRow, bool)> {
        let what = "recording a release";
        let done = sqlx::query(
            "INSERT INTO releases (sha256, version, arch, size, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(&release.sha256)
        .bind(&release.version)
        .bind(&release.arch)
        .bind(release.size)
        .bind(release.created_at)
        .execute(&self.writer)
        .await
        .map_err(ctx(what))?;
        let stored = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM releases WHERE sha256 = $1"
        )))
        .bind(&release.sha256)
        .fetch_one(&self.writer)
        .await
        .and_then(row)
        .map_err(ctx(what))?;
        Ok((stored, done.rows_affected() > 0))
    }

    /// Every release, newest first.
    pub async fn list_releases(&self) -> Result<Vec<ReleaseRow>> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM releases ORDER BY created_at DESC, sha256"
        )))
        .fetch_all(&self.pool)
        .await
        .and_then(|rows| rows.into_iter().map(row).collect())
        .map_err(ctx("listing releases"))
    }

    /// The release with this SHA-256.
    pub async fn get_release(&self, sha256: &str) -> Result<Option<ReleaseRow>> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM releases WHERE sha256 = $1"
        )))
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await
        .and_then(|r| r.map(row).transpose())
        .map_err(ctx("reading a release"))
    }

    /// The newest release for `arch` (what cloud-init installs by default).
    pub async fn newest_release(&self, arch: &str) -> Result<Option<ReleaseRow>> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM releases WHERE arch = $1 \
             ORDER BY created_at DESC, sha256 LIMIT 1"
        )))
        .bind(arch)
        .fetch_optional(&self.pool)
        .await
        .and_then(|r| r.map(row).transpose())
        .map_err(ctx("finding the newest release"))
    }

    /// Removes a release's row; whether there was one.
    pub async fn delete_release(&self, sha256: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM releases WHERE sha256 = $1")
            .bind(sha256)
            .execute(&self.writer)
            .await
            .map_err(ctx("deleting a release"))?;
        Ok(done.rows_affected() > 0)
    }

    /// The agents whose `agent_connected` said they run the binary `sha256` (`binarySha256`,
    /// kept on the agent row), at most 100.
    pub async fn agents_running(&self, sha256: &str) -> Result<Vec<String>> {
        sqlx::query("SELECT id FROM agents WHERE binary_sha256 = $1 ORDER BY id LIMIT 100")
            .bind(sha256)
            .fetch_all(&self.pool)
            .await
            .and_then(|rows| rows.iter().map(|r| r.try_get("id")).collect())
            .map_err(ctx("finding the agents that run a release"))
    }
}

#[cfg(test)]
mod tests {
    use super::ReleaseRow;
    use crate::engine::store::test_store;
    use crate::engine::store::AgentWrite;

    fn release(sha: char, arch: &str, at: i64) -> ReleaseRow {
        ReleaseRow {
            sha256: sha.to_string().repeat(64),
            version: format!("0.{at}.0"),
            arch: arch.into(),
            size: 1000 + at,
            created_at: at,
        }
    }

    #[tokio::test]
    async fn releases_are_recorded_once_listed_newest_first_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path()).await;
        let a = release('a', "x86_64", 1);
        let b = release('b', "x86_64", 2);
        let c = release('c', "aarch64", 3);
        for r in [&a, &b, &c] {
            assert_eq!(store.insert_release(r).await.unwrap(), (r.clone(), true));
        }
        // The same binary again keeps its first row.
        let again = ReleaseRow {
            version: "other".into(),
            created_at: 9,
            ..a.clone()
        };
        assert_eq!(
            store.insert_release(&again).await.unwrap(),
            (a.clone(), false)
        );
        assert_eq!(
            store.list_releases().await.unwrap(),
            [&c, &b, &a].map(Clone::clone)
        );
        assert_eq!(
            store.newest_release("x86_64").await.unwrap(),
            Some(b.clone())
        );
        assert_eq!(store.newest_release("aarch64").await.unwrap(), Some(c));
        assert_eq!(store.newest_release("riscv64").await.unwrap(), None);
        assert!(store.delete_release(&b.sha256).await.unwrap());
        assert!(!store.delete_release(&b.sha256).await.unwrap());
        assert_eq!(store.get_release(&b.sha256).await.unwrap(), None);
        assert_eq!(store.newest_release("x86_64").await.unwrap(), Some(a));
    }

    #[tokio::test]
    async fn agents_running_a_release_are_those_that_said_so_when_they_connected() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path()).await;
        let (one, two) = ("1".repeat(64), "2".repeat(64));
        let mut writes = vec![];
        for (agent, sha) in [("web-1", &one), ("web-2", &two), ("web-3", &one)] {
            store
                .insert_agent(agent, agent, None, None, 0)
                .await
                .unwrap();
            writes.push(AgentWrite::Version {
                agent_id: agent.into(),
                version: "0.1.0".into(),
                git_version: None,
                binary_sha256: Some(sha.clone()),
            });
        }
        store.record_agent_writes(&writes).await.unwrap();
        assert_eq!(
            store.agents_running(&one).await.unwrap(),
            ["web-1", "web-3"]
        );
        assert_eq!(store.agents_running(&two).await.unwrap(), ["web-2"]);
        assert!(store
            .agents_running(&"3".repeat(64))
            .await
            .unwrap()
            .is_empty());
    }
}
