//! The Redis side: a pooled, time-bounded PUBLISH to `user_<id>` channels.

use std::fmt;
use std::time::Duration;

use std::sync::LazyLock;

use deadpool_redis::redis::{
    self, AsyncConnectionConfig, FromRedisValue, IntoConnectionInfo, Pipeline, Script,
    TlsCertificates,
};
use deadpool_redis::{Manager, Pool, Runtime};
use tokio::time::Instant;

use crate::error::PublishError;
use crate::notification::{now_millis, Notification};
use crate::schedule::{self, FireReport, Presence, ScheduleKey};
use crate::script;
use crate::topology::{
    ClusterConfig, PooledConnection, SentinelConfig, SentinelManager, SentinelPool,
};
use crate::wire::{self, StreamId, UserId};

/// The history-and-publish script, hashed once (EVALSHA after the first load).
static PUBLISH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(wire::PUBLISH_SCRIPT));
/// The firing script gateway nodes run ([`schedule::FIRE_SCRIPT`]).
static FIRE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(schedule::FIRE_SCRIPT));
/// Step 1 of firing on a Redis Cluster ([`schedule::CLAIM_SCRIPT`]).
static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(schedule::CLAIM_SCRIPT));
/// The presence query ([`schedule::PRESENCE_SCRIPT`]).
static PRESENCE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(schedule::PRESENCE_SCRIPT));
/// A gateway node's presence heartbeat ([`schedule::PRESENCE_BEAT_SCRIPT`]).
static PRESENCE_BEAT_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(schedule::PRESENCE_BEAT_SCRIPT));

/// First pause before retrying a connection error; doubles on each further retry.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between retries, so that a publisher waiting out a failover notices the new
/// master soon after the sentinels announce it.
const MAX_RETRY_BACKOFF: Duration = Duration::from_millis(250);

const CERTIFICATE_MARKER: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// How a [`Publisher`] talks to Redis.
///
/// Build it with struct update syntax so new fields keep their defaults:
///
/// ```
/// use std::time::Duration;
/// use publisher::PublisherOptions;
///
/// let options = PublisherOptions { timeout: Duration::from_millis(500), ..Default::default() };
/// assert_eq!(options.retries, 2);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublisherOptions {
    /// Most Redis connections kept open. Default 8. Each connection is multiplexed, so a few
    /// serve many concurrent publishes. Ignored by [`Publisher::from_pool`].
    pub pool_size: usize,
    /// Upper bound for one call (`publish`, `publish_payload`, `publish_many`, `ping`),
    /// covering the wait for a pooled connection, connecting, retries and the reply.
    /// Default 2 s. When it passes the call returns [`ErrorKind::Timeout`](crate::ErrorKind::Timeout).
    pub timeout: Duration,
    /// Largest payload sent, in bytes. Default [`wire::DEFAULT_MAX_PAYLOAD_BYTES`] (64 KiB),
    /// the gateway's default limit; keep it no higher than the gateways' setting or they will
    /// drop what you send.
    pub max_payload_bytes: usize,
    /// Extra attempts after a connection error (Redis restarting, failover), with a short
    /// doubling pause starting at 50 ms, all within `timeout`. Default 2. Errors Redis answers
    /// with (wrong password, ACL) and timeouts are never retried. A publisher built
    /// [`with_sentinel`](Publisher::with_sentinel) retries connection errors until `timeout`
    /// whatever this says (pauses capped at 250 ms): a failover takes seconds.
    pub retries: u32,
    /// Notifications kept per user in the history stream (approximately: Redis trims in whole
    /// blocks, so a little more may be kept). Default 1000. Clients that reconnect are
    /// replayed what they missed from this history.
    pub history_max_len: usize,
    /// Notifications older than this are trimmed from history, and a user's history expires
    /// when nothing was published to them for this long. Default 24 h; zero keeps entries
    /// regardless of age.
    pub history_max_age: Duration,
    /// Replicas that must hold a notification before a publish is acknowledged (Redis
    /// `WAIT`, within `timeout`). Default 0: acknowledged once the master ran the script.
    /// With Sentinel, 1 closes the window in which a master that dies right after answering
    /// takes an acknowledged notification with it (the sentinels promote the replica that is
    /// most up to date). A publish whose replicas do not confirm in time is retried with its
    /// one-time token (never stored twice) within `timeout`, then fails with
    /// [`ErrorKind::RedisUnavailable`](crate::ErrorKind::RedisUnavailable) or
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout): the notification may be stored and
    /// delivered all the same, but is not known to survive a failover.
    pub min_replica_acks: u32,
}

impl Default for PublisherOptions {
    /// `pool_size` 8, `timeout` 2 s, `max_payload_bytes` 64 KiB, `retries` 2,
    /// `history_max_len` 1000, `history_max_age` 24 h, `min_replica_acks` 0.
    fn default() -> Self {
        PublisherOptions {
            pool_size: 8,
            timeout: Duration::from_secs(2),
            max_payload_bytes: wire::DEFAULT_MAX_PAYLOAD_BYTES,
            retries: 2,
            history_max_len: 1000,
            history_max_age: Duration::from_secs(24 * 3600),
            min_replica_acks: 0,
        }
    }
}

impl PublisherOptions {
    fn validate(&self) -> Result<(), PublishError> {
        if self.pool_size == 0 {
            return Err(PublishError::InvalidOptions("pool_size must be at least 1"));
        }
        if self.timeout.is_zero() {
            return Err(PublishError::InvalidOptions(
                "timeout must be more than zero",
            ));
        }
        if self.history_max_age > Duration::from_secs(365 * 24 * 3600) {
            return Err(PublishError::InvalidOptions(
                "history_max_age must be at most a year (zero: no age limit)",
            ));
        }
        if self.history_max_len == 0 {
            return Err(PublishError::InvalidOptions(
                "history_max_len must be at least 1",
            ));
        }
        Ok(())
    }
}

/// A token unique to one notification, stored with it, so that the script recognises a retry
/// of a call whose answer was lost.
fn once_token() -> String {
    static SEED: LazyLock<u64> = LazyLock::new(|| {
        // RandomState is seeded from the OS: distinct per process without a rand dependency.
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.finish()
    });
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:016x}{n:x}", *SEED)
}

/// What Redis answered to one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The notification's id in the user's history (also sent to browsers as `"id"`).
    pub id: StreamId,
    /// Gateway nodes that received it live: 0 means no browser of the user is open anywhere.
    pub receivers: usize,
}

