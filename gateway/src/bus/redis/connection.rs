//! How the bus gets its connections, kept apart from what it does on them.
//!
//! Today there is one topology: a single Redis (or a proxy in front of one) at `redis.url`.
//! The subscriber asks [`Connector::pubsub`] for each new link and the publisher's pool for
//! everything else. A Sentinel topology would find the master by asking the sentinels here;
//! a Cluster one would hand out one subscriber link per shard (SSUBSCRIBE). The subscriber's
//! sequence on a link (cursors, SUBSCRIBE, catch-up, confirm) does not change with either.

use publisher::{Publisher, PublisherOptions};

use crate::bus::BusError;
use crate::config::RedisSettings;

/// Opens subscriber links to the configured Redis.
pub(super) struct Connector {
    client: redis::Client,
}

impl Connector {
    /// A new pub/sub link.
    pub(super) async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        self.client.get_async_pubsub().await
    }
}

/// The subscriber's connector and the pooled publisher (history reads, publishes, canaries)
/// for `url`, both with the CA of `redis.ca_file` when it is set.
pub(super) fn open(
    settings: &RedisSettings,
    url: &str,
    options: PublisherOptions,
) -> Result<(Connector, Publisher), BusError> {
    let unusable = |e: &dyn std::fmt::Display| BusError::Unavailable(e.to_string());
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
    Ok((Connector { client }, publisher))
}
