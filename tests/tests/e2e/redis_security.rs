//! The gateway and publisher-lib reach a Redis that wants a password, an ACL user, or TLS
//! with a private CA; wrong credentials or an untrusted certificate keep the node unready,
//! and secrets stay out of its log.

use std::sync::Arc;

use e2e::proxy::TestCa;
use e2e::{Gateway, RedisOptions, RedisServer, WsClient};
use publisher::{ErrorKind, Publisher};

use crate::{numbered, publisher, user};

#[tokio::test]
async fn a_password_protected_redis_is_reached_with_the_password_in_the_url() {
    let redis = RedisServer::start_with(RedisOptions {
        password: Some("pw-for-the-default-user".into()),
        ..Default::default()
    });
    let gateway = Gateway::start(Some(&redis), &[]);
    let mut client = WsClient::connect(&gateway.ws_url("51")).await;
    assert_eq!(
        publisher(&redis)
            .publish(user(51), numbered(1))
            .await
            .unwrap(),
        1
    );
    assert_eq!(client.next_json().await["message"], "note 1");
    assert!(!gateway.log().contains("pw-for-the-default-user"));

    // A wrong password: the node stays unready and says why; the publisher gets an error.
    let wrong = redis.url_with_credentials(":not-the-password@");
    let locked_out = Gateway::spawn(Some(&redis), &[("GW__REDIS__URL", wrong.as_str())]);
    locked_out.wait_log("redis connect failed");
    locked_out.wait_for_readiness(503);
    assert!(!locked_out.log().contains("not-the-password"));
    let err = Publisher::connect(&wrong)
        .unwrap()
        .publish(user(51), numbered(2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RedisUnavailable, "{err}");
}

/// The least-privilege Redis user for gateways and publishers, as docs/SECURITY.md gives it.
const ACL_RULES: &str = "gateway on >gw-acl-pw resetchannels &user_* &gateway_canary:* \
    resetkeys ~history:user_* ~schedule:{gw}:* ~presence:{gw}:* -@all +@connection +ping \
    +unwatch +subscribe +unsubscribe +publish +evalsha +eval +script|load +exists +time \
    +xadd +xtrim +pexpire +xrange +xrevrange +xinfo|stream +multi +exec +zadd +zrem +zrange \
    +zrangebyscore +zremrangebyscore +hset +hget +hdel +hmget +hincrby +del";

#[tokio::test]
async fn a_least_privilege_acl_user_is_enough() {
    // The ACL of docs/SECURITY.md: user channels and the readiness canary's, the history
    // streams and publish-once keys, and only the commands the gateway and its Lua scripts
    // run (plus UNWATCH, the connection pool's health check).
    let rules = ACL_RULES;
    let redis = RedisServer::start_with(RedisOptions {
        password: Some("admin-pw".into()),
        acl_users: vec![rules.into()],
        ..Default::default()
    });
    let url = redis.url_with_credentials("gateway:gw-acl-pw@");
    let gateway = Gateway::start(Some(&redis), &[("GW__REDIS__URL", url.as_str())]);
    let mut client = WsClient::connect(&gateway.ws_url("52")).await;
    let (status, _) = e2e::http_post_json(
        gateway.internal,
        "/api/publish",
        &[],
        r#"{"user":52,"type":"info","message":"through the ACL user"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(client.next_json().await["message"], "through the ACL user");
    let acl_publisher = Publisher::connect(&url).unwrap();
    assert_eq!(
        acl_publisher.publish(user(52), numbered(3)).await.unwrap(),
        1
    );
    let first = client.next_json().await;
    assert_eq!(first["message"], "note 3");
    // History reads work under it too: a resume replays, the inbox API pages.
    let first_id = first["id"].as_str().expect("notifications carry their id");
    let (status, _) = e2e::http_post_json(
        gateway.internal,
        "/api/publish",
        &[],
        r#"{"user":52,"type":"info","message":"missed"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    let mut resumed =
        WsClient::connect(&format!("{}?last_id={first_id}", gateway.ws_url("52"))).await;
    assert_eq!(resumed.next_json().await["message"], "missed");
    let (status, body) = e2e::http_get(gateway.addr, "/api/notifications/52").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("missed"), "{body}");

    // Scheduled notifications and presence too: the gateway fires and reports under it.
    let soon = std::time::SystemTime::now() + std::time::Duration::from_millis(200);
    acl_publisher
        .schedule(user(52), numbered(4), soon, "acl:52")
        .await
        .unwrap();
    assert!(acl_publisher.cancel("acl:none").await.is_ok());
    assert_eq!(resumed.next_json().await["message"], "note 4");
    let deadline = std::time::Instant::now() + e2e::DEADLINE;
    // Two sockets of user 52 are open on the gateway.
    while acl_publisher.presence(&[user(52)], true).await.unwrap()[0].sockets != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "presence never counted the sockets"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(gateway.metric("gateway_presence_beat_failures_total"), 0);
    assert!(
        !gateway.log().contains("cannot be fired"),
        "{}",
        gateway.log()
    );
}

#[tokio::test]
async fn redis_over_tls_with_a_private_ca() {
    let pki = Arc::new(TestCa::generate());
    let redis = RedisServer::start_with(RedisOptions {
        password: Some("tls-and-a-password".into()),
        tls: Some(pki.clone()),
        ..Default::default()
    });
    assert!(redis.url().starts_with("rediss://"));
    // The harness passes the CA as GW__REDIS__CA_FILE.
    let gateway = Gateway::start(Some(&redis), &[]);
    let mut client = WsClient::connect(&gateway.ws_url("53")).await;
    assert_eq!(
        publisher(&redis)
            .publish(user(53), numbered(4))
            .await
            .unwrap(),
        1
    );
    assert_eq!(client.next_json().await["message"], "note 4");
    let (status, _) = e2e::http_post_json(
        gateway.internal,
        "/api/publish",
        &[],
        r#"{"user":53,"type":"info","message":"over TLS"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(client.next_json().await["message"], "over TLS");

    // A certificate from a CA the client does not trust is refused by both.
    let stranger = TestCa::generate();
    let ca_file = stranger.ca_pem();
    let ca_file = ca_file.to_str().unwrap();
    let untrusting = Gateway::spawn(Some(&redis), &[("GW__REDIS__CA_FILE", ca_file)]);
    untrusting.wait_log("redis connect failed");
    untrusting.wait_for_readiness(503);
    let err = Publisher::with_tls_ca(
        &redis.url(),
        &std::fs::read(stranger.ca_pem()).unwrap(),
        Default::default(),
    )
    .unwrap()
    .publish(user(53), numbered(5))
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RedisUnavailable, "{err}");
}