/// Sends notifications to users through Redis.
///
/// Cheap to clone (the pool is shared): build one at startup and hand clones to your tasks.
/// Needs a Tokio runtime with the time driver enabled. Every call returns within
/// [`PublisherOptions::timeout`].
///
/// Every notification is appended to the user's history stream and published in one atomic
/// script, so a browser that reconnects with the last id it saw is replayed what it missed.
/// A connection that breaks after the script was sent is retried with the same one-time
/// token, which the script looks for among the user's newest entries: a retry never stores or
/// delivers a notification twice.
#[derive(Clone)]
pub struct Publisher {
    connections: Connections,
    options: PublisherOptions,
}

/// Where the pooled connections go.
#[derive(Clone)]
enum Connections {
    /// One server at a fixed address.
    Single {
        pool: Pool,
        client: Option<Box<redis::Client>>,
    },
    /// Whichever node the sentinels name master.
    Sentinel(SentinelPool),
    /// A Redis Cluster: one multiplexed connection (to every master), opened on first use.
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        /// Dropped when a call stalls or fails on it (see `attempt`), and opened again.
        conn: std::sync::Arc<std::sync::Mutex<Option<redis::cluster_async::ClusterConnection>>>,
        /// Held while one is opened: a burst of first calls opens one connection, not one
        /// each (1,000 concurrent first calls took 3.5 s instead of 0.1 s).
        opening: std::sync::Arc<tokio::sync::Mutex<()>>,
    },
}

impl fmt::Debug for Publisher {
    // Hand-written so the Redis URL (which may hold a password) never reaches the logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("options", &self.options)
            .field(
                "pool",
                &match &self.connections {
                    Connections::Single { pool, .. } => format!("{:?}", pool.status()),
                    Connections::Sentinel(pool) => format!("{:?}", pool.status()),
                    Connections::Cluster { .. } => "one cluster connection".to_owned(),
                },
            )
            .finish()
    }
}

impl Publisher {
    /// A publisher for `url` with default options: `redis://[user:password@]host[:port][/db]`,
    /// or `rediss://...` for TLS, verified against the system's trusted roots (for a private
    /// CA see [`Publisher::with_tls_ca`]). A password or ACL user goes in the URL.
    ///
    /// Does not touch the network: connections open on first use. Call [`Publisher::ping`]
    /// at startup to fail fast on a wrong host or password.
    pub fn connect(url: &str) -> Result<Self, PublishError> {
        Self::with_options(url, PublisherOptions::default())
    }

    /// Like [`Publisher::connect`], with your options.
    pub fn with_options(url: &str, options: PublisherOptions) -> Result<Self, PublishError> {
        Self::build(url, options)
    }

