//! Layered configuration: compiled-in defaults < TOML file < `GW__SECTION__KEY` environment.
//!
//! `config.default.toml` beside this crate is both the compiled-in default and the commented
//! reference of every key. Start-up refuses an invalid value with a message naming the key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::net::{IpNet, OriginPattern};

/// The compiled-in defaults, also shipped as the documented example file.
pub const DEFAULT_TOML: &str = include_str!("../config.default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub redis: RedisSettings,
    pub ws: WsSettings,
    pub sse: SseSettings,
    pub history: HistorySettings,
    pub publish: PublishSettings,
    pub schedule: ScheduleSettings,
    pub presence: PresenceSettings,
    pub auth: AuthSettings,
    pub origin: OriginSettings,
    pub log: LogSettings,
    pub demo: DemoSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub bind: SocketAddr,
    pub internal_bind: SocketAddr,
    pub workers: usize,
    pub drain_timeout_ms: u64,
    pub max_connections: usize,
    pub backlog: u32,
    pub max_sockets_per_user: usize,
    pub handshake_timeout_ms: u64,
    pub max_url_bytes: usize,
    pub max_header_bytes: usize,
    pub trusted_proxies: Vec<String>,
    /// `trusted_proxies` parsed, filled when the settings are loaded.
    #[serde(skip)]
    pub proxy_ranges: Vec<IpNet>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: String,
    pub subscribe_timeout_ms: u64,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    pub ping_interval_ms: u64,
    pub canary_interval_ms: u64,
    pub canary_timeout_ms: u64,
    pub max_payload_bytes: usize,
    pub publish_pool_size: usize,
    pub ca_file: String,
    pub sentinels: String,
    pub sentinel_master: String,
    pub sentinel_password: String,
    pub password: String,
    pub min_replica_acks: u32,
    pub cluster_nodes: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsSettings {
    pub ping_interval_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_frame_bytes: usize,
    pub outbound_queue: usize,
    pub write_timeout_ms: u64,
    pub unsubscribe_linger_ms: u64,
}

/// The Server-Sent Events endpoint; its queue, write timeout and linger are `[ws]`'s.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseSettings {
    pub heartbeat_interval_ms: u64,
    pub retry_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySettings {
    pub max_len: usize,
    pub max_age_ms: u64,
    pub replay_limit: usize,
    pub read_timeout_ms: u64,
    pub page_limit: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishSettings {
    pub api_keys: Vec<String>,
}

/// `[schedule]`: scheduled notifications.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    pub poll_interval_ms: u64,
    pub batch: usize,
    pub max_lateness_ms: u64,
}

/// `[presence]`: socket counts across the fleet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceSettings {
    pub heartbeat_ms: u64,
    pub ttl_ms: u64,
}

/// Who may open a user's socket; see `[auth]` in `config.default.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthMode {
    /// Not configured: `None` in single-node mode, refused in scaled-out mode.
    #[serde(rename = "")]
    Unset,
    #[serde(rename = "none")]
    None,
    #[serde(rename = "jwt")]
    Jwt,
}

/// The one JWT algorithm accepted; pinned here, never taken from a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

/// A configuration value that must never reach a log: `Debug` prints `***`.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
    pub algorithm: JwtAlgorithm,
    pub hs256_secret: Secret,
    pub hs256_secret_file: String,
    pub public_key_file: String,
    pub user_claim: String,
    pub token_type: String,
    pub audience: String,
    pub issuer: String,
    pub expiry_grace_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginSettings {
    pub allowed: Vec<String>,
    pub allow_missing: bool,
    /// `allowed` parsed, filled when the settings are loaded.
    #[serde(skip)]
    pub patterns: Vec<OriginPattern>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

/// `demo.enabled`: the demo page at `/` (see `crate::http::demo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoSwitch {
    /// On in single-node mode, off when scaled out.
    Auto,
    On,
    Off,
}

