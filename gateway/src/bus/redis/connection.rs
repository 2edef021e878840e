//! How the bus gets its connections, kept apart from what it does on them.
//!
//! Two topologies: a single Redis (or a proxy in front of one) at `redis.url`, or the master
//! of a Sentinel-watched set (`redis.sentinels`), which moves to a replica on failover. The
//! subscriber asks [`Connector::pubsub`] for each new link and the publisher's pool for
//! everything else; with Sentinel both ask the sentinels where the master is. The
//! subscriber's sequence on a link (cursors, SUBSCRIBE, catch-up, confirm) does not change.

use publisher::{Publisher, PublisherOptions};

use crate::bus::BusError;
use crate::config::{RedisSettings, RedisTopology};

/// Opens subscriber links to the configured Redis.
pub(super) enum Connector {
    /// One server at a fixed address.
    Fixed(redis::Client),
    /// Wherever the sentinels say the master is, asked again for every link.
    Sentinel(Publisher),
}

impl Connector {
    /// A new pub/sub link, and the address it leads to.
    pub(super) async fn pubsub(
        &self,
    ) -> redis::RedisResult<(redis::aio::PubSub, redis::ConnectionAddr)> {
        let client = self.client().await?;
        let pubsub = client.get_async_pubsub().await?;
        Ok((pubsub, client.get_connection_info().addr().clone()))
    }

    async fn client(&self) -> redis::RedisResult<redis::Client> {
        match self {
            Connector::Fixed(client) => Ok(client.clone()),
            Connector::Sentinel(publisher) => match publisher.master_client().await {
                Ok(Some(client)) => Ok(client),
                Ok(None) => Err((redis::ErrorKind::Io, "no master known").into()),
                Err(e) => Err((redis::ErrorKind::Io, "no master", e.to_string()).into()),
            },
        }
    }

    /// Whether the sentinels now name another master than `linked`: a failover the link did
    /// not notice as a broken connection (a switchover demotes the old master without
    /// killing it, and a replica keeps relaying what its master publishes).
    pub(super) async fn moved_from(&self, linked: &redis::ConnectionAddr) -> bool {
        match self {
            Connector::Fixed(_) => false,
            Connector::Sentinel(_) => self
                .client()
                .await
                .is_ok_and(|now| now.get_connection_info().addr() != linked),
        }
    }
}

/// The subscriber's connector and the pooled publisher (history reads, publishes, canaries)
/// for `topology`, with the CA of `redis.ca_file` when it is set.
pub(super) fn open(
    settings: &RedisSettings,
    topology: &RedisTopology,
    options: PublisherOptions,
) -> Result<(Connector, Publisher), BusError> {
    let unusable = |e: &dyn std::fmt::Display| BusError::Unavailable(e.to_string());
    let url = match topology {
        RedisTopology::Sentinel(sentinel) => {
            let publisher =
                Publisher::with_sentinel(sentinel.clone(), options).map_err(|e| unusable(&e))?;
            return Ok((Connector::Sentinel(publisher.clone()), publisher));
        }
        RedisTopology::Single(url) => url.as_str(),
        RedisTopology::Cluster(_) => {
            return Err(BusError::Unavailable(
                "a Redis Cluster has no single subscriber link (see bus::redis::shards)".into(),
            ))
        }
    };
    let (client, publisher) = match settings.ca_file.trim() {
        "" => (
            redis::Client::open(url).map_err(|e| unusable(&e))?,
            Publisher::with_options(url, options).map_err(|e| unusable(&e))?,
        ),
        path => {
            let ca_pem = std::fs::read(path).map_err(|e| {
                unusable(&format!("configuration key `redis.ca_file`: {path:?}: {e}"))
            })?;
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca_pem.clone()),
            };
            (
                redis::Client::build_with_tls(url, certificates).map_err(|e| unusable(&e))?,
                Publisher::with_tls_ca(url, &ca_pem, options).map_err(|e| unusable(&e))?,
            )
        }
    };
    Ok((Connector::Fixed(client), publisher))
}
