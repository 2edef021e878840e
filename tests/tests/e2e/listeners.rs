//! Safe by default: the server API (publish, metrics, probes) answers only on the internal
//! listener, browsers' endpoints only on the public one, and start-up refuses example,
//! placeholder and hand-typed secrets, naming the key.

use e2e::{Gateway, WsClient};

use crate::start_fails;

const PUBLISH: &str = r#"{"user": 61, "type": "info", "message": "over the internal port"}"#;

#[tokio::test]
async fn the_server_api_answers_only_on_the_internal_listener() {
    let gateway = Gateway::start(None, &[]);
    assert_ne!(gateway.addr, gateway.internal);
    let mut browser = WsClient::connect(&gateway.ws_url("61")).await;

    // The public listener: WebSockets and the inbox, nothing of the server API.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let (status, _) = e2e::http_get(gateway.addr, path).unwrap();
        assert_eq!(status, 404, "public {path}");
    }
    let public = r#"{"user": 61, "type": "info", "message": "through the public port"}"#;
    let (status, _) = e2e::http_post_json(gateway.addr, "/api/publish", &[], public).unwrap();
    assert_eq!(status, 404, "public POST /api/publish");

    // The internal listener: the server API, nothing a browser uses.
    let (status, answer) =
        e2e::http_post_json(gateway.internal, "/api/publish", &[], PUBLISH).unwrap();
    assert_eq!((status, answer.as_str()), (200, r#"{"receivers":1}"#));
    // The first frame the browser gets: the public attempt published nothing.
    assert_eq!(
        browser.next_json().await["message"],
        "over the internal port"
    );
    for path in ["/metrics", "/healthz", "/readyz"] {
        let (status, _) = e2e::http_get(gateway.internal, path).unwrap();
        assert_eq!(status, 200, "internal {path}");
    }
    for path in ["/ws/notifications/61/", "/api/notifications/61"] {
        let (status, _) = e2e::http_get(gateway.internal, path).unwrap();
        assert_eq!(status, 404, "internal {path}");
    }
    let (status, inbox) = e2e::http_get(gateway.addr, "/api/notifications/61").unwrap();
    assert_eq!(status, 200, "{inbox}");
    assert!(inbox.contains("over the internal port"), "{inbox}");
}

#[test]
fn a_non_loopback_internal_listener_needs_api_keys() {
    let stderr = start_fails(&[("GW__SERVER__INTERNAL_BIND", "0.0.0.0:0")]);
    assert!(stderr.contains("publish.api_keys"), "{stderr}");
    assert!(stderr.contains("loopback"), "{stderr}");
}

/// The shipped env file, copied and not edited, cannot start a gateway: each of its values
/// is refused, naming its key.
#[test]
fn the_shipped_example_env_file_cannot_start_a_gateway() {
    let example = include_str!("../../../deploy/gateway.env.example");
    let values: Vec<(&str, &str)> = example
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .collect();
    let value = |key: &str| {
        values
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("{key} not in deploy/gateway.env.example"))
            .1
    };
    let jwt = value("GW__AUTH__HS256_SECRET");
    let stderr = start_fails(&[("GW__AUTH__MODE", "jwt"), ("GW__AUTH__HS256_SECRET", jwt)]);
    assert!(stderr.contains("auth.hs256_secret"), "{stderr}");
    assert!(stderr.contains("openssl rand -hex 32"), "{stderr}");

    // As compose runs it: the internal port open to the compose network.
    let keys = value("GW__PUBLISH__API_KEYS");
    let stderr = start_fails(&[
        ("GW__SERVER__INTERNAL_BIND", "0.0.0.0:0"),
        ("GW__PUBLISH__API_KEYS", keys),
    ]);
    assert!(stderr.contains("publish.api_keys"), "{stderr}");
}

#[test]
fn weak_secrets_stop_start_up_naming_the_key() {
    for (env, key, why) in [
        (
            [
                ("GW__AUTH__MODE", "jwt"),
                ("GW__AUTH__HS256_SECRET", "replace-with-openssl-rand-hex-32"),
            ],
            "auth.hs256_secret",
            "example value",
        ),
        (
            [
                ("GW__AUTH__MODE", "jwt"),
                (
                    "GW__AUTH__HS256_SECRET",
                    "our-production-jwt-Secret-for-2026",
                ),
            ],
            "auth.hs256_secret",
            "placeholder word",
        ),
        (
            [
                ("GW__AUTH__MODE", "none"),
                ("GW__PUBLISH__API_KEYS", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            ],
            "publish.api_keys",
            "too predictable",
        ),
    ] {
        let stderr = start_fails(&env);
        assert!(stderr.contains(key), "{env:?}: {stderr}");
        assert!(stderr.contains(why), "{env:?}: {stderr}");
        assert!(
            !stderr.contains(env[1].1),
            "the value is not echoed: {stderr}"
        );
    }

    // The same rules for a secret read from a file (as systemd's LoadCredential= passes it).
    let dir = e2e::TempDir::new("weak-secret");
    let file = dir.0.join("jwt");
    std::fs::write(&file, "changeme-changeme-changeme-changeme\n").unwrap();
    let stderr = start_fails(&[
        ("GW__AUTH__MODE", "jwt"),
        ("GW__AUTH__HS256_SECRET_FILE", file.to_str().unwrap()),
    ]);
    assert!(stderr.contains("auth.hs256_secret_file"), "{stderr}");
    assert!(stderr.contains("placeholder word"), "{stderr}");
}

/// During a drain the public listener closes its sockets while the internal one keeps
/// answering, so the orchestrator sees the replica go unready rather than vanish.
#[test]
fn while_draining_the_internal_listener_reports_not_ready() {
    let mut gateway = Gateway::start(None, &[("GW__SERVER__DRAIN_TIMEOUT_MS", "3000")]);
    // A client that never reads keeps the drain going until its deadline.
    let (status, _stuck) = e2e::RawSocket::handshake(gateway.addr, "/ws/notifications/62/");
    assert_eq!(status, 101);
    // SAFETY: kill(2) on the gateway child this test owns.
    unsafe {
        libc::kill(gateway.pid() as libc::pid_t, libc::SIGTERM);
    }
    gateway.wait_for_readiness(503);
    let (_, body) = e2e::http_get(gateway.internal, "/readyz").unwrap();
    assert!(body.contains(r#""draining":true"#), "{body}");
    let (status, took) = gateway.terminate();
    assert!(status.success(), "{status:?}");
    assert!(took < std::time::Duration::from_secs(4), "{took:?}");
}