    /// Like [`Publisher::with_options`], for a `rediss://` URL whose server certificate is
    /// signed by a private CA: `ca_pem` holds that CA's certificate(s) in PEM and is trusted
    /// instead of the system's roots. The server's name (or IP) must match its certificate.
    ///
    /// TLS is rustls with its aws-lc-rs provider. An application that also compiles rustls's
    /// `ring` provider (through another crate) must install a process default first, e.g.
    /// `rustls::crypto::aws_lc_rs::default_provider().install_default()`: with two providers
    /// and no default, redis-rs cannot build its TLS configuration.
    pub fn with_tls_ca(
        url: &str,
        ca_pem: &[u8],
        options: PublisherOptions,
    ) -> Result<Self, PublishError> {
        // redis-rs would take a PEM without certificates as an empty trust store, and every
        // connection would then fail verification.
        if !ca_pem
            .windows(CERTIFICATE_MARKER.len())
            .any(|w| w == CERTIFICATE_MARKER)
        {
            return Err(PublishError::InvalidConfig(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "the CA PEM holds no certificate",
            ))));
        }
        let certificates = TlsCertificates {
            client_tls: None,
            root_cert: Some(ca_pem.to_vec()),
        };
        // Nothing touches the network here: every error is about the URL or the PEM.
        let client = redis::Client::build_with_tls(url, certificates)
            .map_err(PublishError::InvalidConfig)?;
        Self::build(client.get_connection_info().clone(), options)
    }

    fn build(
        target: impl IntoConnectionInfo,
        options: PublisherOptions,
    ) -> Result<Self, PublishError> {
        options.validate()?;
        let info = target
            .into_connection_info()
            .map_err(|e| PublishError::from_redis(e, options.timeout))?;
        let client = redis::Client::open(info.clone())
            .map_err(|e| PublishError::from_redis(e, options.timeout))?;
        let manager = Manager::new_with_config(info, connection_config(&options))
            .map_err(|e| PublishError::from_redis(e, options.timeout))?;
        // deadpool waits forever by default; bound every step of a checkout too.
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .wait_timeout(Some(options.timeout))
            .create_timeout(Some(options.timeout))
            .recycle_timeout(Some(options.timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|_| PublishError::InvalidOptions("the connection pool could not be built"))?;
        Ok(Publisher {
            connections: Connections::Single {
                pool,
                client: Some(Box::new(client)),
            },
            options,
        })
    }

    /// A publisher for the master of a Sentinel-watched set: it asks the sentinels where the
    /// master is, and again when a connection breaks or a node answers that it is a replica,
    /// so it follows a failover by itself. Never writes to a replica.
    ///
    /// A failover takes seconds (the sentinels' `down-after-milliseconds` plus the election):
    /// with Sentinel, connection errors are retried until `options.timeout`, not just
    /// `options.retries` times, so give it a timeout longer than your failovers take if the
    /// caller should not see them. Does not touch the network.
    pub fn with_sentinel(
        sentinel: SentinelConfig,
        options: PublisherOptions,
    ) -> Result<Self, PublishError> {
        options.validate()?;
        let manager =
            SentinelManager::new(&sentinel, connection_config(&options), options.timeout)?;
        let pool = SentinelPool::builder(manager)
            .max_size(options.pool_size)
            .wait_timeout(Some(options.timeout))
            .create_timeout(Some(options.timeout))
            .recycle_timeout(Some(options.timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|_| PublishError::InvalidOptions("the connection pool could not be built"))?;
        Ok(Publisher {
            connections: Connections::Sentinel(pool),
            options,
        })
    }

    /// A publisher for a Redis Cluster (Redis 7+): each notification is stored in
    /// `history:{user_<id>}` and published with `SPUBLISH` (sharded pub/sub) on the master of
    /// the user's slot, so publishing and delivery scale with the shards. Commands follow
    /// MOVED/ASK redirections and failovers by themselves; connection errors are retried until
    /// `options.timeout` with the notification's one-time token. One multiplexed connection
    /// per master, opened on first use (so `options.pool_size` is ignored); does not touch the
    /// network here. `options.min_replica_acks` sends WAIT to each master that ran a script of
    /// the call (on the same connection), so an acknowledged notification survives a failover.
    pub fn with_cluster(
        cluster: ClusterConfig,
        options: PublisherOptions,
    ) -> Result<Self, PublishError> {
        options.validate()?;
        let mut builder = redis::cluster::ClusterClientBuilder::new(cluster.urls()?)
            .connection_timeout(options.timeout)
            .response_timeout(options.timeout);
        if let Some(password) = &cluster.password {
            builder = builder.password(password);
        }
        let client = builder.build().map_err(PublishError::InvalidConfig)?;
        Ok(Publisher {
            connections: Connections::Cluster {
                client: Box::new(client),
                conn: Default::default(),
                opening: Default::default(),
            },
            options,
        })
    }

    /// A publisher over a pool you built yourself (to share it, or for settings this crate
    /// does not expose). `options.pool_size` is ignored; `options.timeout` still bounds every
    /// call, whatever timeouts the pool has.
    pub fn from_pool(pool: Pool, options: PublisherOptions) -> Result<Self, PublishError> {
        options.validate()?;
        Ok(Publisher {
            connections: Connections::Single { pool, client: None },
            options,
        })
    }

    /// The options this publisher was built with.
    pub fn options(&self) -> &PublisherOptions {
        &self.options
    }

    /// A pooled connection to the master, for other commands on the same Redis (a gateway
    /// reads history through it). Bounded by `options.timeout`.
    pub async fn connection(&self) -> Result<PooledConnection, PublishError> {
        let timeout = self.options.timeout;
        match &self.connections {
            Connections::Single { pool, .. } => pool
                .get()
                .await
                .map(PooledConnection::Single)
                .map_err(|e| PublishError::from_pool(e, timeout)),
            Connections::Sentinel(pool) => pool
                .get()
                .await
                .map(PooledConnection::Sentinel)
                .map_err(|e| PublishError::from_sentinel_pool(e, timeout)),
            Connections::Cluster {
                client,
                conn,
                opening,
            } => {
                if let Some(open) = lock(conn).clone() {
                    return Ok(PooledConnection::Cluster(open));
                }
                let deadline = Instant::now() + timeout;
                let Ok(_opening) = tokio::time::timeout_at(deadline, opening.lock()).await else {
                    return Err(PublishError::Timeout(timeout));
                };
                // Opened by the call that held the lock before this one?
                if let Some(open) = lock(conn).clone() {
                    return Ok(PooledConnection::Cluster(open));
                }
                // Reads the slot map from the first seed that answers.
                match tokio::time::timeout_at(deadline, client.get_async_connection()).await {
                    Ok(Ok(open)) => {
                        *lock(conn) = Some(open.clone());
                        Ok(PooledConnection::Cluster(open))
                    }
                    Ok(Err(e)) => Err(PublishError::from_redis(e, timeout)),
                    Err(_) => Err(PublishError::Timeout(timeout)),
                }
            }
        }
    }

    /// Whether this publisher leads to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.connections, Connections::Cluster { .. })
    }

    /// The key of `user`'s history stream for this publisher's topology:
    /// `history:user_<id>`, or `history:{user_<id>}` on a Redis Cluster.
    pub fn history_key(&self, user: UserId) -> String {
        if self.is_cluster() {
            user.cluster_history_key()
        } else {
            user.history_key()
        }
    }

    /// A client for the master as of now, for a connection of your own (a gateway subscribes
    /// on one). With Sentinel this asks the sentinels; call it again after a failover.
    /// `None` for a publisher built [`from_pool`](Publisher::from_pool).
    pub async fn master_client(&self) -> Result<Option<redis::Client>, PublishError> {
        match &self.connections {
            Connections::Single { client, .. } => Ok(client.as_deref().cloned()),
            Connections::Sentinel(pool) => pool
                .manager()
                .master()
                .await
                .map(Some)
                .map_err(|e| PublishError::from_redis(e, self.options.timeout)),
            Connections::Cluster { .. } => Ok(None),
        }
    }

    /// Drops `conn` and every idle pooled connection: after a READONLY reply (or replicas
    /// that no longer follow), those may all lead to a demoted master.
    fn forget(&self, conn: PooledConnection) {
        self.forget_connections();
        if let PooledConnection::Sentinel(conn) = conn {
            let _ = deadpool::managed::Object::take(conn);
        }
    }

    /// Drops the idle connections that may lead to a node that is no longer a master (with
    /// Sentinel), or the cluster connection (with a Cluster: the next call opens a new one,
    /// which reads the slot map again). Nothing for a single server. Calls in progress finish
    /// on what they hold.
    pub fn forget_connections(&self) {
        match &self.connections {
            Connections::Sentinel(pool) => {
                pool.retain(|_, _| false);
            }
            Connections::Cluster { conn, .. } => *lock(conn) = None,
            Connections::Single { .. } => {}
        }
    }

    fn follows_failover(&self) -> bool {
        matches!(
            self.connections,
            Connections::Sentinel(_) | Connections::Cluster { .. }
        )
    }

    /// Checks that Redis answers (for startup and health checks).
    pub async fn ping(&self) -> Result<(), PublishError> {
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        let _pong: (String,) = self.execute(|_| pipe.clone()).await?;
        Ok(())
    }

    /// Sends `notification` (a [`Notification`] or an [`Event`](crate::Event)) to every open
    /// browser tab of `user`.
    ///
    /// Sets `timestamp` to now when it is `None`. Returns how many gateway nodes received it
    /// (PUBLISH's reply): 0 means the user has no open connection anywhere, which is normal
    /// and not an error.
    pub async fn publish(
        &self,
        user: UserId,
        notification: impl Into<Notification>,
    ) -> Result<usize, PublishError> {
        let payload = self.serialise(notification.into())?;
        Ok(self.publish_checked(user, &payload).await?.receivers)
    }

    /// Like [`Publisher::publish`], and also returns the notification's history id.
    pub async fn publish_with_receipt(
        &self,
        user: UserId,
        notification: impl Into<Notification>,
    ) -> Result<Receipt, PublishError> {
        let payload = self.serialise(notification.into())?;
        self.publish_checked(user, &payload).await
    }

    /// Sends an already-serialised notification (for payloads built elsewhere, e.g. a queue).
    ///
    /// The bytes are checked the way gateways check them ([`wire::check_payload`]) and sent
    /// unchanged. Returns the number of gateway nodes that received it.
    pub async fn publish_payload(
        &self,
        user: UserId,
        payload: &[u8],
    ) -> Result<usize, PublishError> {
        check_unpublished(payload, self.options.max_payload_bytes)?;
        Ok(self.publish_checked(user, payload).await?.receivers)
    }

    /// Sends one notification to several users in a single round trip (pipelined PUBLISH).
    ///
    /// Duplicate ids are sent once. Returns the sum of receivers over all users. The whole
    /// batch shares one timeout, so split very large audiences into batches of a few thousand.
    pub async fn publish_many(
        &self,
        users: &[UserId],
        notification: impl Into<Notification>,
    ) -> Result<usize, PublishError> {
        // Validate even when there is nobody to send to, so bad input is never silent.
        let payload = self.serialise(notification.into())?;
        self.publish_to_users(users, &payload).await
    }

    /// Like [`Publisher::publish_many`] for an already-serialised notification (checked the
    /// way gateways check it, and sent unchanged but for its id).
    pub async fn publish_payload_many(
        &self,
        users: &[UserId],
        payload: &[u8],
    ) -> Result<usize, PublishError> {
        check_unpublished(payload, self.options.max_payload_bytes)?;
        self.publish_to_users(users, payload).await
    }

    /// One pipelined run of the script per distinct user, each with its own retry token.
    async fn publish_to_users(
        &self,
        users: &[UserId],
        payload: &[u8],
    ) -> Result<usize, PublishError> {
        let mut users = users.to_vec();
        users.sort_unstable();
        users.dedup();
        if users.is_empty() {
            return Ok(0);
        }
        let tokens: Vec<String> = users.iter().map(|_| once_token()).collect();
        let replies: Vec<(String, usize)> = self
            .execute(|retry| {
                let mut pipe = self.script_pipeline(users.len());
                for (user, token) in users.iter().zip(&tokens) {
                    pipe.invoke_script(&self.invocation(*user, payload, token, retry));
                }
                pipe
            })
            .await?;
        Ok(replies.iter().map(|(_, receivers)| receivers).sum())
    }

    /// Sends many notifications, each to its own user, in a single round trip (pipelined).
    ///
    /// For a process that has many notifications to send at once (a queue consumer, a batch
    /// job): one round trip per batch instead of one per notification, with the same history
    /// write and atomicity per notification as [`Publisher::publish`]. Every notification is
    /// validated before anything is sent, so one invalid notification fails the whole batch
    /// and nothing is sent. Returns one [`Receipt`] per notification, in order. The batch shares
    /// one timeout: keep batches to a few thousand notifications.
    pub async fn publish_batch<N: Into<Notification>>(
        &self,
        batch: impl IntoIterator<Item = (UserId, N)>,
    ) -> Result<Vec<Receipt>, PublishError> {
        let batch = batch
            .into_iter()
            .map(|(user, n)| Ok((user, self.serialise(n.into())?)))
            .collect::<Result<Vec<_>, PublishError>>()?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let tokens: Vec<String> = batch.iter().map(|_| once_token()).collect();
        let replies: Vec<(String, usize)> = self
            .execute(|retry| {
                let mut pipe = self.script_pipeline(batch.len());
                for ((user, payload), token) in batch.iter().zip(&tokens) {
                    pipe.invoke_script(&self.invocation(*user, payload, token, retry));
                }
                pipe
            })
            .await?;
        replies
            .into_iter()
            .map(|(id, receivers)| {
                Ok(Receipt {
                    id: parse_id(&id)?,
                    receivers,
                })
            })
            .collect()
    }

    /// Schedules `notification` for `user` at `at`, under the caller's `key` (e.g.
    /// `booking:1881:expiring`). A gateway node publishes it when it is due, exactly once,
    /// through the same history-and-publish path as [`Publisher::publish`], with `timestamp`
    /// set to `at`.
    ///
    /// Scheduling a key again replaces its item (a reschedule: new time, user or text);
    /// [`Publisher::cancel`] removes it. A time in the past is accepted and fires at once
    /// (within a gateway's poll interval); a time before 2001 (seconds given for
    /// milliseconds) or more than a year ahead is refused with
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput), as is an invalid key.
    /// Items live in Redis until they fire: gateways that are all down at the due time fire
    /// it when one is back, or drop it past their lateness limit (`schedule.max_lateness_ms`).
    pub async fn schedule(
        &self,
        user: UserId,
        notification: impl Into<Notification>,
        at: std::time::SystemTime,
        key: &str,
    ) -> Result<(), PublishError> {
        let key: ScheduleKey = key.parse()?;
        let at_ms = schedule::system_time_ms(at);
        schedule::check_due(at_ms, now_millis())?;
        let payload = self.serialise(notification.into().with_timestamp(at_ms))?;
        let value = schedule::item_value(user, &payload);
        let _: redis::Value = self
            .execute_in_slot(&PUBLISH_SCRIPT, |_| {
                let mut pipe = redis::pipe();
                // MULTI/EXEC: a firing script never sees the due time without the item.
                pipe.atomic()
                    .cmd("ZADD")
                    .arg(schedule::DUE_KEY)
                    .arg(at_ms)
                    .arg(key.as_str())
                    .ignore()
                    .cmd("HSET")
                    .arg(schedule::ITEMS_KEY)
                    .arg(key.as_str())
                    .arg(&value)
                    .ignore();
                pipe
            })
            .await?;
        Ok(())
    }

    /// Removes the item scheduled under `key`. Returns whether there was one (false when it
    /// already fired, was cancelled, or never existed).
    pub async fn cancel(&self, key: &str) -> Result<bool, PublishError> {
        let key: ScheduleKey = key.parse()?;
        let (removed, _): (u32, u32) = self
            .execute_in_slot(&PUBLISH_SCRIPT, |_| {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("ZREM")
                    .arg(schedule::DUE_KEY)
                    .arg(key.as_str())
                    .cmd("HDEL")
                    .arg(schedule::ITEMS_KEY)
                    .arg(key.as_str());
                pipe
            })
            .await?;
        Ok(removed > 0)
    }

    /// How many sockets each of `users` has open across all live gateway nodes, in the order
    /// given (at most [`schedule::MAX_PRESENCE_USERS`] ids). With `with_nodes`, also which
    /// nodes hold them. A node that died stops counting once its heartbeat TTL
    /// (`presence.ttl_ms`, 2 s by default) has passed.
    pub async fn presence(
        &self,
        users: &[UserId],
        with_nodes: bool,
    ) -> Result<Vec<Presence>, PublishError> {
        if users.len() > schedule::MAX_PRESENCE_USERS {
            return Err(PublishError::TooManyUsers {
                given: users.len(),
                max: schedule::MAX_PRESENCE_USERS,
            });
        }
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let replies: (Vec<redis::Value>,) = self
            .execute_with(&PRESENCE_SCRIPT, |_| {
                let mut invocation = PRESENCE_SCRIPT.prepare_invoke();
                invocation
                    .key(schedule::NODES_KEY)
                    .arg(schedule::NODE_COUNTS_PREFIX)
                    .arg(if with_nodes { "1" } else { "0" });
                for user in users {
                    invocation.arg(user.get());
                }
                let mut pipe = redis::pipe();
                pipe.invoke_script(&invocation);
                pipe
            })
            .await?;
        replies
            .0
            .into_iter()
            .map(|reply| match reply {
                redis::Value::Array(items) => parse_presence(&items),
                total => Some(Presence {
                    sockets: u64::from_redis_value_ref(&total).ok()?,
                    nodes: Vec::new(),
                }),
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| PublishError::MalformedPayload {
                reason: "Redis answered the presence query with an unexpected shape".into(),
            })
    }

    /// For gateway nodes: fires at most `limit` due items (see [`schedule::FIRE_SCRIPT`]),
    /// dropping those more than `max_lateness_ms` late (0: never dropped).
    ///
    /// On a Redis Cluster, where the schedule and users' history streams live in different
    /// slots, this claims the due items under a lease ([`schedule::CLAIM_SCRIPT`]), publishes
    /// each with its claim's token as a retry (so that a publish of the same claim by another
    /// gateway, after this one died, finds this one's entry and adds nothing), and then
    /// acknowledges the published ones. Items whose publish got no answer are returned in
    /// [`FireReport::pending`]: they are claimed again when their lease runs out.
    pub async fn fire_due(
        &self,
        limit: usize,
        max_lateness_ms: u64,
    ) -> Result<FireReport, PublishError> {
        if self.is_cluster() {
            return self.fire_due_claimed(limit, max_lateness_ms).await;
        }
        type Reply = (i64, i64, Vec<(String, i64)>, Vec<(String, i64)>);
        let ((now_ms, next, fired, dropped),): (Reply,) = self
            .execute_with(&FIRE_SCRIPT, |_| {
                let mut invocation = FIRE_SCRIPT.prepare_invoke();
                invocation
                    .key(schedule::DUE_KEY)
                    .key(schedule::ITEMS_KEY)
                    .arg(limit.max(1))
                    .arg(max_lateness_ms)
                    .arg(self.options.history_max_len)
                    .arg(self.options.history_max_age.as_millis() as u64);
                let mut pipe = redis::pipe();
                pipe.invoke_script(&invocation);
                pipe
            })
            .await?;
        Ok(FireReport {
            now_ms,
            next_due_ms: (next >= 0).then_some(next),
            fired,
            dropped,
            pending: Vec::new(),
        })
    }

    /// How long a gateway has to publish and acknowledge the items it claimed on a Redis
    /// Cluster before another may claim them again: twice the call timeout plus a second
    /// (5 s with the default 2 s timeout), so a live claimer is normally done long before.
    pub fn claim_lease(&self) -> Duration {
        self.options.timeout * 2 + Duration::from_secs(1)
    }

    /// [`Publisher::fire_due`] on a Redis Cluster: claim, publish, acknowledge.
    async fn fire_due_claimed(
        &self,
        limit: usize,
        max_lateness_ms: u64,
    ) -> Result<FireReport, PublishError> {
        /// token, key, due ms, user id, notification JSON
        type Claim = (String, String, i64, String, Vec<u8>);
        type Reply = (i64, i64, Vec<Claim>, Vec<(String, i64)>);
        let lease = self.claim_lease().as_millis() as u64;
        // Claims and acknowledgements need no replica's confirmation (min_replica_acks): one
        // lost in a failover of the {gw} master makes the item fire again under the same
        // token, which publishes nothing new.
        let unconfirmed = Publisher {
            connections: self.connections.clone(),
            options: PublisherOptions {
                min_replica_acks: 0,
                ..self.options
            },
        };
        let ((now_ms, next, claims, dropped),): (Reply,) = unconfirmed
            .execute_with(&CLAIM_SCRIPT, |_| {
                let mut invocation = CLAIM_SCRIPT.prepare_invoke();
                invocation
                    .key(schedule::DUE_KEY)
                    .key(schedule::ITEMS_KEY)
                    .key(schedule::CLAIMS_KEY)
                    .key(schedule::LEASES_KEY)
                    .arg(limit.max(1))
                    .arg(max_lateness_ms)
                    .arg(lease);
                let mut pipe = redis::pipe();
                pipe.invoke_script(&invocation);
                pipe
            })
            .await?;
        let mut report = FireReport {
            now_ms,
            next_due_ms: (next >= 0).then_some(next),
            dropped,
            ..FireReport::default()
        };
        if claims.is_empty() {
            return Ok(report);
        }
        // A record the script wrote always parses; anything else is dropped (and acknowledged).
        let mut publishable = Vec::with_capacity(claims.len());
        let mut done = Vec::with_capacity(claims.len());
        for (token, key, due, user, payload) in claims {
            match user.parse::<UserId>() {
                Ok(user) => publishable.push((token, key, due, user, payload)),
                Err(_) => {
                    report.dropped.push((key, now_ms - due));
                    done.push(token);
                }
            }
        }
        let mut pipe = redis::pipe();
        for (token, _, _, user, payload) in &publishable {
            // Always a retry: whoever published this claim first, a second publish adds nothing.
            pipe.invoke_script(&self.invocation(*user, payload, token, true));
        }
        match self.publish_each(&pipe).await {
            Ok(replies) => {
                for ((token, key, due, _, _), reply) in publishable.into_iter().zip(replies) {
                    match reply {
                        // Lateness: the entry's id is the user's shard's clock when stored.
                        Ok(id) => {
                            report.fired.push((key, id.ms as i64 - due));
                            done.push(token);
                        }
                        // The script refused the notification (not a JSON object): for good.
                        Err(e) if e.to_string().contains("must be a JSON object") => {
                            report.dropped.push((key, now_ms - due));
                            done.push(token);
                        }
                        Err(_) => report.pending.push((key, now_ms - due)),
                    }
                }
            }
            Err(_) => report.pending.extend(
                publishable
                    .into_iter()
                    .map(|(_, key, due, _, _)| (key, now_ms - due)),
            ),
        }
        // Unacknowledged claims (the acknowledgement failed) come back after their lease and
        // are recognised by their token: nothing is published twice.
        if !done.is_empty() && unconfirmed.acknowledge(&done).await.is_err() {
            self.forget_connections();
        }
        Ok(report)
    }

    /// Runs each publish invocation of `pipe` on its own (they go to their users' slots) and
    /// returns each one's history id or error, in order, all within the call timeout; an
    /// error for all of them when the cluster cannot be reached or answers nothing in time.
    async fn publish_each(
        &self,
        pipe: &Pipeline,
    ) -> Result<Vec<Result<StreamId, PublishError>>, PublishError> {
        let timeout = self.options.timeout;
        let PooledConnection::Cluster(cluster) = self.connection().await? else {
            unreachable!("only called on a Redis Cluster")
        };
        // Each publish bounded on its own: one user's shard that stalls (a master that died)
        // leaves the others' answers, and only its own item waits for the lease.
        let replies = script::query_each_settled(&cluster, pipe, &PUBLISH_SCRIPT, timeout).await;
        let mut failed = false;
        let results: Vec<_> = replies
            .into_iter()
            .map(|reply| {
                let reply = reply.map_err(|e| {
                    failed |= e.is_io_error() || e.is_connection_dropped() || e.is_timeout();
                    PublishError::from_redis(e, timeout)
                })?;
                let (id, _receivers): (String, usize) = FromRedisValue::from_redis_value(reply)
                    .map_err(|e| PublishError::from_redis(e.into(), timeout))?;
                parse_id(&id)
            })
            .collect();
        if failed {
            // Perhaps a master that died: the next call reads the slot map again.
            self.forget_connections();
        }
        let wanted = self.options.min_replica_acks;
        if wanted > 0 {
            // Replicas of each shard written to must hold the entries before they count as
            // published; otherwise the claims stay and are published again after their lease.
            let mut written = redis::pipe();
            for (cmd, result) in pipe.cmd_iter().zip(&results) {
                if result.is_ok() {
                    written.add_command(cmd.clone());
                }
            }
            let mut wait = redis::cmd("WAIT");
            wait.arg(wanted).arg(timeout.as_millis().max(1) as u64);
            let acked =
                tokio::time::timeout(timeout, wait_on_shards(&cluster, &written, &wait)).await;
            let acked = match acked {
                Ok(Ok(acked)) => acked,
                _ => 0,
            };
            if acked < wanted {
                return Err(PublishError::unavailable(NotReplicated { acked, wanted }));
            }
        }
        Ok(results)
    }

    /// Step 3 of firing on a Redis Cluster: removes the claims of `tokens` (published, or
    /// refused for good). Removing one that another gateway claimed again meanwhile is
    /// harmless: it was published.
    async fn acknowledge(&self, tokens: &[String]) -> Result<(), PublishError> {
        let _: redis::Value = self
            .execute_in_slot(&PUBLISH_SCRIPT, |_| {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("ZREM")
                    .arg(schedule::LEASES_KEY)
                    .arg(tokens)
                    .ignore()
                    .cmd("HDEL")
                    .arg(schedule::CLAIMS_KEY)
                    .arg(tokens)
                    .ignore();
                pipe
            })
            .await?;
        Ok(())
    }

    /// For gateway nodes: one presence heartbeat of node `node` (see
    /// [`schedule::PRESENCE_BEAT_SCRIPT`]). `full` replaces the node's counts with `counts`;
    /// otherwise `counts` are changes. Returns false when the node's counts had expired and
    /// nothing was applied: send the full counts then.
    pub async fn presence_beat(
        &self,
        node: &str,
        ttl: Duration,
        full: bool,
        had_sockets: bool,
        counts: &[(UserId, i64)],
    ) -> Result<bool, PublishError> {
        let key = schedule::node_counts_key(node);
        let (applied,): (bool,) = self
            .execute_with(&PRESENCE_BEAT_SCRIPT, |_| {
                let mut invocation = PRESENCE_BEAT_SCRIPT.prepare_invoke();
                invocation
                    .key(&key)
                    .key(schedule::NODES_KEY)
                    .arg(node)
                    .arg(ttl.as_millis().max(1) as u64)
                    .arg(if full { "full" } else { "delta" })
                    .arg(if had_sockets { "1" } else { "0" });
                for (user, count) in counts {
                    invocation.arg(user.get()).arg(*count);
                }
                let mut pipe = redis::pipe();
                pipe.invoke_script(&invocation);
                pipe
            })
            .await?;
        Ok(applied)
    }

    /// For gateway nodes that stop cleanly: forget node `node`'s counts at once.
    pub async fn presence_leave(&self, node: &str) -> Result<(), PublishError> {
        let key = schedule::node_counts_key(node);
        let _: redis::Value = self
            .execute_in_slot(&PUBLISH_SCRIPT, |_| {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("ZREM")
                    .arg(schedule::NODES_KEY)
                    .arg(node)
                    .ignore()
                    .cmd("DEL")
                    .arg(&key)
                    .ignore();
                pipe
            })
            .await?;
        Ok(())
    }

    fn serialise(&self, mut notification: Notification) -> Result<Vec<u8>, PublishError> {
        if notification.timestamp.is_none() {
            notification.timestamp = Some(now_millis());
        }
        notification.to_payload(self.options.max_payload_bytes)
    }

    async fn publish_checked(&self, user: UserId, payload: &[u8]) -> Result<Receipt, PublishError> {
        let token = once_token();
        let ((id, receivers),): ((String, usize),) = self
            .execute(|retry| {
                let mut pipe = redis::pipe();
                pipe.invoke_script(&self.invocation(user, payload, &token, retry));
                pipe
            })
            .await?;
        Ok(Receipt {
            id: parse_id(&id)?,
            receivers,
        })
    }

    /// One run of the publish script. `retry` tells the script that an earlier call with
    /// the same `token` may have run already (its answer was lost with its connection).
    fn invocation<'a>(
        &self,
        user: UserId,
        payload: &[u8],
        token: &str,
        retry: bool,
    ) -> redis::ScriptInvocation<'a> {
        let mut invocation = PUBLISH_SCRIPT.prepare_invoke();
        invocation
            .key(self.history_key(user))
            .arg(user.channel())
            .arg(payload)
            .arg(self.options.history_max_len)
            .arg(self.options.history_max_age.as_millis() as u64)
            .arg(token)
            .arg(if retry { "1" } else { "0" });
        if self.is_cluster() {
            invocation.arg("sharded");
        }
        invocation
    }

    /// Runs the pipeline `build(retry)` makes on a pooled connection, retrying connection
    /// errors (with `retry` true), all within one deadline.
    async fn execute<T: FromRedisValue>(
        &self,
        build: impl Fn(bool) -> Pipeline,
    ) -> Result<T, PublishError> {
        self.execute_with(&PUBLISH_SCRIPT, build).await
    }

    /// [`Publisher::execute`] for pipelines that invoke `script` (reloaded on NOSCRIPT).
    async fn execute_with<T: FromRedisValue>(
        &self,
        script: &Script,
        build: impl Fn(bool) -> Pipeline,
    ) -> Result<T, PublishError> {
        self.execute_in(Spread::PerCommand, script, build).await
    }

    /// [`Publisher::execute_with`] for a pipeline whose keys all share one slot (the `{gw}`
    /// keys of scheduling and presence): on a Redis Cluster it is sent whole to that slot's
    /// master, so a MULTI/EXEC transaction stays one.
    async fn execute_in_slot<T: FromRedisValue>(
        &self,
        script: &Script,
        build: impl Fn(bool) -> Pipeline,
    ) -> Result<T, PublishError> {
        self.execute_in(Spread::OneSlot, script, build).await
    }

    async fn execute_in<T: FromRedisValue>(
        &self,
        spread: Spread,
        script: &Script,
        build: impl Fn(bool) -> Pipeline,
    ) -> Result<T, PublishError> {
        let timeout = self.options.timeout;
        let deadline = Instant::now() + timeout;
        let mut retries_left = self.options.retries;
        let mut backoff = RETRY_BACKOFF;
        let mut pipe = build(false);
        loop {
            let result =
                tokio::time::timeout_at(deadline, self.attempt(spread, script, &pipe, deadline))
                    .await
                    .unwrap_or(Err(PublishError::Timeout(timeout)));
            match result {
                // With Sentinel, retrying until the deadline rides out a failover.
                Err(err)
                    if err.is_connection_error()
                        && (retries_left > 0 || self.follows_failover()) =>
                {
                    // No point sleeping past the deadline: report the real cause instead.
                    if Instant::now() + backoff >= deadline {
                        return Err(err);
                    }
                    retries_left = retries_left.saturating_sub(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
                    pipe = build(true);
                }
                other => return other,
            }
        }
    }

    async fn attempt<T: FromRedisValue>(
        &self,
        spread: Spread,
        script: &Script,
        pipe: &Pipeline,
        deadline: Instant,
    ) -> Result<T, PublishError> {
        let timeout = self.options.timeout;
        let mut conn = self.connection().await?;
        // Safe to send again after NOSCRIPT: the pipeline is one invocation, or several
        // behind a SCRIPT LOAD (see script_pipeline), so none of them ran.
        let result = match &conn {
            PooledConnection::Cluster(cluster) => {
                // redis-rs 1.8's cluster connection was seen waiting out the whole timeout on
                // the slots of a SIGKILLed master even after its replica took over: bound one
                // attempt, then open a new connection (it reads the slot map again) and retry
                // with the one-time token.
                let left = deadline.saturating_duration_since(Instant::now());
                let cap = (timeout / 4).max(CLUSTER_ATTEMPT).min(left);
                let query = async {
                    match spread {
                        Spread::PerCommand => script::query_each(cluster, pipe, script).await,
                        // Routed whole to the master of its first key's slot.
                        Spread::OneSlot => {
                            script::query_loading(&mut cluster.clone(), pipe, script).await
                        }
                    }
                };
                match tokio::time::timeout(cap, query).await {
                    Ok(Ok(value)) => Ok(value),
                    Ok(Err(e)) => {
                        self.forget_connections();
                        Err(e)
                    }
                    Err(_) => {
                        self.forget_connections();
                        return Err(PublishError::unavailable(ClusterStalled(cap)));
                    }
                }
            }
            _ => script::query_loading(&mut conn, pipe, script).await,
        };
        if matches!(&result, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly))
        {
            // Nothing ran: a replica refuses the whole script. The master moved; find it.
            self.forget(conn);
            return Err(PublishError::unavailable(
                result.err().expect("checked above"),
            ));
        }
        let value = result.map_err(|e| PublishError::from_redis(e, timeout))?;
        let wanted = self.options.min_replica_acks;
        if wanted > 0 {
            // WAIT counts the replicas that hold everything this connection wrote so far.
            let left = deadline.saturating_duration_since(Instant::now());
            let mut wait = redis::cmd("WAIT");
            wait.arg(wanted).arg(left.as_millis().max(1) as u64);
            let acked: u32 = match &conn {
                PooledConnection::Cluster(cluster) => wait_on_shards(cluster, pipe, &wait).await,
                _ => wait.query_async(&mut conn).await,
            }
            .map_err(|e| PublishError::from_redis(e, timeout))?;
            if acked < wanted {
                // Perhaps a master whose replicas follow another one now: ask again.
                self.forget(conn);
                return Err(PublishError::unavailable(NotReplicated { acked, wanted }));
            }
        }
        Ok(value)
    }
}

