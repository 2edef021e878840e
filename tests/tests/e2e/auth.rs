//! Authentication at the upgrade: a socket for user N opens only with a token that proves N,
//! from an allowed origin, within the per-user limit, and closes when its token expires.

use std::time::{Duration, Instant};

use crate::{numbered, publisher, start_fails, user};
use e2e::{jwt, Closed, Gateway, JwtKeys, RedisServer, WsClient};

#[tokio::test]
async fn the_seed_hole_is_closed_nobody_opens_another_users_socket() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(Some(&redis), &jwt::HS256_SETTINGS);
    let alice = jwt::access(11);
    let bob_url = gateway.ws_url("12");

    // Django Channels let anyone who knew the id in. Here: no token, no socket...
    let refusal = WsClient::refused(&bob_url, &[]).await;
    assert_eq!(refusal.status, 401);
    assert_eq!(refusal.body["error"], "token_missing", "{:?}", refusal.body);
    // ...and Alice's valid token does not open Bob's socket, whichever way it is sent.
    let with_query = format!("{bob_url}?token={alice}");
    let protocol = format!("bearer, {alice}");
    let bearer = format!("Bearer {alice}");
    for (url, headers) in [
        (with_query.as_str(), vec![]),
        (
            bob_url.as_str(),
            vec![("Sec-WebSocket-Protocol", protocol.as_str())],
        ),
        (bob_url.as_str(), vec![("Authorization", bearer.as_str())]),
    ] {
        let refusal = WsClient::refused(url, &headers).await;
        assert_eq!(refusal.status, 403, "{headers:?}");
        assert_eq!(refusal.body["error"], "token_for_another_user");
        assert!(refusal.body["message"].is_string());
    }
    assert_eq!(redis.numsub("user_12"), 0, "nothing was subscribed for Bob");

    // Alice opens her own socket with each transport.
    let alice_url = gateway.ws_url("11");
    let (by_query, selected) = WsClient::connect_with(&format!("{alice_url}?token={alice}"), &[])
        .await
        .unwrap();
    assert_eq!(selected, None);
    let (by_protocol, selected) =
        WsClient::connect_with(&alice_url, &[("Sec-WebSocket-Protocol", &protocol)])
            .await
            .unwrap();
    assert_eq!(
        selected.as_deref(),
        Some("bearer"),
        "browsers need the offered protocol echoed, never the token"
    );
    let (by_header, _) = WsClient::connect_with(&alice_url, &[("Authorization", &bearer)])
        .await
        .unwrap();

    let publisher = publisher(&redis);
    assert_eq!(publisher.publish(user(12), numbered(1)).await.unwrap(), 0);
    assert_eq!(publisher.publish(user(11), numbered(2)).await.unwrap(), 1);
    for mut socket in [by_query, by_protocol, by_header] {
        // Had Bob's notification leaked to her, it would arrive first.
        assert_eq!(socket.next_json().await["message"], "note 2");
    }
    assert_eq!(
        gateway.metric("gateway_auth_refused_total{reason=\"token_for_another_user\"}"),
        3
    );
    assert_eq!(
        gateway.metric("gateway_auth_refused_total{reason=\"token_missing\"}"),
        1
    );
}

