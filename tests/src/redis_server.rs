//! A private `redis-server` per test, on a port of its own (never 6379), which can be
//! killed and restarted on the same port.

use super::*;

/// How a test Redis is secured.
#[derive(Clone, Default)]
pub struct RedisOptions {
    /// `requirepass`: the default user's password, put in [`RedisServer::url`].
    pub password: Option<String>,
    /// Extra ACL rules, one `--user` argument each (`"gw on >pw &user_* +@pubsub"`).
    pub acl_users: Vec<String>,
    /// Serve TLS only (no plain port), with this CA's server certificate.
    pub tls: Option<Arc<proxy::TestCa>>,
    /// Append-only file, fsynced on every command, so a restart keeps what was acknowledged.
    pub persistent: bool,
}

pub struct RedisServer {
    pub port: u16,
    pub options: RedisOptions,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a redis-server on a free port, without persistence.
    pub fn start() -> Self {
        Self::start_with(RedisOptions::default())
    }

    /// Starts a redis-server that writes every command to its append-only file before
    /// answering, so a restart keeps everything acknowledged.
    pub fn start_persistent() -> Self {
        Self::start_with(RedisOptions {
            persistent: true,
            ..RedisOptions::default()
        })
    }

    /// Starts one with a password, ACL users, TLS or persistence.
    pub fn start_with(options: RedisOptions) -> Self {
        let mut server = RedisServer {
            port: free_port(),
            options,
            dir: TempDir::new("redis"),
            child: None,
        };
        server.spawn();
        server
    }

    /// The URL clients use: `rediss://` with TLS, the password in it when there is one.
    pub fn url(&self) -> String {
        let credentials = match &self.options.password {
            Some(password) => format!(":{password}@"),
            None => String::new(),
        };
        self.url_with_credentials(&credentials)
    }

    /// The URL with other credentials: `"user:password@"`, or `""` for none.
    pub fn url_with_credentials(&self, credentials: &str) -> String {
        let scheme = if self.options.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{credentials}127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let program = require_program("redis-server", "redis-server");
        let mut command = Command::new(program);
        let port = self.port.to_string();
        match &self.options.tls {
            None => command.args(["--port", &port]),
            Some(pki) => command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(pki.dir().join("tls.crt"))
                .arg("--tls-key-file")
                .arg(pki.dir().join("tls.key"))
                .arg("--tls-ca-cert-file")
                .arg(pki.ca_pem()),
        };
        if let Some(password) = &self.options.password {
            command.args(["--requirepass", password]);
        }
        for rules in &self.options.acl_users {
            command.arg("--user").args(rules.split_whitespace());
        }
        let appendonly = if self.options.persistent { "yes" } else { "no" };
        let child = command
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", appendonly, "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        while self.ping().is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self
            .client()
            .get_connection_with_timeout(Duration::from_millis(500))?;
        redis::cmd("PING").query::<String>(&mut conn).map(|_| ())
    }

    pub fn client(&self) -> redis::Client {
        match &self.options.tls {
            None => redis::Client::open(self.url()).expect("redis url"),
            Some(pki) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(pki.ca_pem()).expect("reading the test CA")),
                },
            )
            .expect("redis TLS client"),
        }
    }

    /// A plain (blocking) connection for assertions and raw PUBLISHes.
    pub fn connection(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(DEADLINE)
            .expect("connecting to test redis")
    }

    /// SIGKILLs the server: subscribers see their connection drop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Subscriber count of a channel, as Redis itself sees it.
    pub fn numsub(&self, channel: &str) -> u64 {
        let (_, n): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query(&mut self.connection())
            .expect("PUBSUB NUMSUB");
        n
    }

    /// Client connections open on the server, not counting the one asking.
    pub fn clients(&self) -> usize {
        self.client_list().len() - 1
    }

    /// Connections subscribed to at least one channel.
    pub fn subscriber_connections(&self) -> usize {
        self.client_list()
            .iter()
            .filter(|line| {
                line.split(' ')
                    .any(|field| field.strip_prefix("sub=").is_some_and(|n| n != "0"))
            })
            .count()
    }

    fn client_list(&self) -> Vec<String> {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut self.connection())
            .expect("CLIENT LIST");
        list.lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// PUBLISH of raw bytes; returns the receiver count.
    pub fn publish_raw(&self, channel: &str, payload: &[u8]) -> u64 {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query(&mut self.connection())
            .expect("PUBLISH")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