/// WAIT on the connection to each master that ran a command of `pipe` (each is a script
/// invocation whose first key gives the slot); the fewest replicas any of them reports.
async fn wait_on_shards(
    cluster: &redis::cluster_async::ClusterConnection,
    pipe: &Pipeline,
    wait: &redis::Cmd,
) -> redis::RedisResult<u32> {
    use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
    let routes: std::collections::HashSet<Route> = pipe
        .cmd_iter()
        .filter_map(|cmd| {
            let mut args = cmd.args_iter();
            let first_key = match args.next()? {
                // EVALSHA sha numkeys key ...
                redis::Arg::Simple(name) if name.eq_ignore_ascii_case(b"EVALSHA") => args.nth(2)?,
                // ZADD key ..., HSET key ... (the {gw} transactions of scheduling)
                _ => args.next()?,
            };
            match first_key {
                redis::Arg::Simple(key) => Some(Route::with_key(key, SlotAddr::Master)),
                _ => None,
            }
        })
        .collect();
    let acked = futures_util::future::try_join_all(routes.into_iter().map(|route| {
        let mut cluster = cluster.clone();
        let wait = wait.clone();
        async move {
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
            let value = cluster.route_command(wait, routing).await?;
            Ok::<u32, redis::RedisError>(redis::FromRedisValue::from_redis_value(value)?)
        }
    }))
    .await?;
    Ok(acked.into_iter().min().unwrap_or(0))
}

