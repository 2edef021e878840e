//! Keys made with the openssl CLI at test time, and JWTs for authentication tests.

use super::*;

fn openssl(args: &[&str], dir: &Path) {
    let program = require_program("openssl", "openssl");
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// RSA (2048) and P-256 key pairs for RS256/ES256 tokens: PKCS#8 private keys, SPKI public.
pub struct JwtKeys {
    pub rsa_private: Vec<u8>,
    pub rsa_public_file: PathBuf,
    pub ec_private: Vec<u8>,
    pub ec_public_file: PathBuf,
    pub ec_private_file: PathBuf,
    _dir: TempDir,
}

impl JwtKeys {
    pub fn generate() -> Self {
        let dir = TempDir::new("jwt-keys");
        for (algorithm, option, name) in [
            ("RSA", "rsa_keygen_bits:2048", "rsa"),
            ("EC", "ec_paramgen_curve:P-256", "ec"),
        ] {
            let key = format!("{name}.key");
            openssl(
                &[
                    "genpkey",
                    "-algorithm",
                    algorithm,
                    "-pkeyopt",
                    option,
                    "-out",
                    &key,
                ],
                &dir.0,
            );
            openssl(
                &[
                    "pkey",
                    "-in",
                    &key,
                    "-pubout",
                    "-out",
                    &format!("{name}.pub"),
                ],
                &dir.0,
            );
        }
        JwtKeys {
            rsa_private: std::fs::read(dir.0.join("rsa.key")).unwrap(),
            rsa_public_file: dir.0.join("rsa.pub"),
            ec_private: std::fs::read(dir.0.join("ec.key")).unwrap(),
            ec_public_file: dir.0.join("ec.pub"),
            ec_private_file: dir.0.join("ec.key"),
            _dir: dir,
        }
    }
}

/// Tokens as the Django backend (djangorestframework-simplejwt) issues them, and broken ones.
pub mod jwt {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::{json, Value};

    /// The backend's signing key in the tests (simplejwt's SIGNING_KEY).
    pub const SECRET: &str = "7d2f9a4c1e8b5f3a0c6e9d2b7f4a1c8e5b3d0f6a9c2e7b4d";

    /// `GW__*` settings of a gateway that verifies [`SECRET`]-signed HS256 tokens.
    pub const HS256_SETTINGS: [(&str, &str); 2] = [
        ("GW__AUTH__MODE", "jwt"),
        ("GW__AUTH__HS256_SECRET", SECRET),
    ];

    pub fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// An access token's claims, expiring `ttl_secs` from now (negative: in the past).
    pub fn access_claims(user: u64, ttl_secs: i64) -> Value {
        json!({
            "token_type": "access",
            "exp": now() + ttl_secs,
            "iat": now(),
            "jti": format!("{:032x}", now() as u128 * 7919 + u128::from(user)),
            "user_id": user,
        })
    }

    pub fn hs256(claims: &Value) -> String {
        hs256_with(claims, SECRET)
    }

    pub fn hs256_with(claims: &Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    /// A simplejwt access token for `user`, valid five minutes.
    pub fn access(user: u64) -> String {
        hs256(&access_claims(user, 300))
    }

    pub fn rs256(claims: &Value, private_pem: &[u8]) -> String {
        let key = EncodingKey::from_rsa_pem(private_pem).unwrap();
        encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
    }

    pub fn es256(claims: &Value, private_pem: &[u8]) -> String {
        let key = EncodingKey::from_ec_pem(private_pem).unwrap();
        encode(&Header::new(Algorithm::ES256), claims, &key).unwrap()
    }

    /// HS-signed with `secret` bytes but any `alg` header: the key-confusion attack.
    pub fn hmac_with_alg(alg: Algorithm, claims: &Value, secret: &[u8]) -> String {
        let header = Header::new(alg);
        let signing_alg = match alg {
            Algorithm::HS384 => Algorithm::HS384,
            Algorithm::HS512 => Algorithm::HS512,
            _ => Algorithm::HS256,
        };
        let signed = encode(
            &Header::new(signing_alg),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap();
        if signing_alg == alg {
            return signed;
        }
        // Re-sign the claims under the forged header with the same HMAC key.
        let claims_part = signed.split('.').nth(1).unwrap();
        let header_part = b64(serde_json::to_string(&header).unwrap().as_bytes());
        let message = format!("{header_part}.{claims_part}");
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(secret),
            signing_alg,
        )
        .unwrap();
        format!("{message}.{signature}")
    }

    /// A token with a hand-written header and no signature (`alg: none` and friends).
    pub fn unsigned(header_json: &str, claims: &Value) -> String {
        format!(
            "{}.{}.",
            b64(header_json.as_bytes()),
            b64(claims.to_string().as_bytes())
        )
    }

    /// base64url without padding, as JWTs use.
    pub fn b64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}
