//! Layered configuration: compiled-in defaults < TOML file < `GW__SECTION__KEY` environment.
//!
//! `config.default.toml` beside this crate is both the compiled-in default and the commented
//! reference of every key. Start-up refuses an invalid value with a message naming the key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The compiled-in defaults, also shipped as the documented example file.
pub const DEFAULT_TOML: &str = include_str!("../config.default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub redis: RedisSettings,
    pub ws: WsSettings,
    pub history: HistorySettings,
    pub publish: PublishSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub bind: SocketAddr,
    pub workers: usize,
    pub drain_timeout_ms: u64,
    pub max_connections: usize,
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

/// A configuration that cannot be used; the message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: &'static str, problem: String },
}

const ENV_PREFIX: &str = "GW";

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
            .with_list_parse_key("publish.api_keys");
        let settings: Settings = builder.add_source(env).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                problem: problem.into(),
            }
        }
        let url = self.redis.url.trim();
        if !(url.is_empty() || url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(invalid(
                "redis.url",
                "must start with redis:// or rediss://, or be empty for single-node mode",
            ));
        }
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
        if self.publish.api_keys.iter().any(|k| k.len() < 16) {
            return Err(invalid(
                "publish.api_keys",
                "every key must be at least 16 characters",
            ));
        }
        Ok(())
    }

    /// `None` in single-node mode.
    pub fn redis_url(&self) -> Option<&str> {
        Some(self.redis.url.trim()).filter(|u| !u.is_empty())
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
    fn defaults_are_valid_and_single_node() {
        let s = Settings::defaults();
        assert_eq!(s.redis_url(), None);
        assert!(
            s.ws.ping_interval_ms < 60_000,
            "below nginx's default proxy_read_timeout"
        );
    }

    #[test]
    fn environment_overrides_multi_word_keys() {
        let s = with_env(&[
            ("GW__REDIS__URL", "redis://127.0.0.1:7000"),
            ("GW__WS__MAX_FRAME_BYTES", "2048"),
            ("GW__PUBLISH__API_KEYS", "aaaaaaaaaaaaaaaa,bbbbbbbbbbbbbbbb"),
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
}
