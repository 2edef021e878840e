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
