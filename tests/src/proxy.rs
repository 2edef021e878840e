//! What sits in front of the replicas in production: a real nginx, TLS certificates made
//! with the openssl CLI at test time, and `wss://` clients that trust only the test CA.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_tungstenite::Connector;

use crate::{free_port, kill, require_program, signal, TempDir, WsClient, DEADLINE};

/// A certificate authority and a server certificate for `localhost` and 127.0.0.1 signed by
/// it, made by the openssl CLI in a directory of their own.
pub struct TestCa {
    dir: TempDir,
}

impl TestCa {
    pub fn generate() -> Self {
        let openssl = require_program("openssl", "openssl");
        let dir = TempDir::new("tls");
        let run = |args: &[&str]| {
            let out = Command::new(&openssl)
                .current_dir(&dir.0)
                .args(args)
                .output()
                .expect("running openssl");
            assert!(
                out.status.success(),
                "openssl {args:?} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        run(&[
            &["req", "-x509", "-nodes", "-days", "2"][..],
            &ec_key,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-subj",
                "/CN=gateway e2e test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat());
        run(&[
            &["req", "-new", "-nodes"][..],
            &ec_key,
            &[
                "-keyout",
                "tls.key",
                "-out",
                "tls.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat());
        std::fs::write(
            dir.0.join("ext.cnf"),
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "tls.crt",
        ]);
        TestCa { dir }
    }

    /// Holds `tls.crt` (the server certificate) and `tls.key`.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir.0.join("ca.crt")
    }

    /// A rustls client configuration whose only root is this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(self.ca_pem()).expect("reading the test CA"))
            .expect("the test CA is a valid root");
        // The provider is named so the test works whichever rustls backends are compiled in.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS 1.2 and 1.3 with aws-lc-rs")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

impl WsClient {
    /// Connects to a `wss://` URL trusting only `tls` (no system roots).
    pub async fn try_connect_tls(
        url: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let connecting = tokio_tungstenite::connect_async_tls_with_config(
            url,
            None,
            false,
            Some(Connector::Rustls(tls)),
        );
        let (ws, _response) =
            tokio::time::timeout(DEADLINE, connecting)
                .await
                .map_err(|_| {
                    tokio_tungstenite::tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into())
                })??;
        Ok(WsClient { ws })
    }
}

/// How a `wss://` handshake through the proxy ended: connected, or refused with an HTTP
/// status (429 from a rate limit), or failed otherwise (the message).
pub enum TlsHandshake {
    Connected(Box<WsClient>),
    Refused(u16),
    Failed(String),
}

impl std::fmt::Debug for TlsHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsHandshake::Connected(_) => f.write_str("Connected"),
            TlsHandshake::Refused(status) => write!(f, "Refused({status})"),
            TlsHandshake::Failed(why) => write!(f, "Failed({why})"),
        }
    }
}

impl WsClient {
    /// Connects to a `wss://` URL on `server` from the local address `source` (any loopback
    /// address, 127.0.0.2 for a second client machine), trusting only `tls`.
    pub async fn connect_tls_from(
        url: &str,
        server: SocketAddr,
        source: std::net::IpAddr,
        tls: Arc<rustls::ClientConfig>,
    ) -> TlsHandshake {
        use tokio_tungstenite::tungstenite::Error;
        let attempt = async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            let stream = socket.connect(server).await?;
            Ok::<_, std::io::Error>(stream)
        };
        let stream = match tokio::time::timeout(DEADLINE, attempt).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return TlsHandshake::Failed(format!("connect from {source}: {e}")),
            Err(_) => return TlsHandshake::Failed("connect timed out".into()),
        };
        let handshake = tokio_tungstenite::client_async_tls_with_config(
            url,
            stream,
            None,
            Some(Connector::Rustls(tls)),
        );
        match tokio::time::timeout(DEADLINE, handshake).await {
            Ok(Ok((ws, _))) => TlsHandshake::Connected(Box::new(WsClient { ws })),
            Ok(Err(Error::Http(response))) => TlsHandshake::Refused(response.status().as_u16()),
            Ok(Err(e)) => TlsHandshake::Failed(e.to_string()),
            Err(_) => TlsHandshake::Failed("handshake timed out".into()),
        }
    }
}

/// An nginx master process (`daemon off`) running a configuration file of the test's,
/// with its prefix, pid file and logs in a directory of its own. Killed on drop.
pub struct Nginx {
    child: Option<Child>,
    dir: TempDir,
}

impl Nginx {
    /// The directory nginx runs in; write the configuration here before [`Nginx::start`].
    pub fn prefix() -> TempDir {
        let dir = TempDir::new("nginx");
        std::fs::create_dir_all(dir.0.join("logs")).unwrap();
        dir
    }

    /// Starts nginx on `config` inside `prefix` and waits until `ready_on` accepts
    /// connections.
    pub fn start(prefix: TempDir, config: &Path, ready_on: SocketAddr) -> Self {
        let program = require_program("nginx", "nginx");
        let error_log = prefix.0.join("logs/error.log");
        let globals = format!("daemon off; pid {};", prefix.0.join("nginx.pid").display());
        let child = Command::new(program)
            .arg("-p")
            .arg(&prefix.0)
            .arg("-c")
            .arg(config)
            .arg("-e")
            .arg(&error_log)
            .args(["-g", &globals])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(prefix.0.join("logs/stderr.log")).expect("nginx stderr log"),
            )
            .spawn()
            .expect("spawning nginx");
        let mut nginx = Nginx {
            child: Some(child),
            dir: prefix,
        };
        let deadline = Instant::now() + DEADLINE;
        while TcpStream::connect_timeout(&ready_on, Duration::from_millis(200)).is_err() {
            if let Some(status) = nginx.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nginx exited ({status}):\n{}", nginx.log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx never listened on {ready_on}\n{}",
                nginx.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// The access log, when the configuration writes it to `logs/access.log` in the prefix.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("logs/access.log")).unwrap_or_default()
    }

    /// nginx's error log and stderr so far (config errors, upstream failures).
    pub fn log(&self) -> String {
        ["logs/error.log", "logs/stderr.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.0.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM, not SIGKILL: the master then stops its workers, which would otherwise
        // outlive it and keep the port.
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        kill(&mut child);
    }
}

/// A loopback address with a free port, for nginx to listen on.
pub fn free_loopback_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}
