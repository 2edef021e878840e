//! End-to-end tests: real redis-server, real gateway processes, real WebSocket clients.
//! One binary, one module per behaviour a user relies on.

mod auth;
mod bench_smoke;
mod churn;
mod close_timing;
mod cluster;
mod cluster_scheduled;
mod cors;
mod cross_language;
mod delivery;
mod deploy;
mod faults;
mod hostile;
mod lifecycle;
mod listeners;
mod metrics;
mod nginx;
mod presence;
mod readiness;
mod redis_security;
mod resume;
mod scheduled;
mod sentinel;
mod socket_limits;
mod sse;
mod storm;
mod subscriptions;

use publisher::{Level, Notification, Publisher, UserId};

pub fn user(id: u64) -> UserId {
    UserId::new(id).expect("valid test user id")
}

pub fn publisher(redis: &e2e::RedisServer) -> Publisher {
    match &redis.options.tls {
        None => Publisher::connect(&redis.url()),
        Some(pki) => Publisher::with_tls_ca(
            &redis.url(),
            &std::fs::read(pki.ca_pem()).expect("reading the test CA"),
            Default::default(),
        ),
    }
    .expect("publisher for the test redis")
}

/// Starts the gateway binary with `env` and expects it to refuse to start; returns stderr.
pub fn start_fails(env: &[(&str, &str)]) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-e2e"));
    command
        .env_clear()
        .env("GW__SERVER__BIND", "127.0.0.1:0")
        .env("GW__SERVER__INTERNAL_BIND", "127.0.0.1:0");
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running the gateway binary");
    let deadline = std::time::Instant::now() + e2e::DEADLINE;
    while child.try_wait().expect("waiting for the gateway").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gateway started with {env:?} instead of refusing");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let output = child.wait_with_output().expect("gateway output");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "started with {env:?}\n{stderr}");
    stderr
}

/// A notification whose message says which one it is, for order and isolation checks.
pub fn numbered(n: u64) -> Notification {
    Notification::new(Level::Info, format!("note {n}")).with_data("n", n)
}