impl<'de> Deserialize<'de> for DemoSwitch {
    /// `"auto"`, or a boolean (`true`/`false`, as TOML booleans or as the environment's text).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bool(true) => Ok(DemoSwitch::On),
            Raw::Bool(false) => Ok(DemoSwitch::Off),
            Raw::Text(text) => match text.trim().to_ascii_lowercase().as_str() {
                "auto" => Ok(DemoSwitch::Auto),
                "true" => Ok(DemoSwitch::On),
                "false" => Ok(DemoSwitch::Off),
                _ => Err(serde::de::Error::custom(format!(
                    "demo.enabled must be \"auto\", true or false, not {text:?}"
                ))),
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoSettings {
    pub enabled: DemoSwitch,
}

/// A configuration that cannot be used; the message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: &'static str, problem: String },
}

const ENV_PREFIX: &str = "GW";

/// Longest history age accepted: a year.
const MAX_HISTORY_AGE_MS: u64 = 365 * 24 * 3600 * 1000;

impl Settings {
    /// Loads defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, config::Environment::with_prefix(ENV_PREFIX))
    }

    /// The compiled-in defaults alone.
    pub fn defaults() -> Self {
        Self::load_from(
            None,
            config::Environment::with_prefix(ENV_PREFIX).source(Some(Default::default())),
        )
        .expect("compiled-in defaults are valid")
    }

