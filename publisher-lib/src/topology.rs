//! Where Redis is: one server at a fixed address, the master of a Sentinel-watched set,
//! which moves to a replica when the master fails, or a Redis Cluster (seed nodes; redis-rs's
//! cluster connection routes each command to the master of its key's slot and follows MOVED
//! and failovers).
//!
//! With one server, a pooled connection goes back into service without a round trip unless a
//! call on it failed (or never finished), or it sat unused for [`IDLE_CHECK`]: then a PING
//! decides. (deadpool-redis's own manager sends UNWATCH + PING on every checkout, which made
//! each publish two round trips; docs/PERFORMANCE.md, "Latency, scenario b".)
//!
//! With Sentinel every new pooled connection asks the sentinels for the current master and
//! remembers its address. Before each use a pooled connection is checked: it must lead to the
//! address the sentinels named last (during a switchover the old master keeps saying it is
//! one until the sentinels reconfigure it, seconds later), and `ROLE` must say master (a
//! demoted master still answers PING, but refuses writes with READONLY). A READONLY reply that
//! still slips through empties the pool's idle connections and is retried like a dropped
//! connection.

use std::sync::Mutex;
use std::time::Duration;

use deadpool::managed;
use deadpool_redis::redis::{
    self, aio::ConnectionLike, aio::MultiplexedConnection, sentinel::SentinelClient,
    sentinel::SentinelNodeConnectionInfo, sentinel::SentinelServerType, AsyncConnectionConfig,
    ConnectionAddr, RedisConnectionInfo, RedisError,
};

use crate::error::PublishError;

/// A Redis Cluster, found through any of its nodes.
///
/// ```
/// use publisher::ClusterConfig;
///
/// let cluster = ClusterConfig::new(["10.0.0.1:7000", "10.0.0.2:7000"]);
/// assert_eq!(cluster.nodes.len(), 2);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Seed nodes, `host:port` each: any reachable node tells where the others are.
    pub nodes: Vec<String>,
    /// The nodes' password (`requirepass`, the same on every node), if any.
    pub password: Option<String>,
}

impl std::fmt::Debug for ClusterConfig {
    // Hand-written so that the password never reaches the logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl ClusterConfig {
    /// Seed nodes without a password.
    pub fn new(nodes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ClusterConfig {
            nodes: nodes.into_iter().map(Into::into).collect(),
            password: None,
        }
    }

    /// `redis://host:port` per seed, checked: at least one, each `host:port`.
    pub fn urls(&self) -> Result<Vec<String>, PublishError> {
        let invalid = |reason: String| {
            PublishError::InvalidConfig(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "invalid Cluster settings",
                reason,
            )))
        };
        if self.nodes.is_empty() {
            return Err(invalid("no cluster node address".into()));
        }
        self.nodes
            .iter()
            .map(|address| {
                let address = address.trim();
                let valid = address
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !valid {
                    return Err(invalid(format!(
                        "cluster node address {address:?} is not host:port"
                    )));
                }
                Ok(format!("redis://{address}"))
            })
            .collect()
    }
}

/// A Redis master found through Sentinel.
///
/// ```
/// use publisher::SentinelConfig;
///
/// let sentinel = SentinelConfig::new(["10.0.0.1:26379", "10.0.0.2:26379"], "notifications");
/// assert_eq!(sentinel.master_name, "notifications");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    /// The sentinels' addresses, `host:port` each (26379 is Sentinel's usual port). They are
    /// asked in order; one that answers is enough.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the master under (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// The sentinels' own password (`requirepass` in sentinel.conf), if any.
    pub sentinel_password: Option<String>,
    /// The master's password (its `requirepass`, the same on every replica), if any.
    pub password: Option<String>,
}

impl std::fmt::Debug for SentinelConfig {
    // Hand-written so that passwords never reach the logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConfig")
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .finish_non_exhaustive()
    }
}

impl SentinelConfig {
    /// Sentinels without passwords.
    pub fn new(
        sentinels: impl IntoIterator<Item = impl Into<String>>,
        master_name: impl Into<String>,
    ) -> Self {
        SentinelConfig {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            master_name: master_name.into(),
            sentinel_password: None,
            password: None,
        }
    }

