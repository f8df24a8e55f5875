//! The flags' Redis side: the document and its version (one hash), the cluster's audit
//! log (one capped list), both changed only by one compare-and-set script.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::{Cluster, ClusterError, FLAGS_TTL_SECS};
use crate::flags::store::{SharedDoc, SharedFlags, Swap};

/// `KEYS`: flags hash, audit list. `ARGV`: expected version, new version, document,
/// audit cap, ttl, then audit lines. Sets the document only if the version in Redis (0
/// when none) is the expected one; returns `{1, version}` or `{0, current}`.
const SWAP: &str = r"
local cur = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if cur ~= tonumber(ARGV[1]) then return {0, cur} end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'doc', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
for i = 6, #ARGV do redis.call('LPUSH', KEYS[2], ARGV[i]) end
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)
redis.call('EXPIRE', KEYS[2], ARGV[5])
return {1, tonumber(ARGV[2])}
";

impl Cluster {
    async fn flags_fetch(&self) -> Result<Option<SharedDoc>, ClusterError> {
        let mut conn = self.conn();
        let (version, doc): (Option<u64>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.flags())
            .arg("version")
            .arg("doc")
            .query_async(&mut conn)
            .await?;
        self.saw_redis();
        Ok(version
            .zip(doc)
            .map(|(version, doc)| SharedDoc { version, doc }))
    }

    async fn flags_swap(
        &self,
        expected: u64,
        next: SharedDoc,
        audit: Vec<String>,
    ) -> Result<Swap, ClusterError> {
        let mut conn = self.conn();
        let script = redis::Script::new(SWAP);
        let mut call = script.key(self.keys.flags());
        call.key(self.keys.flags_audit())
            .arg(expected)
            .arg(next.version)
            .arg(next.doc)
            .arg(self.config.audit_max)
            .arg(FLAGS_TTL_SECS);
        for line in audit {
            call.arg(line);
        }
        let (done, version): (u8, u64) = call.invoke_async(&mut conn).await?;
        self.saw_redis();
        Ok(if done == 1 {
            Swap::Done
        } else {
            Swap::Stale { current: version }
        })
    }

    async fn flags_audit(&self, limit: usize) -> Result<Vec<String>, ClusterError> {
        let mut conn = self.conn();
        let lines: Vec<String> = redis::cmd("LRANGE")
            .arg(self.keys.flags_audit())
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(&mut conn)
            .await?;
        self.saw_redis();
        Ok(lines)
    }
}

impl SharedFlags for Cluster {
    fn fetch(&self) -> BoxFuture<'_, Result<Option<SharedDoc>, String>> {
        async move { self.flags_fetch().await.map_err(|e| e.to_string()) }.boxed()
    }

    fn swap(
        &self,
        expected: u64,
        next: SharedDoc,
        audit: Vec<String>,
    ) -> BoxFuture<'_, Result<Swap, String>> {
        async move {
            self.flags_swap(expected, next, audit)
                .await
                .map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn audit(&self, limit: usize) -> BoxFuture<'_, Result<Vec<String>, String>> {
        async move { self.flags_audit(limit).await.map_err(|e| e.to_string()) }.boxed()
    }
}
