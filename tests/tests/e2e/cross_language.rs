//! Publishing without Rust: the HTTP endpoint (typed events by name), the `notify` CLI
//! (publish, schedule, cancel, presence), and the README's redis-py snippet, each received by
//! a real WebSocket client.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use e2e::{Gateway, RedisServer, WsClient};
use publisher::Event;
use serde_json::Value;

const KEY: &str = "f0c6a2e8d4b1937c5a0e6f2d8b4c1a79";

fn post(gateway: &Gateway, body: &str) -> (u16, Value) {
    let auth = format!("Bearer {KEY}");
    let (status, answer) = e2e::http_post_json(
        gateway.internal,
        "/api/publish",
        &[("Authorization", &auth)],
        body,
    )
    .expect("POST /api/publish");
    let json = serde_json::from_str(&answer)
        .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {answer}"));
    (status, json)
}

#[tokio::test]
async fn http_publish_of_a_typed_event_gets_its_level_and_default_message() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(Some(&redis), &[("GW__PUBLISH__API_KEYS", KEY)]);
    let mut client = WsClient::connect(&gateway.ws_url("42")).await;

    let (status, answer) = post(
        &gateway,
        r#"{"user": 42, "event": "booking.expiring_soon", "data": {"booking_id": 1881, "slot": "A-12", "minutes_left": 5}}"#,
    );
    assert_eq!(
        (status, &answer),
        (200, &serde_json::json!({"receivers": 1}))
    );
    let frame = client.next_json().await;
    let expected = Event::BookingExpiringSoon {
        booking_id: 1881,
        slot: "A-12".into(),
        minutes_left: 5,
    };
    assert_eq!(frame["type"], "warning");
    assert_eq!(frame["message"], expected.default_message().as_str());
    assert_eq!(frame["event"], "booking.expiring_soon");
    assert_eq!(frame["data"], Value::Object(expected.data()));
    assert!(frame["timestamp"].as_u64().is_some(), "{frame}");

    // Own wording (a translation) keeps the event's level and data.
    let (status, _) = post(
        &gateway,
        r#"{"users": [42], "event": "carwash.completed", "message": "Votre voiture est prête", "data": {"booking_id": 7, "service": "Basic"}}"#,
    );
    assert_eq!(status, 200);
    let frame = client.next_json().await;
    assert_eq!(frame["type"], "success");
    assert_eq!(frame["message"], "Votre voiture est prête");
}