    fn client(&self) -> Result<SentinelClient, PublishError> {
        let invalid = |reason: String| {
            PublishError::InvalidConfig(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "invalid Sentinel settings",
                reason,
            )))
        };
        if self.sentinels.is_empty() {
            return Err(invalid("no sentinel address".into()));
        }
        if self.master_name.trim().is_empty() {
            return Err(invalid("the master name is empty".into()));
        }
        let mut urls = Vec::with_capacity(self.sentinels.len());
        for address in &self.sentinels {
            let address = address.trim();
            let valid = address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(invalid(format!(
                    "sentinel address {address:?} is not host:port"
                )));
            }
            let credentials = match &self.sentinel_password {
                Some(password) => format!(":{}@", crate::wire::percent_encode(password)),
                None => String::new(),
            };
            urls.push(format!("redis://{credentials}{address}"));
        }
        let node =
            SentinelNodeConnectionInfo::default().set_redis_connection_info(match &self.password {
                Some(password) => RedisConnectionInfo::default().set_password(password),
                None => RedisConnectionInfo::default(),
            });
        SentinelClient::build(
            urls,
            self.master_name.clone(),
            Some(node),
            SentinelServerType::Master,
        )
        .map_err(PublishError::InvalidConfig)
    }
}

/// Makes connections to whichever node the sentinels name master right now.
pub struct SentinelManager {
    client: tokio::sync::Mutex<SentinelClient>,
    connection: AsyncConnectionConfig,
    timeout: Duration,
    /// The master the sentinels named last.
    current: Mutex<Option<ConnectionAddr>>,
}

impl std::fmt::Debug for SentinelManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelManager").finish_non_exhaustive()
    }
}

impl SentinelManager {
    pub(crate) fn new(
        config: &SentinelConfig,
        connection: AsyncConnectionConfig,
        timeout: Duration,
    ) -> Result<Self, PublishError> {
        Ok(SentinelManager {
            client: tokio::sync::Mutex::new(config.client()?),
            connection,
            timeout,
            current: Mutex::new(None),
        })
    }

    /// A client for the current master, as the sentinels say and the node itself confirms.
    pub async fn master(&self) -> Result<redis::Client, RedisError> {
        let lookup = async { self.client.lock().await.async_get_client().await };
        let client = tokio::time::timeout(self.timeout, lookup)
            .await
            .unwrap_or_else(|_| {
                Err(RedisError::from((
                    redis::ErrorKind::Io,
                    "no sentinel answered in time",
                )))
            })?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(client.get_connection_info().addr().clone());
        Ok(client)
    }

    fn is_current(&self, addr: &ConnectionAddr) -> bool {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_none_or(|current| current == addr)
    }
}

/// A pooled connection unused for longer than this is PINGed before it is handed out
/// (Redis may have restarted, or a middlebox dropped it, while it sat idle).
pub const IDLE_CHECK: Duration = Duration::from_millis(250);

/// Makes connections to one server at a fixed address.
pub struct ServerManager {
    client: redis::Client,
    connection: AsyncConnectionConfig,
}

impl ServerManager {
    pub fn new(client: redis::Client, connection: AsyncConnectionConfig) -> Self {
        ServerManager { client, connection }
    }
}

/// A connection to one server that remembers whether its last call failed or never finished.
pub struct ServerConnection {
    conn: MultiplexedConnection,
    /// Set while a call is in flight and kept when it ends in a connection error: a call whose
    /// future was dropped (a timeout) leaves it set too.
    suspect: bool,
}

/// An error after which the connection itself is in doubt (not a reply like NOSCRIPT).
fn breaks_connection(error: &RedisError) -> bool {
    error.is_io_error() || error.is_connection_dropped() || error.is_timeout()
}

impl ConnectionLike for ServerConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            self.suspect = true;
            let result = self.conn.req_packed_command(cmd).await;
            self.suspect = matches!(&result, Err(e) if breaks_connection(e));
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            self.suspect = true;
            let result = self.conn.req_packed_commands(cmd, offset, count).await;
            self.suspect = matches!(&result, Err(e) if breaks_connection(e));
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

impl managed::Manager for ServerManager {
    type Type = ServerConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<ServerConnection, RedisError> {
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.connection)
            .await?;
        Ok(ServerConnection {
            conn,
            suspect: false,
        })
    }

    async fn recycle(
        &self,
        conn: &mut ServerConnection,
        metrics: &managed::Metrics,
    ) -> managed::RecycleResult<RedisError> {
        if conn.suspect {
            return Err(managed::RecycleError::message(
                "its last call failed or never finished",
            ));
        }
        if metrics.last_used() >= IDLE_CHECK {
            let _: String = redis::cmd("PING").query_async(&mut conn.conn).await?;
        }
        Ok(())
    }
}

