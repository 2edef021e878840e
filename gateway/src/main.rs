//! `gateway [--config FILE]`: loads the configuration, installs logging, serves until
//! SIGTERM/SIGINT. Everything else lives in the library (`gateway::run`).
//!
//! `gateway --healthcheck [PATH]` is the container health check: the runtime image has no
//! curl, so the binary itself GETs `/healthz` (or PATH) from the internal listener
//! (`server.internal_bind`) of the gateway configured by the same file and environment, and
//! exits 0 on 200, 1 otherwise.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use gateway::config::{Settings, DEFAULT_TOML};

const USAGE: &str = "usage: gateway [--config FILE] [--print-default-config] [--healthcheck [PATH]]

Configuration: compiled-in defaults < FILE (or GW_CONFIG=FILE) < GW__SECTION__KEY environment
variables. `--print-default-config` prints every key with its default and meaning.
`--healthcheck [PATH]` asks the gateway at server.internal_bind for PATH (default /healthz; /readyz for
readiness) and exits 0 when it answers 200, 1 otherwise: for container health checks.";

fn main() -> ExitCode {
    let mut config_file = std::env::var_os("GW_CONFIG").map(PathBuf::from);
    let mut healthcheck: Option<String> = None;
    let mut args = std::env::args().skip(1).peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => match args.next() {
                Some(path) => config_file = Some(PathBuf::from(path)),
                None => return fail("--config needs a file path"),
            },
            "--healthcheck" => {
                let path = args.next_if(|next| next.starts_with('/'));
                healthcheck = Some(path.unwrap_or_else(|| "/healthz".to_owned()));
            }
            "--print-default-config" => {
                print!("{DEFAULT_TOML}");
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return fail(&format!("unknown argument {other:?}\n{USAGE}")),
        }
    }

    let settings = match Settings::load(config_file.as_deref()) {
        Ok(settings) => settings,
        Err(error) => return fail(&error.to_string()),
    };
    if let Some(path) = healthcheck {
        return match check_health(settings.server.internal_bind, &path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(problem) => {
                eprintln!("gateway: health check {path}: {problem}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(error) = gateway::telemetry::init(&settings.log) {
        return fail(&error);
    }
    let listeners = match gateway::Listeners::bind(&settings) {
        Ok(listeners) => listeners,
        Err(error) => return fail(&error),
    };
    let served = gateway::serve(settings, listeners);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error.to_string()),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("gateway: {message}");
    ExitCode::from(2)
}

/// GETs `path` from the gateway listening on `bind` (on loopback when it binds every
/// address); `Ok` only for a 200 answer.
fn check_health(bind: SocketAddr, path: &str) -> Result<(), String> {
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let address = SocketAddr::new(ip, bind.port());
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    let io = |e: std::io::Error| format!("{address}: {e}");
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    // The status line is all that matters; bodies are a few bytes.
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]).map_err(io)? {
            0 => break,
            n => read += n,
        }
    }
    let head = String::from_utf8_lossy(&head[..read]);
    let status = head.split_whitespace().nth(1).unwrap_or("no answer");
    if status == "200" {
        Ok(())
    } else {
        Err(format!("{address} answered {status}"))
    }
}