#[tokio::test]
async fn a_socket_is_closed_with_4001_when_its_token_expires() {
    let mut settings = jwt::HS256_SETTINGS.to_vec();
    settings.push(("GW__AUTH__EXPIRY_GRACE_MS", "300"));
    let gateway = Gateway::start(None, &settings);
    let short_lived = jwt::hs256(&jwt::access_claims(21, 2));
    let opened = Instant::now();
    let mut expiring =
        WsClient::connect(&format!("{}?token={short_lived}", gateway.ws_url("21"))).await;
    let mut lasting = WsClient::connect(&format!(
        "{}?token={}",
        gateway.ws_url("21"),
        jwt::access(21)
    ))
    .await;

    assert_eq!(expiring.closed().await, Closed::Code(4001));
    let lived = opened.elapsed();
    // `exp` has whole seconds: 2 s from a truncated now is 1 to 2 s away, plus the grace.
    assert!(
        lived >= Duration::from_millis(1000) && lived < Duration::from_secs(5),
        "closed after {lived:?}"
    );
    // The same user's socket with a fresh token is untouched.
    let (status, _) = e2e::http_post_json(
        gateway.internal,
        "/api/publish",
        &[],
        r#"{"user":21,"type":"info","message":"still open"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(lasting.next_json().await["message"], "still open");
    gateway.wait_metric("gateway_sockets_open", |n| n == 1);
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_against_the_public_key_only() {
    let keys = JwtKeys::generate();
    let claims = jwt::access_claims(31, 300);
    let rsa_public = std::fs::read(&keys.rsa_public_file).unwrap();
    let ec_public = std::fs::read(&keys.ec_public_file).unwrap();
    let cases = [
        (
            "RS256",
            &keys.rsa_public_file,
            jwt::rs256(&claims, &keys.rsa_private),
            &rsa_public,
            jwt::es256(&claims, &keys.ec_private),
        ),
        (
            "ES256",
            &keys.ec_public_file,
            jwt::es256(&claims, &keys.ec_private),
            &ec_public,
            jwt::rs256(&claims, &keys.rsa_private),
        ),
    ];
    for (algorithm, public_file, genuine, public_pem, other_algorithm) in cases {
        let gateway = Gateway::start(
            None,
            &[
                ("GW__AUTH__MODE", "jwt"),
                ("GW__AUTH__ALGORITHM", algorithm),
                ("GW__AUTH__PUBLIC_KEY_FILE", public_file.to_str().unwrap()),
            ],
        );
        let url = gateway.ws_url("31");
        WsClient::connect(&format!("{url}?token={genuine}")).await;
        let forged = [
            // The classic confusion: the public key (which anyone has) as an HMAC secret,
            // under an HS256 header and under the configured algorithm's header.
            jwt::hmac_with_alg(jsonwebtoken::Algorithm::HS256, &claims, public_pem),
            jwt::hmac_with_alg(
                if algorithm == "RS256" {
                    jsonwebtoken::Algorithm::RS256
                } else {
                    jsonwebtoken::Algorithm::ES256
                },
                &claims,
                public_pem,
            ),
            other_algorithm,
            jwt::access(31),
        ];
        for token in forged {
            let refusal = WsClient::refused(&format!("{url}?token={token}"), &[]).await;
            assert_eq!(refusal.status, 401, "{algorithm}: {:?}", refusal.body);
            assert_eq!(refusal.body["error"], "token_invalid");
        }
    }
}

#[test]
fn start_up_refuses_open_doors_and_bad_keys_naming_the_key() {
    let redis = RedisServer::start();
    let url = redis.url();
    // Scaled out without an auth setting: refused.
    let stderr = start_fails(&[("GW__REDIS__URL", &url)]);
    assert!(stderr.contains("auth.mode"), "{stderr}");

    let keys = JwtKeys::generate();
    let private = keys.ec_private_file.to_str().unwrap();
    let ec_public = keys.ec_public_file.to_str().unwrap();
    let rsa_public = keys.rsa_public_file.to_str().unwrap();
    for (algorithm, file) in [
        ("ES256", private),
        ("RS256", ec_public),
        ("ES256", rsa_public),
    ] {
        let stderr = start_fails(&[
            ("GW__AUTH__MODE", "jwt"),
            ("GW__AUTH__ALGORITHM", algorithm),
            ("GW__AUTH__PUBLIC_KEY_FILE", file),
        ]);
        assert!(
            stderr.contains("auth.public_key_file"),
            "{algorithm} {file}: {stderr}"
        );
    }
    let stderr = start_fails(&[
        ("GW__AUTH__MODE", "jwt"),
        ("GW__AUTH__HS256_SECRET", "short"),
    ]);
    assert!(stderr.contains("auth.hs256_secret"), "{stderr}");
}

#[tokio::test]
async fn without_any_auth_setting_a_single_node_starts_open_and_says_so_loudly() {
    let gateway = Gateway::start(None, &[("GW__AUTH__MODE", "")]);
    gateway.wait_log("AUTHENTICATION IS DISABLED");
    WsClient::connect(&gateway.ws_url("3")).await;
    let explicit = Gateway::start(None, &[("GW__AUTH__MODE", "none")]);
    explicit.wait_log("AUTHENTICATION IS DISABLED");
}

#[tokio::test]
async fn only_pages_of_allowed_origins_may_open_sockets() {
    let allowed = (
        "GW__ORIGIN__ALLOWED",
        "https://app.example.com,https://*.parking.example",
    );
    let gateway = Gateway::start(None, &[allowed]);
    let url = gateway.ws_url("5");
    for origin in ["https://app.example.com", "https://EU.parking.example:443"] {
        WsClient::connect_with(&url, &[("Origin", origin)])
            .await
            .unwrap_or_else(|r| panic!("{origin}: {r:?}"));
    }
    for origin in [
        "https://evil.example",
        "null",
        "https://app.example.com.evil.example",
        "http://app.example.com",
        "https://parking.example",
        "https://app.example.com:8443",
    ] {
        let refusal = WsClient::refused(&url, &[("Origin", origin)]).await;
        assert_eq!(refusal.status, 403, "{origin}");
        assert_eq!(refusal.body["error"], "origin_forbidden");
    }
    // No Origin (not a browser): refused unless configured.
    assert_eq!(WsClient::refused(&url, &[]).await.status, 403);
    let lenient = Gateway::start(None, &[allowed, ("GW__ORIGIN__ALLOW_MISSING", "true")]);
    WsClient::connect(&lenient.ws_url("5")).await;
    let refusal =
        WsClient::refused(&lenient.ws_url("5"), &[("Origin", "https://evil.example")]).await;
    assert_eq!(refusal.status, 403);
    assert_eq!(
        gateway.metric("gateway_auth_refused_total{reason=\"origin_forbidden\"}"),
        7
    );
}

#[tokio::test]
async fn a_user_holds_at_most_max_sockets_per_user_on_a_node() {
    let gateway = Gateway::start(None, &[("GW__SERVER__MAX_SOCKETS_PER_USER", "2")]);
    let first = WsClient::connect(&gateway.ws_url("41")).await;
    let _second = WsClient::connect(&gateway.ws_url("41")).await;
    let refusal = WsClient::refused(&gateway.ws_url("41"), &[]).await;
    assert_eq!(refusal.status, 429);
    assert_eq!(refusal.body["error"], "too_many_sockets_for_user");
    let _other_user = WsClient::connect(&gateway.ws_url("42")).await;
    first.close().await;
    gateway.wait_metric("gateway_sockets_open", |n| n == 2);
    WsClient::connect(&gateway.ws_url("41")).await;
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let mut settings = jwt::HS256_SETTINGS.to_vec();
    // Everything every crate logs, the HTTP server's traces included.
    settings.push(("RUST_LOG", "trace"));
    let gateway = Gateway::start(None, &settings);
    let valid = jwt::access(51);
    let other = jwt::access(52);
    let forged = jwt::hs256_with(
        &jwt::access_claims(51, 300),
        "some-other-secret-0123456789abcdef",
    );
    let url = gateway.ws_url("51");
    let socket = WsClient::connect(&format!("{url}?token={valid}")).await;
    WsClient::refused(&format!("{url}?token={other}"), &[]).await;
    WsClient::refused(&format!("{url}?token={forged}"), &[]).await;
    WsClient::refused(&url, &[("Authorization", &format!("Bearer {forged}"))]).await;
    WsClient::refused(
        &url,
        &[("Sec-WebSocket-Protocol", &format!("bearer, {other}"))],
    )
    .await;
    socket.close().await;
    gateway.wait_metric("gateway_sockets_open", |n| n == 0);

    let log = gateway.log();
    assert!(
        log.contains("upgrade refused"),
        "refusals are logged:\n{log}"
    );
    for token in [&valid, &other, &forged] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !log.contains(signature),
            "a token signature is in the log:\n{log}"
        );
    }
    assert!(
        !log.contains("?token="),
        "a query string is in the log:\n{log}"
    );
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let body = r#"{"user":5,"type":"info","message":"x"}"#;
    let publish = |gateway: &Gateway, forwarded: Option<&str>| {
        let headers: Vec<(&str, &str)> = forwarded
            .map(|f| ("X-Forwarded-For", f))
            .into_iter()
            .collect();
        e2e::http_post_json(gateway.internal, "/api/publish", &headers, body)
            .unwrap()
            .0
    };
    // No API key configured: only clients on this machine may publish.
    let direct = Gateway::start(None, &[]);
    assert_eq!(publish(&direct, None), 200);
    assert_eq!(
        publish(&direct, Some("127.0.0.1")),
        401,
        "relayed by a proxy we do not trust: not local, whatever the header says"
    );
    let behind_nginx = Gateway::start(None, &[("GW__SERVER__TRUSTED_PROXIES", "127.0.0.1")]);
    assert_eq!(publish(&behind_nginx, Some("203.0.113.5")), 401);
    assert_eq!(publish(&behind_nginx, Some("127.0.0.1")), 200);
    // A client prepending a loopback address does not become local.
    assert_eq!(publish(&behind_nginx, Some("127.0.0.1, 203.0.113.5")), 401);
}

#[test]
fn the_history_api_needs_the_users_token_too() {
    let gateway = Gateway::start(None, &jwt::HS256_SETTINGS);
    let (status, _) = e2e::http_post_json(
        gateway.internal,
        "/api/publish",
        &[],
        r#"{"user":13,"type":"info","message":"your booking is confirmed"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    let get = |target: &str, authorization: Option<&str>| {
        let header = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\n{header}Connection: close\r\n\r\n",
            gateway.addr
        );
        let (status, body) = e2e::http_request(gateway.addr, &request).unwrap();
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        )
    };
    let own = jwt::access(13);
    let (status, body) = get("/api/notifications/13", None);
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_missing"))
    );
    let (status, body) = get(
        "/api/notifications/13",
        Some(&format!("Bearer {}", jwt::access(14))),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("token_for_another_user"))
    );
    let (status, body) = get("/api/notifications/13", Some(&format!("Bearer {own}")));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["notifications"][0]["message"],
        "your booking is confirmed"
    );
    let (status, _) = get(&format!("/api/notifications/13?token={own}&limit=5"), None);
    assert_eq!(status, 200);
}