#[tokio::test]
async fn http_publish_refuses_bad_bodies_with_a_400_that_names_the_problem() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(Some(&redis), &[("GW__PUBLISH__API_KEYS", KEY)]);
    let mut client = WsClient::connect(&gateway.ws_url("42")).await;

    for (body, hint) in [
        (
            r#"{"user": 42, "event": "booking.exploded", "data": {}}"#,
            "booking.expiring_soon",
        ),
        (
            r#"{"user": 42, "event": "booking.expired", "data": {"booking_id": 1}}"#,
            "`slot`",
        ),
        (
            r#"{"user": 42, "event": "booking.expired", "data": {"booking_id": "1", "slot": "A"}}"#,
            "`booking_id` must be",
        ),
        (
            r#"{"user": 42, "event": "booking.expired", "data": {"bookingId": 1, "slot": "A"}}"#,
            "`bookingId`",
        ),
        (
            r#"{"user": 42, "message": "no type, no event"}"#,
            "\"type\"",
        ),
        (r#"{"user": 42, "type": "info"}"#, "\"message\""),
        (
            r#"{"user": 42, "type": "info", "message": "x", "mesage": "typo"}"#,
            "mesage",
        ),
        (r#"{"user": 42, "type": "info", "message": "  "}"#, "empty"),
        (
            r#"{"user": 42, "type": "info", "message": "x", "data": [1]}"#,
            "data",
        ),
    ] {
        let (status, answer) = post(&gateway, body);
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"], "invalid_body", "{body}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(hint),
            "{body}: {hint:?} not in {message:?}"
        );
    }
    // Nothing of the refused bodies reached the user: the next frame is this one.
    let (status, _) = post(&gateway, r#"{"user": 42, "type": "info", "message": "ok"}"#);
    assert_eq!(status, 200);
    assert_eq!(client.next_json().await["message"], "ok");
}

/// Runs the `notify` CLI (publisher-lib/src/bin/notify.rs) with `REDIS_URL` unset.
fn notify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_notify-e2e"))
        .env_remove("REDIS_URL")
        .args(args)
        .output()
        .expect("running notify")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn the_notify_cli_publishes_free_form_and_typed_notifications() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(Some(&redis), &[]);
    let mut client = WsClient::connect(&gateway.ws_url("42")).await;
    let url = redis.url();

    let out = notify(&[
        "--redis",
        &url,
        "--user",
        "42",
        "--type",
        "info",
        "--message",
        "Parking B closes at 22:00",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "receivers: 1");
    let frame = client.next_json().await;
    assert_eq!(
        (frame["type"].as_str(), frame["message"].as_str()),
        (Some("info"), Some("Parking B closes at 22:00"))
    );

    // REDIS_URL is the default for --redis; a second user without a socket counts 0.
    let out = Command::new(env!("CARGO_BIN_EXE_notify-e2e"))
        .env("REDIS_URL", &url)
        .args(["--user", "42", "--user", "43", "--event", "booking.expired"])
        .args(["--data", r#"{"booking_id": 1881, "slot": "A-12"}"#])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "receivers: 1");
    let frame = client.next_json().await;
    assert_eq!(frame["type"], "info");
    assert_eq!(frame["event"], "booking.expired");
    assert_eq!(frame["message"], "Your booking for slot A-12 has expired");
}

#[tokio::test]
async fn the_notify_cli_schedules_cancels_and_asks_presence() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(Some(&redis), &[]);
    let url = redis.url();
    let mut client = WsClient::connect(&gateway.ws_url("42")).await;

    // Presence follows the socket within the heartbeat; user 43 has none.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = notify(&[
            "--redis",
            &url,
            "--presence",
            "--user",
            "42",
            "--user",
            "43",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        if text(&out.stdout) == "42: 1\n43: 0\n" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "presence never counted the socket: {}",
            text(&out.stdout)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Two items for user 42; the first is cancelled before it is due, so the second (due
    // later) is the next frame, stamped with its due time.
    let schedule = |message: &str, at: &str, key: &str| {
        notify(&[
            "--redis",
            &url,
            "--user",
            "42",
            "--type",
            "info",
            "--message",
            message,
            "--at",
            at,
            "--key",
            key,
        ])
    };
    let out = schedule("cancelled", "+1", "cli:cancelled");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = schedule("due", "+1.5", "cli:due");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let due: u64 = stdout
        .trim()
        .strip_prefix("scheduled: cli:due at ")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("unexpected answer: {stdout}"));
    let out = notify(&["--redis", &url, "--cancel", "cli:cancelled"]);
    assert_eq!(
        text(&out.stdout).trim(),
        "cancelled: true",
        "{}",
        text(&out.stderr)
    );
    let out = notify(&["--redis", &url, "--cancel", "cli:cancelled"]);
    assert_eq!(
        text(&out.stdout).trim(),
        "cancelled: false",
        "nothing left to cancel"
    );

    let frame = client.next_json().await;
    assert_eq!(frame["message"], "due", "the cancelled item never fires");
    assert_eq!(
        frame["timestamp"].as_u64(),
        Some(due),
        "stamped with its due time"
    );

    // Bad input: exit 2 and the reason.
    for (args, hint) in [
        (
            vec![
                "--user",
                "42",
                "--type",
                "info",
                "--message",
                "x",
                "--at",
                "+1",
            ],
            "--at needs --key",
        ),
        (
            vec![
                "--user",
                "42",
                "--type",
                "info",
                "--message",
                "x",
                "--at",
                "soon",
                "--key",
                "k",
            ],
            "--at \"soon\"",
        ),
        (
            vec![
                "--user",
                "1",
                "--user",
                "2",
                "--type",
                "info",
                "--message",
                "x",
                "--at",
                "+1",
                "--key",
                "k",
            ],
            "one --user",
        ),
        (vec!["--cancel", "not a key!"], "key"),
        (vec!["--presence"], "--user"),
        (
            vec!["--presence", "--user", "1", "--type", "info"],
            "--presence takes only",
        ),
    ] {
        let mut full = vec!["--redis", url.as_str()];
        full.extend(&args);
        let out = notify(&full);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(hint),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn the_notify_cli_exits_2_on_bad_input_and_1_when_redis_is_down() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    for (args, hint) in [
        (vec!["--type", "info", "--message", "x"], "--user"),
        (
            vec!["--user", "007", "--type", "info", "--message", "x"],
            "--user \"007\"",
        ),
        (
            vec!["--user", "1", "--type", "loud", "--message", "x"],
            "--type \"loud\"",
        ),
        (vec!["--user", "1", "--event", "nope"], "unknown event"),
        (
            vec!["--user", "1", "--event", "booking.expired", "--data", "[1]"],
            "JSON object",
        ),
        (
            vec!["--user", "1", "--event", "booking.expired", "--data", "{}"],
            "`booking_id`",
        ),
        (vec!["--user", "1", "--frobnicate"], "--frobnicate"),
        (vec!["--user", "1", "--message", "x"], "\"type\""),
    ] {
        let mut full = vec!["--redis", url.as_str()];
        full.extend(&args);
        let out = notify(&full);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(hint), "{args:?}: {hint:?} not in {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = notify(&[
        "--redis",
        "http://not-redis",
        "--user",
        "1",
        "--type",
        "info",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    redis.kill();
    let out = notify(&[
        "--redis",
        &url,
        "--user",
        "1",
        "--type",
        "info",
        "--message",
        "x",
        "--timeout-ms",
        "500",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("Redis"), "{}", text(&out.stderr));
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_owned()
}

/// The line after which README.md holds the Python publishing snippet.
const SNIPPET_MARKER: &str = "<!-- snippet:python-publish -->";

/// The first ```python block after the marker in `markdown`.
fn python_snippet(markdown: &str) -> Option<String> {
    let after = &markdown[markdown.find(SNIPPET_MARKER)? + SNIPPET_MARKER.len()..];
    let start = after.find("```python\n")? + "```python\n".len();
    let end = after[start..].find("\n```")?;
    Some(after[start..start + end + 1].to_owned())
}

#[tokio::test]
async fn the_readme_python_snippet_reaches_a_browser() {
    let source = repo_root().join("README.md");
    let markdown = std::fs::read_to_string(&source).unwrap();
    let snippet = python_snippet(&markdown).unwrap_or_else(|| {
        panic!(
            "{} has no ```python block after {SNIPPET_MARKER}",
            source.display()
        )
    });

    let python = e2e::require_program("python3", "python3");
    let has_redis_py = Command::new(&python)
        .args(["-c", "import redis"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_redis_py,
        "python3 lacks redis-py: `python3 -m pip install redis` (./tests/run.sh does it)"
    );

    let redis = RedisServer::start();
    let gateway = Gateway::start(Some(&redis), &[]);
    let mut client = WsClient::connect(&gateway.ws_url("42")).await;
    // From a checkout, as the README says: the snippet finds publisher-lib/src/publish.lua.
    let out = Command::new(&python)
        .current_dir(repo_root())
        .env_remove("PUBLISH_LUA")
        .arg("-c")
        .arg(&snippet)
        .env("REDIS_URL", redis.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the snippet from {} failed:\n{snippet}\n{}",
        source.display(),
        text(&out.stderr)
    );
    let frame = client.next_json().await;
    assert!(
        matches!(
            frame["type"].as_str(),
            Some("success" | "info" | "warning" | "error")
        ),
        "{frame}"
    );
    assert!(
        frame["message"]
            .as_str()
            .is_some_and(|m| !m.trim().is_empty()),
        "{frame}"
    );
    // A timestamp lets /metrics measure the latency; the snippet should show how to send it.
    assert!(frame["timestamp"].is_number(), "{frame}");
    assert_eq!(
        gateway.metric("gateway_messages_dropped_total{cause=\"malformed\"}"),
        0
    );
}

#[test]
fn the_snippet_extractor_takes_the_first_python_block_after_the_marker() {
    let doc = "```python\nnot this\n```\n<!-- snippet:python-publish -->\ntext\n```python\nprint(1)\nprint(2)\n```\n```python\nnor this\n```\n";
    assert_eq!(python_snippet(doc).as_deref(), Some("print(1)\nprint(2)\n"));
    assert_eq!(python_snippet("```python\nx\n```"), None);
}