/// How the commands of a pipeline travel on a Redis Cluster (elsewhere a pipeline is one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spread {
    /// Each command on its own, concurrently, routed by its own key (one per user).
    PerCommand,
    /// The whole pipeline to the master of one slot (its keys share a hash tag).
    OneSlot,
}

/// Shortest bound of one attempt on a Redis Cluster (a quarter of the timeout when longer).
const CLUSTER_ATTEMPT: Duration = Duration::from_secs(1);

/// An attempt on a Redis Cluster got no answer in time; it is retried on a new connection.
#[derive(Debug, thiserror::Error)]
#[error("no answer from the cluster within {0:?}")]
struct ClusterStalled(Duration);

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fewer replicas than [`PublisherOptions::min_replica_acks`] confirmed a write in time.
#[derive(Debug, thiserror::Error)]
#[error("{acked} of the {wanted} replicas required confirmed the write in time")]
struct NotReplicated {
    acked: u32,
    wanted: u32,
}

/// redis-rs would otherwise use its own 1 s connect / 500 ms reply defaults.
fn connection_config(options: &PublisherOptions) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(options.timeout))
        .set_response_timeout(Some(options.timeout))
}

/// A pipeline for `invocations` runs of the publish script. Several are preceded by a SCRIPT
/// LOAD on the same connection: otherwise, after a Redis restart, the head of a batch can meet
/// NOSCRIPT while another connection loads the script and its tail then runs, and sending the
/// batch again would store and deliver that tail twice (gw-bench saw it on a fresh Redis).
/// On a Redis Cluster the commands go one by one (see `script::query_each`), each reloading
/// the script after its own NOSCRIPT: no SCRIPT LOAD in front.
impl Publisher {
    fn script_pipeline(&self, invocations: usize) -> Pipeline {
        script_pipeline(invocations, self.is_cluster())
    }
}