pub(crate) type ServerPool = managed::Pool<ServerManager>;

/// A connection to a node that was the master when it was opened.
pub struct MasterConnection {
    conn: MultiplexedConnection,
    addr: ConnectionAddr,
}

impl ConnectionLike for MasterConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        self.conn.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.conn.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

impl managed::Manager for SentinelManager {
    type Type = MasterConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<MasterConnection, RedisError> {
        let client = self.master().await?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.connection)
            .await?;
        Ok(MasterConnection {
            conn,
            addr: client.get_connection_info().addr().clone(),
        })
    }

    async fn recycle(
        &self,
        conn: &mut MasterConnection,
        _: &managed::Metrics,
    ) -> managed::RecycleResult<RedisError> {
        if !self.is_current(&conn.addr) {
            return Err(managed::RecycleError::message(
                "the sentinels name another master now",
            ));
        }
        match redis::cmd("ROLE")
            .query_async::<redis::Role>(&mut conn.conn)
            .await?
        {
            redis::Role::Primary { .. } => Ok(()),
            _ => Err(managed::RecycleError::message(
                "demoted by a failover: no longer the master",
            )),
        }
    }
}

pub(crate) type SentinelPool = managed::Pool<SentinelManager>;

/// A pooled connection to the current master, whichever topology.
pub enum PooledConnection {
    Single(managed::Object<ServerManager>),
    /// From a pool the caller built ([`Publisher::from_pool`](crate::Publisher::from_pool)).
    Given(deadpool_redis::Connection),
    Sentinel(managed::Object<SentinelManager>),
    /// The publisher's (multiplexed, shared) cluster connection. Pipelines on it must keep to
    /// one slot: see [`crate::script::query_loading`], which splits them.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl PooledConnection {
    /// Whether this leads to a Redis Cluster (commands of one pipeline must share a slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self, PooledConnection::Cluster(_))
    }
}

impl ConnectionLike for PooledConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            PooledConnection::Single(conn) => conn.req_packed_command(cmd),
            PooledConnection::Given(conn) => conn.req_packed_command(cmd),
            PooledConnection::Sentinel(conn) => conn.req_packed_command(cmd),
            PooledConnection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            PooledConnection::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            PooledConnection::Given(conn) => conn.req_packed_commands(cmd, offset, count),
            PooledConnection::Sentinel(conn) => conn.req_packed_commands(cmd, offset, count),
            PooledConnection::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            PooledConnection::Single(conn) => conn.get_db(),
            PooledConnection::Given(conn) => conn.get_db(),
            PooledConnection::Sentinel(conn) => conn.get_db(),
            PooledConnection::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn bad_sentinel_settings_are_invalid_input() {
        for (sentinels, master) in [
            (vec![], "m"),
            (vec!["127.0.0.1:26379"], " "),
            (vec!["127.0.0.1"], "m"),
            (vec!["127.0.0.1:port"], "m"),
            (vec![":26379"], "m"),
        ] {
            let err = SentinelConfig::new(sentinels.clone(), master)
                .client()
                .err()
                .unwrap_or_else(|| panic!("{sentinels:?} {master:?} accepted"));
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        }
        assert!(
            SentinelConfig::new(["10.0.0.1:26379", "sentinel-b:26379"], "m")
                .client()
                .is_ok()
        );
    }

    #[test]
    fn bad_cluster_settings_are_invalid_input() {
        for nodes in [vec![], vec!["127.0.0.1"], vec![":7000"], vec!["h:port"]] {
            let err = ClusterConfig::new(nodes.clone())
                .urls()
                .err()
                .unwrap_or_else(|| panic!("{nodes:?} accepted"));
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        }
        assert_eq!(
            ClusterConfig::new(["10.0.0.1:7000", " node-b:7001"])
                .urls()
                .unwrap(),
            ["redis://10.0.0.1:7000", "redis://node-b:7001"]
        );
    }

    #[test]
    fn debug_output_hides_passwords() {
        let mut config = SentinelConfig::new(["127.0.0.1:26379"], "m");
        config.sentinel_password = Some("hunter2".into());
        config.password = Some("swordfish".into());
        let text = format!("{config:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("swordfish"),
            "{text}"
        );
    }

    #[test]
    fn passwords_are_percent_encoded_for_the_sentinel_urls() {
        assert_eq!(
            crate::wire::percent_encode("a b@c:d/%"),
            "a%20b%40c%3Ad%2F%25"
        );
    }
}
