//! Running Lua scripts that Redis may have forgotten: used by the publisher for `publish.lua`
//! and by the gateway for its history reads, so the reload rule is written once.

use deadpool_redis::redis::aio::ConnectionLike;
use deadpool_redis::redis::{self, FromRedisValue, Pipeline, RedisResult, Script};

/// Sends `pipe` (which invokes `script` by its hash) on `conn`. A restarted Redis has forgotten
/// the script and answers NOSCRIPT: then the script is loaded and the pipeline sent once more.
///
/// Sending again is only safe when NOSCRIPT means nothing ran: a pipeline of one invocation,
/// or several behind a `SCRIPT LOAD` on the same connection, or read-only scripts.
pub async fn query_loading<T, C>(conn: &mut C, pipe: &Pipeline, script: &Script) -> RedisResult<T>
where
    T: FromRedisValue,
    C: ConnectionLike + Send,
{
    let result = pipe.query_async(conn).await;
    if matches!(&result, Err(e) if is_noscript(e)) {
        script.prepare_invoke().load_async(conn).await?;
        return pipe.query_async(conn).await;
    }
    result
}

fn is_noscript(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// Like [`query_loading`] on a Redis Cluster, where one pipeline may not span slots: each
/// command of `pipe` is sent on its own, all at once on the multiplexed cluster connection
/// (each routed to the master of its key's slot), and the replies are gathered in order as if
/// they were one pipeline's. `pipe` must not hold ignored commands. A command answered
/// NOSCRIPT did not run: the script is loaded (on every master) and that command sent again.
pub async fn query_each<T: FromRedisValue>(
    conn: &redis::cluster_async::ClusterConnection,
    pipe: &Pipeline,
    script: &Script,
) -> RedisResult<T> {
    let replies = futures_util::future::try_join_all(pipe.cmd_iter().map(|cmd| {
        let mut conn = conn.clone();
        async move {
            let result = cmd.query_async::<redis::Value>(&mut conn).await;
            if matches!(&result, Err(e) if is_noscript(e)) {
                script.prepare_invoke().load_async(&mut conn).await?;
                return cmd.query_async::<redis::Value>(&mut conn).await;
            }
            result
        }
    }))
    .await?;
    Ok(T::from_redis_value(redis::Value::Array(replies))?)
}

/// Like [`query_each`], but each command's reply or error on its own, in order, each within
/// `limit`: one failing or stalling command (its user's shard is down) does not hide the
/// replies of the others.
pub async fn query_each_settled(
    conn: &redis::cluster_async::ClusterConnection,
    pipe: &Pipeline,
    script: &Script,
    limit: std::time::Duration,
) -> Vec<RedisResult<redis::Value>> {
    futures_util::future::join_all(pipe.cmd_iter().map(|cmd| {
        let mut conn = conn.clone();
        let query = async move {
            let result = cmd.query_async::<redis::Value>(&mut conn).await;
            if matches!(&result, Err(e) if is_noscript(e)) {
                script.prepare_invoke().load_async(&mut conn).await?;
                return cmd.query_async::<redis::Value>(&mut conn).await;
            }
            result
        };
        async move {
            tokio::time::timeout(limit, query)
                .await
                .unwrap_or_else(|_| {
                    Err(redis::RedisError::from(std::io::Error::from(
                        std::io::ErrorKind::TimedOut,
                    )))
                })
        }
    }))
    .await
}