fn script_pipeline(invocations: usize, cluster: bool) -> Pipeline {
    let mut pipe = redis::pipe();
    if invocations > 1 && !cluster {
        pipe.cmd("SCRIPT")
            .arg("LOAD")
            .arg(wire::PUBLISH_SCRIPT)
            .ignore();
    }
    pipe
}

/// One user's reply to the presence script with nodes: `[total, node, count, ...]`.
fn parse_presence(reply: &[redis::Value]) -> Option<Presence> {
    let (total, rest) = reply.split_first()?;
    let number = |v: &redis::Value| u64::from_redis_value_ref(v).ok();
    let mut presence = Presence {
        sockets: number(total)?,
        nodes: Vec::new(),
    };
    for pair in rest.chunks(2) {
        let [node, count] = pair else { return None };
        presence
            .nodes
            .push((String::from_redis_value_ref(node).ok()?, number(count)?));
    }
    Some(presence)
}

/// Checks a payload built elsewhere as gateways will; it may not carry its own id.
fn check_unpublished(payload: &[u8], max_bytes: usize) -> Result<(), PublishError> {
    if wire::check_payload(payload, max_bytes)?.id.is_some() {
        // The script adds the id; a second one would make the JSON ambiguous.
        return Err(PublishError::MalformedPayload {
            reason: "\"id\" is set by the publish script, leave it out".to_owned(),
        });
    }
    Ok(())
}

