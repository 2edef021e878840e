//! Token classes one by one, then a seeded fuzz loop over token, transport and path parsing.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;
use crate::config::{AuthMode, JwtAlgorithm, Secret};

const SECRET: &str = "5e0b9d3a7f1c8e2b6d4a9f0c3e7b1d5a8c2f6e0b4d9a3c7f";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn settings() -> Settings {
    let mut s = Settings::defaults();
    s.auth.mode = AuthMode::Jwt;
    s.auth.algorithm = JwtAlgorithm::HS256;
    s.auth.hs256_secret = Secret(SECRET.into());
    s
}

fn gate(settings: &Settings) -> Gate {
    Gate::from_settings(settings).expect("valid test settings")
}

/// Claims as djangorestframework-simplejwt puts them in an access token.
fn simplejwt_claims(user: u64) -> Value {
    json!({
        "token_type": "access",
        "exp": now() + 300,
        "iat": now(),
        "jti": "8f9a1c2e4b7d4e0f9a1c2e4b7d4e0f9a",
        "user_id": user,
    })
}

fn sign(claims: &Value) -> String {
    sign_with(Header::new(jsonwebtoken::Algorithm::HS256), claims, SECRET)
}

fn sign_with(header: Header, claims: &Value, secret: &str) -> String {
    encode(
        &header,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn user(id: u64) -> UserId {
    UserId::new(id).unwrap()
}

fn admit(gate: &Gate, query: &str, path_user: UserId) -> Result<Admission, AuthError> {
    gate.admit_parts(
        RequestParts {
            query,
            origin: None,
            protocols: std::iter::empty(),
            authorization: std::iter::empty(),
        },
        path_user,
    )
}

fn admit_token(gate: &Gate, token: &str, path_user: u64) -> Result<Admission, AuthError> {
    admit(gate, &format!("token={token}"), user(path_user))
}

#[test]
fn a_simplejwt_access_token_opens_its_own_users_socket_only() {
    let gate = gate(&settings());
    let token = sign(&simplejwt_claims(42));
    let admitted = admit_token(&gate, &token, 42).unwrap();
    let close_at = admitted.close_at.expect("a deadline from exp");
    let left = close_at - Instant::now();
    assert!(
        left > Duration::from_secs(290) && left <= Duration::from_secs(306),
        "{left:?}"
    );
    assert_eq!(
        admit_token(&gate, &token, 43),
        Err(AuthError::TokenForAnotherUser)
    );
    assert_eq!(admit(&gate, "", user(42)), Err(AuthError::TokenMissing));
    // A string user id, as simplejwt writes non-integer primary keys.
    let mut claims = simplejwt_claims(42);
    claims["user_id"] = json!("42");
    assert!(admit_token(&gate, &sign(&claims), 42).is_ok());
}

#[test]
fn every_malformed_token_class_is_refused() {
    let gate = gate(&settings());
    let valid = simplejwt_claims(7);
    let invalid = |r: Result<Admission, AuthError>| matches!(r, Err(AuthError::TokenInvalid(_)));

    // alg: none, unsigned, and with the right claims.
    let payload = b64(valid.to_string().as_bytes());
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"None"}"#,
        r#"{"typ":"JWT"}"#,
    ] {
        let token = format!("{}.{payload}.", b64(header.as_bytes()));
        assert!(invalid(admit_token(&gate, &token, 7)), "{header}");
    }
    // A wrong algorithm with the right secret.
    for alg in [
        jsonwebtoken::Algorithm::HS384,
        jsonwebtoken::Algorithm::HS512,
    ] {
        assert!(invalid(admit_token(
            &gate,
            &sign_with(Header::new(alg), &valid, SECRET),
            7
        )));
    }
    // Another secret: a bad signature.
    let forged = sign_with(
        Header::default(),
        &valid,
        "another-secret-of-sufficient-length-0000",
    );
    assert_eq!(
        admit_token(&gate, &forged, 7),
        Err(AuthError::TokenInvalid("bad signature"))
    );
    // The signature of one token on the claims of another.
    let other = sign(&simplejwt_claims(8));
    let (head_and_claims, _) = other.rsplit_once('.').unwrap();
    let (_, signature) = sign(&valid)
        .rsplit_once('.')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .unwrap();
    assert!(invalid(admit_token(
        &gate,
        &format!("{head_and_claims}.{signature}"),
        8
    )));

    let with = |edit: &dyn Fn(&mut Value)| {
        let mut claims = valid.clone();
        edit(&mut claims);
        sign(&claims)
    };
    assert_eq!(
        admit_token(&gate, &with(&|c| c["exp"] = json!(now() - 1)), 7),
        Err(AuthError::TokenExpired)
    );
    for token in [
        with(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
        with(&|c| c["exp"] = json!("tomorrow")),
        with(&|c| c["nbf"] = json!(now() + 60)),
        with(&|c| c["token_type"] = json!("refresh")),
        with(&|c| {
            c.as_object_mut().unwrap().remove("token_type");
        }),
        with(&|c| {
            c.as_object_mut().unwrap().remove("user_id");
        }),
        with(&|c| c["user_id"] = json!(-7)),
        with(&|c| c["user_id"] = json!(7.0)),
        with(&|c| c["user_id"] = json!("007")),
        with(&|c| c["user_id"] = json!(0)),
        with(&|c| c["user_id"] = json!(u64::MAX)),
        with(&|c| c["user_id"] = json!([7])),
        with(&|c| c["aud"] = json!("someone-else")),
        "".to_owned() + "a.b.c",
        "not a token".to_owned(),
        "a.b".to_owned(),
        "....".to_owned(),
    ] {
        assert!(invalid(admit_token(&gate, &token, 7)), "{token}");
    }
}

#[test]
fn audience_and_issuer_are_required_once_configured() {
    let mut s = settings();
    s.auth.audience = "parking-gateway".into();
    s.auth.issuer = "https://api.parking.example".into();
    let gate = gate(&s);
    let mut claims = simplejwt_claims(5);
    // Both are missing: jsonwebtoken checks required claims in a set's (random) order.
    let missing = admit_token(&gate, &sign(&claims), 5);
    assert!(
        missing == Err(AuthError::TokenInvalid("aud claim missing"))
            || missing == Err(AuthError::TokenInvalid("iss claim missing")),
        "{missing:?}"
    );
    claims["aud"] = json!("parking-gateway");
    assert_eq!(
        admit_token(&gate, &sign(&claims), 5),
        Err(AuthError::TokenInvalid("iss claim missing"))
    );
    claims["iss"] = json!("https://evil.example");
    assert_eq!(
        admit_token(&gate, &sign(&claims), 5),
        Err(AuthError::TokenInvalid("wrong issuer"))
    );
    claims["iss"] = json!("https://api.parking.example");
    assert!(admit_token(&gate, &sign(&claims), 5).is_ok());
    claims["aud"] = json!(["other", "parking-gateway"]);
    assert!(admit_token(&gate, &sign(&claims), 5).is_ok());
}

#[test]
fn claim_names_and_token_type_are_configurable() {
    let mut s = settings();
    s.auth.user_claim = "sub".into();
    s.auth.token_type = String::new();
    let gate = gate(&s);
    let claims = json!({ "sub": "9", "exp": now() + 60 });
    assert!(admit_token(&gate, &sign(&claims), 9).is_ok());
    assert!(admit_token(&gate, &sign(&simplejwt_claims(9)), 9).is_err());
}

#[test]
fn without_jwt_anyone_is_admitted_but_the_origin_is_still_checked() {
    let mut s = Settings::defaults();
    let open = gate(&s);
    assert!(!open.requires_token());
    assert_eq!(admit(&open, "", user(1)), Ok(Admission { close_at: None }));
    s.origin.allowed = vec!["https://app.example.com".into()];
    s.parse_lists().unwrap();
    let gate = gate(&s);
    let parts = |origin| RequestParts {
        query: "",
        origin,
        protocols: std::iter::empty(),
        authorization: std::iter::empty(),
    };
    assert_eq!(
        gate.admit_parts(parts(Some("https://evil.example.com")), user(1)),
        Err(AuthError::OriginForbidden)
    );
    assert_eq!(
        gate.admit_parts(parts(None), user(1)),
        Err(AuthError::OriginMissing)
    );
    assert!(gate
        .admit_parts(parts(Some("https://app.example.com")), user(1))
        .is_ok());
}

#[test]
fn far_future_expiry_does_not_overflow() {
    let gate = gate(&settings());
    for exp in [u64::MAX, u64::MAX / 1000, i64::MAX as u64, 253_402_300_799] {
        let mut claims = simplejwt_claims(3);
        claims["exp"] = json!(exp);
        let admitted = admit_token(&gate, &sign(&claims), 3);
        assert!(admitted.is_ok(), "{exp}: {admitted:?}");
    }
}

#[test]
fn error_codes_line_up_with_their_metric_labels() {
    for e in [
        AuthError::TokenMissing,
        AuthError::TokenInvalid("x"),
        AuthError::TokenExpired,
        AuthError::TokenForAnotherUser,
        AuthError::OriginForbidden,
        AuthError::OriginMissing,
    ] {
        assert_eq!(AuthError::CODES[e.index()], e.code());
    }
}

/// xorshift64*: a fixed seed makes every run try the same inputs, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A variation on `token`: the kinds of damage a hostile or broken client produces.
fn mutate(rng: &mut Rng, token: &str, others: &[String]) -> String {
    const NOISE: &[u8] = b"ABCxyz019-_.=+/% \0\xff";
    let mut bytes = token.as_bytes().to_vec();
    match rng.below(9) {
        0 => {
            let i = rng.below(bytes.len());
            bytes[i] = *rng.pick(b"AaZz09-_.");
        }
        1 => bytes.truncate(rng.below(bytes.len())),
        2 => {
            let i = rng.below(bytes.len() + 1);
            bytes.insert(i, *rng.pick(NOISE));
        }
        3 => {
            // Header and claims of one token, signature of another.
            let other = rng.pick(others);
            let head = token.rsplit_once('.').unwrap().0;
            let sig = other.rsplit_once('.').unwrap().1;
            bytes = format!("{head}.{sig}").into_bytes();
        }
        4 => {
            let parts: Vec<&str> = token.split('.').collect();
            bytes = format!("{}.{}.{}", parts[1], parts[0], parts[2]).into_bytes();
        }
        5 => bytes.extend_from_slice(format!(".{}", rng.next()).as_bytes()),
        6 => {
            let len = rng.below(64);
            bytes = (0..len).map(|_| *rng.pick(NOISE)).collect();
        }
        7 => {
            // A forged header with a chosen alg over the genuine claims.
            let alg = rng.pick(&["none", "HS256", "RS256", "ES256", "", "hs256"]);
            let claims = token.split('.').nth(1).unwrap();
            let header = b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
            bytes = format!("{header}.{claims}.").into_bytes();
        }
        _ => {} // unchanged
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn fuzzed_tokens_transports_and_paths_never_panic_nor_admit_another_user() {
    let gate = gate(&settings());
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let users = [1u64, 2, 42, 9_223_372_036_854_775_807];
    let genuine: Vec<String> = users.iter().map(|&u| sign(&simplejwt_claims(u))).collect();
    let paths = [
        "1",
        "2",
        "42",
        "0",
        "-1",
        "01",
        "+2",
        "42 ",
        "..",
        "../2",
        "%32",
        "٤٢",
        "",
        "1e3",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551616",
        "4\u{0}2",
    ];
    let (mut checked, mut admitted) = (0, 0);
    for _ in 0..20_000 {
        let original = rng.pick(&genuine).clone();
        let token = mutate(&mut rng, &original, &genuine);
        // The path segment: a known oddity, or random bytes.
        let path: String = if rng.below(4) == 0 {
            (0..rng.below(22))
                .map(|_| *rng.pick(&['0', '1', '2', '4', '9', '-', '.', '/', 'x', '٣', '\u{0}']))
                .collect()
        } else {
            (*rng.pick(&paths)).to_owned()
        };
        let Ok(path_user) = path.parse::<UserId>() else {
            continue;
        };
        // One canonical spelling per id: whatever parses prints back identically.
        assert_eq!(path_user.to_string(), path);
        checked += 1;

        let query = format!("token={token}");
        let protocol = format!("bearer, {token}");
        let authorization = format!("Bearer {token}");
        let result = match rng.below(4) {
            0 => admit(&gate, &query, path_user),
            1 => gate.admit_parts(
                RequestParts {
                    query: "",
                    origin: None,
                    protocols: std::iter::once(protocol.as_bytes()),
                    authorization: std::iter::empty(),
                },
                path_user,
            ),
            2 => gate.admit_parts(
                RequestParts {
                    query: "",
                    origin: None,
                    protocols: std::iter::empty(),
                    authorization: std::iter::once(authorization.as_bytes()),
                },
                path_user,
            ),
            _ => gate.admit_parts(
                RequestParts {
                    query: &query,
                    origin: None,
                    protocols: std::iter::once(protocol.as_bytes()),
                    authorization: std::iter::empty(),
                },
                path_user,
            ),
        };
        if result.is_ok() {
            admitted += 1;
            // Whatever got in carried a genuine signature over claims naming this user.
            let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(token.trim())
                .or_else(|_| {
                    jsonwebtoken::dangerous::insecure_decode_claims(form_decode(&token).as_str())
                })
                .expect("an admitted token decodes");
            assert_eq!(claims["user_id"], json!(path_user.get()), "{token}");
        }
    }
    assert!(
        checked > 3000,
        "enough requests reached the token check ({checked})"
    );
    assert!(
        admitted > 100,
        "the loop also exercised the accepting path ({admitted})"
    );
}

/// What a `token=` query value becomes after form decoding (`+` is a space, `%XX` a byte).
fn form_decode(value: &str) -> String {
    actix_web::web::Query::<Vec<(String, String)>>::from_query(&format!("token={value}"))
        .map(|q| q.into_inner().pop().map(|(_, v)| v).unwrap_or_default())
        .unwrap_or_default()
}