    fn load_from(file: Option<&Path>, env: config::Environment) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let env = env
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("publish.api_keys")
            .with_list_parse_key("origin.allowed")
            .with_list_parse_key("server.trusted_proxies");
        let mut settings: Settings = builder.add_source(env).build()?.try_deserialize()?;
        settings.validate()?;
        settings.parse_lists()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let url = self.redis.url.trim();
        if !(url.is_empty() || url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(invalid(
                "redis.url",
                "must start with redis:// or rediss://, or be empty for single-node mode",
            ));
        }
        self.validate_cluster()
            .and_then(|()| self.validate_sentinel())
            .map_err(|(key, problem)| invalid(key, problem))?;
        if self.ws.ping_interval_ms == 0 {
            return Err(invalid("ws.ping_interval_ms", "must be greater than 0"));
        }
        if self.ws.idle_timeout_ms <= self.ws.ping_interval_ms {
            return Err(invalid(
                "ws.idle_timeout_ms",
                format!(
                    "must be greater than ws.ping_interval_ms ({})",
                    self.ws.ping_interval_ms
                ),
            ));
        }
        if self.ws.outbound_queue == 0 {
            return Err(invalid("ws.outbound_queue", "must be at least 1"));
        }
        if self.ws.max_frame_bytes < 125 {
            return Err(invalid(
                "ws.max_frame_bytes",
                "must be at least 125 (a control frame)",
            ));
        }
        if self.ws.write_timeout_ms == 0 {
            return Err(invalid("ws.write_timeout_ms", "must be greater than 0"));
        }
        if self.sse.heartbeat_interval_ms == 0 {
            return Err(invalid(
                "sse.heartbeat_interval_ms",
                "must be greater than 0",
            ));
        }
        if self.sse.retry_ms == 0 {
            return Err(invalid("sse.retry_ms", "must be greater than 0"));
        }
        if self.redis.reconnect_min_ms == 0
            || self.redis.reconnect_min_ms > self.redis.reconnect_max_ms
        {
            return Err(invalid(
                "redis.reconnect_min_ms",
                "must be greater than 0 and at most redis.reconnect_max_ms",
            ));
        }
        if self.redis.ping_interval_ms == 0 {
            return Err(invalid("redis.ping_interval_ms", "must be greater than 0"));
        }
        if self.redis.canary_interval_ms == 0 {
            return Err(invalid(
                "redis.canary_interval_ms",
                "must be greater than 0",
            ));
        }
        if self.redis.canary_timeout_ms == 0 {
            return Err(invalid("redis.canary_timeout_ms", "must be greater than 0"));
        }
        if self.redis.max_payload_bytes == 0 {
            return Err(invalid("redis.max_payload_bytes", "must be greater than 0"));
        }
        if self.redis.publish_pool_size == 0 {
            return Err(invalid("redis.publish_pool_size", "must be at least 1"));
        }
        if self.history.max_len == 0 {
            return Err(invalid("history.max_len", "must be at least 1"));
        }
        if self.history.max_age_ms > MAX_HISTORY_AGE_MS {
            return Err(invalid(
                "history.max_age_ms",
                format!("must be at most {MAX_HISTORY_AGE_MS} (a year); 0 keeps entries regardless of age"),
            ));
        }
        if self.history.replay_limit == 0 {
            return Err(invalid("history.replay_limit", "must be at least 1"));
        }
        if self.history.read_timeout_ms == 0 {
            return Err(invalid("history.read_timeout_ms", "must be greater than 0"));
        }
        if self.history.page_limit == 0 {
            return Err(invalid("history.page_limit", "must be at least 1"));
        }
        if self.server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if self.server.backlog == 0 || self.server.backlog > i32::MAX as u32 {
            return Err(invalid(
                "server.backlog",
                "must be between 1 and 2147483647",
            ));
        }
        if self.schedule.poll_interval_ms == 0 {
            return Err(invalid(
                "schedule.poll_interval_ms",
                "must be greater than 0",
            ));
        }
        if self.schedule.batch == 0 {
            return Err(invalid("schedule.batch", "must be at least 1"));
        }
        if self.presence.heartbeat_ms == 0 {
            return Err(invalid("presence.heartbeat_ms", "must be greater than 0"));
        }
        if self.presence.ttl_ms < 2 * self.presence.heartbeat_ms {
            return Err(invalid(
                "presence.ttl_ms",
                "must be at least twice presence.heartbeat_ms",
            ));
        }
        self.validate_listeners()?;
        self.validate_security()
    }

    /// The public and internal listeners, and the API keys that guard the internal one.
    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let (public, internal) = (self.server.bind, self.server.internal_bind);
        let overlap = public.ip() == internal.ip()
            || public.ip().is_unspecified()
            || internal.ip().is_unspecified();
        if public.port() == internal.port() && public.port() != 0 && overlap {
            return Err(invalid(
                "server.internal_bind",
                format!(
                    "{internal} overlaps server.bind ({public}): the internal listener (publish \
                     API, metrics, health) needs a port of its own"
                ),
            ));
        }
        for (n, key) in self.publish.api_keys.iter().enumerate() {
            if key.len() < 16 {
                return Err(invalid(
                    "publish.api_keys",
                    format!(
                        "key {} is shorter than 16 characters; {}",
                        n + 1,
                        crate::secrets::GENERATE_HINT
                    ),
                ));
            }
            if let Some(problem) = crate::secrets::weakness(key) {
                return Err(invalid(
                    "publish.api_keys",
                    format!("key {} {problem}", n + 1),
                ));
            }
        }
        if self.publish.api_keys.is_empty() && !internal.ip().is_loopback() {
            return Err(invalid(
                "publish.api_keys",
                format!(
                    "must list at least one key when server.internal_bind ({internal}) is not a \
                     loopback address: anyone who reaches that port could publish otherwise; {}",
                    crate::secrets::GENERATE_HINT
                ),
            ));
        }
        Ok(())
    }

    /// `[auth]`, `[origin]`, the connection limits of `[server]` and `redis.ca_file`.
    fn validate_security(&self) -> Result<(), ConfigError> {
        let server = &self.server;
        if server.max_sockets_per_user == 0 {
            return Err(invalid("server.max_sockets_per_user", "must be at least 1"));
        }
        if server.handshake_timeout_ms == 0 {
            return Err(invalid(
                "server.handshake_timeout_ms",
                "must be greater than 0",
            ));
        }
        if server.max_url_bytes < 64 {
            return Err(invalid("server.max_url_bytes", "must be at least 64"));
        }
        if server.max_header_bytes < 1024 {
            return Err(invalid("server.max_header_bytes", "must be at least 1024"));
        }

        let ca_file = self.redis.ca_file.trim();
        if !ca_file.is_empty() {
            if !self.redis.url.trim().starts_with("rediss://") {
                return Err(invalid(
                    "redis.ca_file",
                    "is only used with a rediss:// (TLS) redis.url",
                ));
            }
            if !Path::new(ca_file).is_file() {
                return Err(invalid(
                    "redis.ca_file",
                    format!("{ca_file:?} is not a readable file"),
                ));
            }
        }

        let auth = &self.auth;
        match auth.mode {
            AuthMode::Unset if self.redis_topology().is_some() => {
                return Err(invalid(
                    "auth.mode",
                    "must be set when redis.url, redis.sentinels or redis.cluster_nodes is set (scaled-out mode): \"jwt\" to verify \
                     tokens, or \"none\" to let anyone open any user's socket",
                ))
            }
            AuthMode::Unset | AuthMode::None => return Ok(()),
            AuthMode::Jwt => {}
        }
        if auth.user_claim.trim().is_empty() {
            return Err(invalid("auth.user_claim", "must name a claim"));
        }
        let secret = &auth.hs256_secret.0;
        let secret_file = auth.hs256_secret_file.trim();
        let key_file = auth.public_key_file.trim();
        match auth.algorithm {
            JwtAlgorithm::HS256 => {
                if !key_file.is_empty() {
                    return Err(invalid(
                        "auth.public_key_file",
                        "is for RS256/ES256; auth.algorithm is HS256",
                    ));
                }
                match (secret.is_empty(), secret_file.is_empty()) {
                    (true, true) => return Err(invalid(
                        "auth.hs256_secret",
                        "auth.algorithm HS256 needs auth.hs256_secret or auth.hs256_secret_file",
                    )),
                    (false, false) => {
                        return Err(invalid(
                            "auth.hs256_secret",
                            "set auth.hs256_secret or auth.hs256_secret_file, not both",
                        ))
                    }
                    (false, true) => check_hs256_secret(secret)
                        .map_err(|problem| invalid("auth.hs256_secret", problem))?,
                    (true, false) => {
                        if !Path::new(secret_file).is_file() {
                            return Err(invalid(
                                "auth.hs256_secret_file",
                                format!("{secret_file:?} is not a readable file"),
                            ));
                        }
                    }
                }
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                if !secret.is_empty() || !secret_file.is_empty() {
                    return Err(invalid(
                        "auth.hs256_secret",
                        "is for HS256; RS256/ES256 verify with auth.public_key_file",
                    ));
                }
                if key_file.is_empty() {
                    return Err(invalid(
                        "auth.public_key_file",
                        "auth.algorithm RS256/ES256 needs the PEM public key file",
                    ));
                }
                if !Path::new(key_file).is_file() {
                    return Err(invalid(
                        "auth.public_key_file",
                        format!("{key_file:?} is not a readable file"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `None` in single-node mode.
    /// Parses `server.trusted_proxies` and `origin.allowed` into the values [`crate::auth`]
    /// matches requests against. Call again after changing either list.
    pub fn parse_lists(&mut self) -> Result<(), ConfigError> {
        self.server.proxy_ranges = self
            .server
            .trusted_proxies
            .iter()
            .map(|p| IpNet::parse(p))
            .collect::<Result<_, _>>()
            .map_err(|problem| invalid("server.trusted_proxies", problem))?;
        self.origin.patterns = self
            .origin
            .allowed
            .iter()
            .map(|o| OriginPattern::parse(o))
            .collect::<Result<_, _>>()
            .map_err(|problem| invalid("origin.allowed", problem))?;
        Ok(())
    }

    pub fn redis_url(&self) -> Option<&str> {
        Some(self.redis.url.trim()).filter(|u| !u.is_empty())
    }

    /// Whether the demo page is served: `demo.enabled`, where `auto` means single-node mode.
    pub fn demo_enabled(&self) -> bool {
        match self.demo.enabled {
            DemoSwitch::Auto => self.redis_topology().is_none(),
            DemoSwitch::On => true,
            DemoSwitch::Off => false,
        }
    }

    /// The Redis the node subscribes through; `None` in single-node mode.
    pub fn redis_topology(&self) -> Option<RedisTopology> {
        if let Some(url) = self.redis_url() {
            return Some(RedisTopology::Single(url.to_owned()));
        }
        let optional = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
        let nodes = sentinel_addresses(&self.redis.cluster_nodes);
        if !nodes.is_empty() {
            return Some(RedisTopology::Cluster(publisher::ClusterConfig {
                nodes,
                password: optional(&self.redis.password),
            }));
        }
        let sentinels = sentinel_addresses(&self.redis.sentinels);
        if sentinels.is_empty() {
            return None;
        }
        Some(RedisTopology::Sentinel(publisher::SentinelConfig {
            sentinels,
            master_name: self.redis.sentinel_master.trim().to_owned(),
            sentinel_password: optional(&self.redis.sentinel_password),
            password: optional(&self.redis.password),
        }))
    }

    /// `redis.cluster_nodes`: a Redis Cluster, alone (no url, no sentinels), over plain TCP.
    fn validate_cluster(&self) -> Result<(), (&'static str, String)> {
        let redis = &self.redis;
        let nodes = sentinel_addresses(&redis.cluster_nodes);
        if nodes.is_empty() {
            return Ok(());
        }
        if self.redis_url().is_some() || !sentinel_addresses(&redis.sentinels).is_empty() {
            return Err((
                "redis.cluster_nodes",
                "cannot be combined with redis.url or redis.sentinels: set exactly one of \
                 redis.url (one server), redis.sentinels (a Sentinel-watched master) or \
                 redis.cluster_nodes (a Redis Cluster)"
                    .into(),
            ));
        }
        for (key, value) in [
            ("redis.sentinel_master", &redis.sentinel_master),
            ("redis.sentinel_password", &redis.sentinel_password),
        ] {
            if !value.trim().is_empty() {
                return Err((
                    key,
                    "is only used with redis.sentinels, not with redis.cluster_nodes".into(),
                ));
            }
        }
        for address in &nodes {
            let valid = address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err((
                    "redis.cluster_nodes",
                    format!("{address:?} is not host:port (e.g. 10.0.0.5:6379)"),
                ));
            }
        }
        if !redis.ca_file.trim().is_empty() {
            return Err((
                "redis.ca_file",
                "TLS to a Redis Cluster is not supported yet: leave it empty".into(),
            ));
        }
        Ok(())
    }

    /// `redis.sentinels` and its companions: Sentinel, or a single `redis.url`, never both.
    fn validate_sentinel(&self) -> Result<(), (&'static str, String)> {
        let redis = &self.redis;
        let sentinels = sentinel_addresses(&redis.sentinels);
        let master = redis.sentinel_master.trim();
        if !sentinel_addresses(&redis.cluster_nodes).is_empty() {
            return Ok(());
        }
        if sentinels.is_empty() {
            if !master.is_empty() {
                return Err((
                    "redis.sentinels",
                    "must list the sentinels (host:port,host:port,...) when \
                     redis.sentinel_master is set"
                        .into(),
                ));
            }
            for (key, value) in [
                ("redis.sentinel_password", &redis.sentinel_password),
                ("redis.password", &redis.password),
            ] {
                if !value.is_empty() {
                    let used_with = match key {
                        "redis.password" => "redis.sentinels or redis.cluster_nodes",
                        _ => "redis.sentinels",
                    };
                    return Err((
                        key,
                        format!(
                            "is only used with {used_with}; with redis.url, put the password \
                             in the URL (redis://:password@host:6379)"
                        ),
                    ));
                }
            }
            return Ok(());
        }
        if self.redis_url().is_some() {
            return Err((
                "redis.sentinels",
                "cannot be combined with redis.url: set redis.url for one Redis server, or \
                 redis.sentinels and redis.sentinel_master for a Sentinel-watched master"
                    .into(),
            ));
        }
        if master.is_empty() {
            return Err((
                "redis.sentinel_master",
                "must name the master the sentinels monitor (`sentinel monitor <name> ...`) \
                 when redis.sentinels is set"
                    .into(),
            ));
        }
        for address in &sentinels {
            let valid = address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err((
                    "redis.sentinels",
                    format!("{address:?} is not host:port (e.g. 10.0.0.5:26379)"),
                ));
            }
        }
        if !redis.ca_file.trim().is_empty() {
            return Err((
                "redis.ca_file",
                "TLS to a Sentinel-watched master is not supported yet: leave it empty".into(),
            ));
        }
        Ok(())
    }
}

/// Where a scaled-out node finds Redis.
#[derive(Debug, Clone)]
pub enum RedisTopology {
    /// `redis.url`: one server.
    Single(String),
    /// `redis.sentinels` + `redis.sentinel_master`: the master of a Sentinel-watched set.
    Sentinel(publisher::SentinelConfig),
    /// `redis.cluster_nodes`: a Redis Cluster, sharded pub/sub.
    Cluster(publisher::ClusterConfig),
}

/// `redis.sentinels` split on commas, blanks dropped.
fn sentinel_addresses(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Why an HS256 secret is unusable; shared by `auth.hs256_secret` and the file variant.
pub fn check_hs256_secret(secret: &str) -> Result<(), String> {
    if secret.len() < 32 {
        return Err(format!(
            "must be at least 32 characters (256 bits) long, got {}; {}",
            secret.len(),
            crate::secrets::GENERATE_HINT
        ));
    }
    // The environment parser turns numeric-looking values into numbers, which can change
    // them (`1e40`, lost digits); a secret that still looks like a number may be mangled.
    if secret.parse::<f64>().is_ok() {
        return Err(
            "looks like a number, which the configuration parser may have altered; use a \
             secret with letters, or auth.hs256_secret_file"
                .into(),
        );
    }
    match crate::secrets::weakness(secret) {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}

/// A refused value, named by its key.
pub fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// Milliseconds from configuration as a [`Duration`].
pub fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with_env(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(
            None,
            config::Environment::with_prefix(ENV_PREFIX).source(Some(map)),
        )
    }

    #[test]
    fn the_readme_documents_every_key() {
        let readme = include_str!("../../README.md");
        let mut section = "";
        for line in DEFAULT_TOML.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name;
            } else if let Some((key, _)) = line.split_once(" = ").filter(|_| !line.starts_with('#'))
            {
                let key = format!("`{section}.{key}`");
                assert!(
                    readme.contains(&key),
                    "README.md's configuration table lacks {key}"
                );
            }
        }
    }

    #[test]
    fn defaults_are_valid_and_single_node() {
        let s = Settings::defaults();
        assert_eq!(s.redis_url(), None);
        assert!(
            s.ws.ping_interval_ms < 60_000,
            "below nginx's default proxy_read_timeout"
        );
    }

    #[test]
    fn the_demo_page_is_on_in_single_node_mode_only_unless_chosen() {
        assert!(with_env(&[]).unwrap().demo_enabled());
        let scaled = [
            ("GW__REDIS__URL", "redis://127.0.0.1:7000"),
            ("GW__AUTH__MODE", "none"),
        ];
        assert!(!with_env(&scaled).unwrap().demo_enabled());
        for (value, on) in [
            ("true", true),
            ("false", false),
            ("auto", false),
            ("TRUE", true),
        ] {
            let mut vars = scaled.to_vec();
            vars.push(("GW__DEMO__ENABLED", value));
            assert_eq!(with_env(&vars).unwrap().demo_enabled(), on, "{value}");
        }
        assert!(!with_env(&[("GW__DEMO__ENABLED", "false")])
            .unwrap()
            .demo_enabled());
        let err = with_env(&[("GW__DEMO__ENABLED", "yes")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("demo.enabled"), "{err}");
    }

    #[test]
    fn environment_overrides_multi_word_keys() {
        let s = with_env(&[
            ("GW__REDIS__URL", "redis://127.0.0.1:7000"),
            ("GW__AUTH__MODE", "none"),
            ("GW__WS__MAX_FRAME_BYTES", "2048"),
            (
                "GW__PUBLISH__API_KEYS",
                "6f1d8a3c9e2b7f40d5a1c8e3,b94e0c7a2f5d18e6a3c9b0f4",
            ),
        ])
        .unwrap();
        assert_eq!(s.redis_url(), Some("redis://127.0.0.1:7000"));
        assert_eq!(s.ws.max_frame_bytes, 2048);
        assert_eq!(s.publish.api_keys.len(), 2);
    }

    #[test]
    fn invalid_values_name_their_key() {
        let err = with_env(&[("GW__WS__OUTBOUND_QUEUE", "lots")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("outbound_queue"), "{err}");
        let err = with_env(&[("GW__WS__IDLE_TIMEOUT_MS", "10")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ws.idle_timeout_ms"), "{err}");
        let err = with_env(&[("GW__REDIS__URL", "http://x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("redis.url"), "{err}");
        let err = with_env(&[("GW__WS__TYPO_KEY", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("typo_key"), "{err}");
    }

    #[test]
    fn the_internal_listener_is_loopback_and_apart_from_the_public_one() {
        let s = Settings::defaults();
        assert!(s.server.internal_bind.ip().is_loopback());
        assert_ne!(s.server.internal_bind.port(), s.server.bind.port());
        for (vars, key) in [
            (
                vec![("GW__SERVER__INTERNAL_BIND", "0.0.0.0:8080")],
                "server.internal_bind",
            ),
            (
                vec![
                    ("GW__SERVER__BIND", "127.0.0.1:7000"),
                    ("GW__SERVER__INTERNAL_BIND", "127.0.0.1:7000"),
                ],
                "server.internal_bind",
            ),
            // Not loopback: the publish API needs keys.
            (
                vec![("GW__SERVER__INTERNAL_BIND", "0.0.0.0:9091")],
                "publish.api_keys",
            ),
        ] {
            let err = with_env(&vars).unwrap_err().to_string();
            assert!(err.contains(key), "{vars:?}: {err}");
        }
        let s = with_env(&[
            ("GW__SERVER__INTERNAL_BIND", "0.0.0.0:9091"),
            ("GW__PUBLISH__API_KEYS", "6f1d8a3c9e2b7f40d5a1c8e3b94e0c7a"),
        ])
        .unwrap();
        assert_eq!(s.server.internal_bind.port(), 9091);
    }

    #[test]
    fn weak_secrets_are_refused_naming_the_key() {
        let jwt = ("GW__AUTH__MODE", "jwt");
        for (vars, key, why) in [
            (
                vec![
                    jwt,
                    ("GW__AUTH__HS256_SECRET", "replace-with-openssl-rand-hex-32"),
                ],
                "auth.hs256_secret",
                "example value",
            ),
            (
                vec![
                    jwt,
                    (
                        "GW__AUTH__HS256_SECRET",
                        "my-company-jwt-signing-secret-2024",
                    ),
                ],
                "auth.hs256_secret",
                "placeholder word",
            ),
            (
                vec![
                    jwt,
                    ("GW__AUTH__HS256_SECRET", "abababababababababababababababab"),
                ],
                "auth.hs256_secret",
                "too predictable",
            ),
            (
                vec![("GW__PUBLISH__API_KEYS", "replace-with-openssl-rand-hex-24")],
                "publish.api_keys",
                "example value",
            ),
            (
                vec![(
                    "GW__PUBLISH__API_KEYS",
                    "6f1d8a3c9e2b7f40d5a1c8e3b94e0c7a,CHANGEME-0a6f8b2d4e1c9a7f",
                )],
                "publish.api_keys",
                "key 2 contains the placeholder word",
            ),
            (
                vec![(
                    "GW__PUBLISH__API_KEYS",
                    "0123456789abcdefghijklmnopqrstuvwxyz",
                )],
                "publish.api_keys",
                "sequences",
            ),
            (
                vec![("GW__PUBLISH__API_KEYS", "9b1f0c4e7a2d")],
                "publish.api_keys",
                "shorter than 16",
            ),
        ] {
            let err = with_env(&vars).unwrap_err().to_string();
            assert!(err.contains(key), "{vars:?}: {err}");
            assert!(err.contains(why), "{vars:?}: {err}");
        }
    }

    #[test]
    fn sentinel_settings_pick_the_topology() {
        let s = with_env(&[
            ("GW__REDIS__SENTINELS", "10.0.0.1:26379, 10.0.0.2:26379,"),
            ("GW__REDIS__SENTINEL_MASTER", "notifications"),
            ("GW__REDIS__PASSWORD", "pw"),
            ("GW__AUTH__MODE", "none"),
        ])
        .unwrap();
        match s.redis_topology() {
            Some(RedisTopology::Sentinel(sentinel)) => {
                assert_eq!(sentinel.sentinels, ["10.0.0.1:26379", "10.0.0.2:26379"]);
                assert_eq!(sentinel.master_name, "notifications");
                assert_eq!(sentinel.password.as_deref(), Some("pw"));
                assert_eq!(sentinel.sentinel_password, None);
            }
            other => panic!("{other:?}"),
        }
        assert!(Settings::defaults().redis_topology().is_none());
    }

    #[test]
    fn cluster_nodes_pick_the_cluster_topology() {
        let s = with_env(&[
            ("GW__REDIS__CLUSTER_NODES", "10.0.0.1:7000, 10.0.0.2:7000"),
            ("GW__REDIS__PASSWORD", "pw"),
            ("GW__AUTH__MODE", "none"),
        ])
        .unwrap();
        match s.redis_topology() {
            Some(RedisTopology::Cluster(cluster)) => {
                assert_eq!(cluster.nodes, ["10.0.0.1:7000", "10.0.0.2:7000"]);
                assert_eq!(cluster.password.as_deref(), Some("pw"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_topology_combinations_name_the_key() {
        let sentinels = ("GW__REDIS__SENTINELS", "127.0.0.1:26379");
        let master = ("GW__REDIS__SENTINEL_MASTER", "m");
        let auth = ("GW__AUTH__MODE", "none");
        for (env, key) in [
            (
                vec![
                    ("GW__REDIS__URL", "redis://127.0.0.1:7000"),
                    sentinels,
                    master,
                    auth,
                ],
                "redis.sentinels",
            ),
            (vec![sentinels, auth], "redis.sentinel_master"),
            (vec![master, auth], "redis.sentinels"),
            (
                vec![("GW__REDIS__SENTINELS", "127.0.0.1"), master, auth],
                "redis.sentinels",
            ),
            (
                vec![
                    ("GW__REDIS__PASSWORD", "pw"),
                    ("GW__REDIS__URL", "redis://h:1"),
                    auth,
                ],
                "redis.password",
            ),
            (
                vec![("GW__REDIS__SENTINEL_PASSWORD", "pw")],
                "redis.sentinel_password",
            ),
            (vec![sentinels, master], "auth.mode"),
            (
                vec![
                    ("GW__REDIS__URL", "redis://127.0.0.1:7000"),
                    ("GW__REDIS__CLUSTER_NODES", "127.0.0.1:7001"),
                    auth,
                ],
                "redis.cluster_nodes",
            ),
            (
                vec![
                    ("GW__REDIS__CLUSTER_NODES", "127.0.0.1:7001"),
                    sentinels,
                    master,
                    auth,
                ],
                "redis.cluster_nodes",
            ),
            (
                vec![("GW__REDIS__CLUSTER_NODES", "127.0.0.1:7001"), master, auth],
                "redis.sentinel_master",
            ),
            (
                vec![("GW__REDIS__CLUSTER_NODES", "127.0.0.1"), auth],
                "redis.cluster_nodes",
            ),
            (
                vec![("GW__REDIS__CLUSTER_NODES", "127.0.0.1:7001")],
                "auth.mode",
            ),
        ] {
            let err = with_env(&env).unwrap_err().to_string();
            assert!(err.contains(key), "{env:?}: {err}");
        }
    }

    #[test]
    fn scaled_out_mode_refuses_to_start_without_an_auth_setting() {
        let err = with_env(&[("GW__REDIS__URL", "redis://127.0.0.1:7000")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.mode"), "{err}");
        assert_eq!(
            Settings::defaults().auth.mode,
            AuthMode::Unset,
            "single node: none"
        );
        let err = with_env(&[("GW__AUTH__MODE", "open")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode"), "{err}");
    }

    #[test]
    fn jwt_settings_are_checked_naming_the_key() {
        let secret = "8c1f4e9a2d7b3f60e5a9c1d8b4f2e7a3";
        let ok = with_env(&[
            ("GW__AUTH__MODE", "jwt"),
            ("GW__AUTH__HS256_SECRET", secret),
            (
                "GW__ORIGIN__ALLOWED",
                "https://a.example.com,https://*.b.example.com",
            ),
            ("GW__SERVER__TRUSTED_PROXIES", "127.0.0.1,10.0.0.0/8"),
        ])
        .unwrap();
        assert_eq!(ok.auth.hs256_secret.0, secret);
        assert_eq!(ok.origin.allowed.len(), 2);
        assert_eq!(ok.server.trusted_proxies.len(), 2);
        assert!(
            !format!("{ok:?}").contains(secret),
            "Debug hides the secret"
        );

        for (vars, key) in [
            (vec![("GW__AUTH__MODE", "jwt")], "auth.hs256_secret"),
            (
                vec![
                    ("GW__AUTH__MODE", "jwt"),
                    ("GW__AUTH__HS256_SECRET", "short"),
                ],
                "auth.hs256_secret",
            ),
            (
                vec![
                    ("GW__AUTH__MODE", "jwt"),
                    (
                        "GW__AUTH__HS256_SECRET",
                        "12345678901234567890123456789012345",
                    ),
                ],
                "auth.hs256_secret",
            ),
            (
                vec![("GW__AUTH__MODE", "jwt"), ("GW__AUTH__ALGORITHM", "RS256")],
                "auth.public_key_file",
            ),
            (
                vec![
                    ("GW__AUTH__MODE", "jwt"),
                    ("GW__AUTH__ALGORITHM", "ES256"),
                    ("GW__AUTH__PUBLIC_KEY_FILE", "/nonexistent.pem"),
                ],
                "auth.public_key_file",
            ),
            (vec![("GW__AUTH__ALGORITHM", "none")], "algorithm"),
            (
                vec![("GW__ORIGIN__ALLOWED", "example.com")],
                "origin.allowed",
            ),
            (
                vec![("GW__SERVER__TRUSTED_PROXIES", "10.0.0.0/40")],
                "server.trusted_proxies",
            ),
            (
                vec![("GW__SERVER__MAX_SOCKETS_PER_USER", "0")],
                "server.max_sockets_per_user",
            ),
            (
                vec![("GW__REDIS__CA_FILE", "/etc/hostname")],
                "redis.ca_file",
            ),
        ] {
            let err = with_env(&vars).unwrap_err().to_string();
            assert!(err.contains(key), "{vars:?}: {err}");
        }
    }
}