fn parse_id(id: &str) -> Result<StreamId, PublishError> {
    id.parse().map_err(|_| PublishError::MalformedPayload {
        reason: format!("Redis answered an unexpected history id {id:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::wire::Level;

    fn user(id: u64) -> UserId {
        UserId::new(id).expect("valid test id")
    }

    #[test]
    fn defaults_are_documented_values() {
        let o = PublisherOptions::default();
        assert_eq!(o.pool_size, 8);
        assert_eq!(o.timeout, Duration::from_secs(2));
        assert_eq!(o.max_payload_bytes, 64 * 1024);
        assert_eq!(o.retries, 2);
    }

    #[test]
    fn bad_urls_and_options_are_invalid_input() {
        for url in [
            "",
            "not a url",
            "http://localhost",
            "redis://",
            "redis://h/notadb",
        ] {
            let err = Publisher::connect(url).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{url:?}: {err}");
        }
        assert!(Publisher::connect("rediss://:pw@redis.example:6380").is_ok());
        let options = PublisherOptions::default();
        for (url, ca) in [
            ("redis://localhost", &b"-----BEGIN CERTIFICATE-----"[..]),
            ("rediss://localhost", b"not pem"),
        ] {
            let err = Publisher::with_tls_ca(url, ca, options).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{url:?}: {err}");
        }
        let zero_pool = PublisherOptions {
            pool_size: 0,
            ..Default::default()
        };
        assert_eq!(
            Publisher::with_options("redis://localhost", zero_pool)
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn debug_output_hides_the_password() {
        let p = Publisher::connect("redis://:hunter2@localhost:6379").unwrap();
        let text = format!("{p:?}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    // Input is validated before any connection is attempted, so these need no Redis.
    #[tokio::test]
    async fn invalid_input_fails_before_touching_redis() {
        let p = Publisher::with_options(
            "redis://127.0.0.1:1",
            PublisherOptions {
                max_payload_bytes: 100,
                ..Default::default()
            },
        )
        .unwrap();

        let empty = p
            .publish(user(1), Notification::new(Level::Info, " "))
            .await;
        assert_eq!(empty.unwrap_err().kind(), ErrorKind::InvalidInput);

        let big = Notification::new(Level::Info, "x".repeat(200));
        assert_eq!(
            p.publish(user(1), big.clone()).await.unwrap_err().kind(),
            ErrorKind::TooLarge
        );
        assert_eq!(
            p.publish_many(&[], big).await.unwrap_err().kind(),
            ErrorKind::TooLarge
        );

        for bad in [
            &b"garbage"[..],
            br#"{"type":"loud","message":"x"}"#,
            b"\xff\xfe",
            // The script adds the id: a payload may not bring its own.
            br#"{"id":"1-0","type":"info","message":"x"}"#,
        ] {
            let err = p.publish_payload(user(1), bad).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
        }
        let err = p.publish_payload(user(1), &[b' '; 101]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge);

        let nobody = p
            .publish_many(&[], Notification::new(Level::Info, "hi"))
            .await;
        assert_eq!(nobody.unwrap(), 0);

        // One bad notification fails the whole batch before anything is sent (this Redis
        // address has nobody listening, so reaching it would be a RedisUnavailable error).
        let batch = [
            (user(1), Notification::new(Level::Info, "fine")),
            (user(2), Notification::new(Level::Info, "")),
        ];
        let err = p.publish_batch(batch).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}
