//! The web panel's sessions (`sessions`, migration 0005): a hashed id, its CSRF token and its
//! expiry. Bounded: each login drops the expired rows and the oldest beyond the cap.

use sqlx::Row;

use super::{ctx, Result, Store};

/// A live session.
#[derive(Clone, Debug)]
pub struct SessionRow {
    pub csrf_token: String,
    pub expires_at: i64,
}

impl Store {
    /// Records a session, then deletes the expired ones and the oldest beyond `max`.
    pub async fn insert_session(
        &self,
        id_hash: &str,
        csrf_token: &str,
        now: i64,
        expires_at: i64,
        max: i64,
    ) -> Result<()> {
        let what = "recording a panel session";
        let mut tx = self.writer.begin().await.map_err(ctx(what))?;
        sqlx::query(
            "INSERT INTO sessions (id_hash, csrf_token, created_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(id_hash)
        .bind(csrf_token)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await
        .map_err(ctx(what))?;
        sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(ctx(what))?;
        sqlx::query(
            "DELETE FROM sessions WHERE id_hash NOT IN \
             (SELECT id_hash FROM sessions ORDER BY created_at DESC, id_hash LIMIT $1)",
        )
        .bind(max)
        .execute(&mut *tx)
        .await
        .map_err(ctx(what))?;
        tx.commit().await.map_err(ctx(what))
    }

    /// The session with this id hash, unless it has expired.
    pub async fn get_session(&self, id_hash: &str, now: i64) -> Result<Option<SessionRow>> {
        let what = "reading a panel session";
        let row = sqlx::query(
            "SELECT csrf_token, expires_at FROM sessions WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(ctx(what))?;
        row.map(|row| {
            Ok(SessionRow {
                csrf_token: row.try_get("csrf_token")?,
                expires_at: row.try_get("expires_at")?,
            })
        })
        .transpose()
        .map_err(ctx(what))
    }

    /// Ends a session; whether there was one.
    pub async fn delete_session(&self, id_hash: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.writer)
            .await
            .map_err(ctx("ending a panel session"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Live sessions.
    pub async fn count_sessions(&self, now: i64) -> Result<i64> {
        sqlx::query("SELECT COUNT(*) AS n FROM sessions WHERE expires_at > $1")
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get::<i64, _>("n"))
            .map_err(ctx("counting panel sessions"))
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::store::test_store;

    #[tokio::test]
    async fn sessions_expire_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path()).await;
        store.insert_session("old", "c0", 0, 100, 3).await.unwrap();
        assert!(store.get_session("old", 50).await.unwrap().is_some());
        assert!(
            store.get_session("old", 100).await.unwrap().is_none(),
            "expired"
        );
        // A login prunes the expired one and keeps the newest 3.
        for i in 1..=4 {
            let id = format!("s{i}");
            store
                .insert_session(&id, "c", 100 + i, 10_000, 3)
                .await
                .unwrap();
        }
        assert_eq!(store.count_sessions(0).await.unwrap(), 3);
        assert!(store.get_session("s1", 200).await.unwrap().is_none());
        let s4 = store.get_session("s4", 200).await.unwrap().unwrap();
        assert_eq!((s4.csrf_token.as_str(), s4.expires_at), ("c", 10_000));
        assert!(store.delete_session("s4").await.unwrap());
        assert!(!store.delete_session("s4").await.unwrap());
        assert!(store.get_session("s4", 200).await.unwrap().is_none());
    }
}
