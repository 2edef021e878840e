//! JWT verification with one pinned algorithm and key.
//!
//! The defaults accept the access tokens of djangorestframework-simplejwt: HS256 signed with
//! the backend's SIGNING_KEY, `user_id`, `exp` and `token_type: "access"`. The token's own
//! `alg` header only has to agree with the configured algorithm; it never chooses the key
//! type, so `alg: none` and the RS256-public-key-as-HMAC-secret trick both fail.

use std::collections::HashSet;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use publisher::wire::UserId;
use serde_json::{Map, Value};

use super::AuthError;
use crate::config::{check_hs256_secret, invalid, AuthSettings, ConfigError, JwtAlgorithm};

/// What a valid token proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub user: UserId,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
}

pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    user_claim: String,
    token_type: Option<String>,
}

impl JwtVerifier {
    /// Reads the key named by `auth` and checks that it is usable; errors name the key.
    pub fn from_settings(auth: &AuthSettings) -> Result<Self, ConfigError> {
        let (algorithm, key) = match auth.algorithm {
            JwtAlgorithm::HS256 => (Algorithm::HS256, hs256_key(auth)?),
            JwtAlgorithm::RS256 => (Algorithm::RS256, public_key(auth)?),
            JwtAlgorithm::ES256 => (Algorithm::ES256, public_key(auth)?),
        };
        let mut validation = Validation::new(algorithm);
        // No leeway: `exp` in the past is refused at once. Open sockets get
        // `auth.expiry_grace_ms` instead, applied when they are closed.
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = HashSet::from(["exp".to_owned()]);
        let audience = auth.audience.trim();
        if !audience.is_empty() {
            // jsonwebtoken only compares `aud` when present: make it required too.
            validation.set_audience(&[audience]);
            required.insert("aud".to_owned());
        }
        let issuer = auth.issuer.trim();
        if !issuer.is_empty() {
            validation.set_issuer(&[issuer]);
            required.insert("iss".to_owned());
        }
        validation.required_spec_claims = required;
        let token_type = Some(auth.token_type.trim().to_owned()).filter(|t| !t.is_empty());
        Ok(JwtVerifier {
            key,
            validation,
            user_claim: auth.user_claim.trim().to_owned(),
            token_type,
        })
    }

    /// Checks signature, algorithm and claims; never panics, whatever `token` holds.
    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| refusal(e.kind()))?;
        let claims = data.claims;
        if let Some(expected) = &self.token_type {
            if claims.get("token_type").and_then(Value::as_str) != Some(expected.as_str()) {
                return Err(AuthError::TokenInvalid("wrong token_type"));
            }
        }
        let user = match claims.get(&self.user_claim) {
            Some(Value::Number(n)) => n.as_u64().and_then(UserId::new),
            Some(Value::String(s)) => s.parse::<UserId>().ok(),
            _ => None,
        }
        .ok_or(AuthError::TokenInvalid(
            "user claim missing or not a user id",
        ))?;
        // jsonwebtoken checked that `exp` is present and a number.
        let expires_at = match claims.get("exp") {
            Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
            _ => None,
        }
        .ok_or(AuthError::TokenInvalid("exp is not a number"))?;
        Ok(Verified { user, expires_at })
    }
}

/// A short fixed reason per failure: never text taken from the token.
fn refusal(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::TokenExpired,
        ErrorKind::ImmatureSignature => AuthError::TokenInvalid("token not valid yet (nbf)"),
        ErrorKind::InvalidSignature => AuthError::TokenInvalid("bad signature"),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => AuthError::TokenInvalid("algorithm not accepted"),
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => AuthError::TokenInvalid("exp claim missing"),
            "aud" => AuthError::TokenInvalid("aud claim missing"),
            "iss" => AuthError::TokenInvalid("iss claim missing"),
            _ => AuthError::TokenInvalid("required claim missing"),
        },
        ErrorKind::InvalidClaimFormat(_) => AuthError::TokenInvalid("malformed exp or nbf claim"),
        ErrorKind::InvalidAudience => AuthError::TokenInvalid("wrong audience"),
        ErrorKind::InvalidIssuer => AuthError::TokenInvalid("wrong issuer"),
        ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidKeyFormat => {
            // Checked at start-up, so this means a bug rather than a bad client.
            tracing::error!("configured JWT key rejected while verifying");
            AuthError::TokenInvalid("token could not be verified")
        }
        _ => AuthError::TokenInvalid("malformed token"),
    }
}

fn hs256_key(auth: &AuthSettings) -> Result<DecodingKey, ConfigError> {
    let file = auth.hs256_secret_file.trim();
    if file.is_empty() {
        return Ok(DecodingKey::from_secret(auth.hs256_secret.0.as_bytes()));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| invalid("auth.hs256_secret_file", format!("{file:?}: {e}")))?;
    let secret = text
        .strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(&text);
    check_hs256_secret(secret).map_err(|problem| invalid("auth.hs256_secret_file", problem))?;
    Ok(DecodingKey::from_secret(secret.as_bytes()))
}

fn public_key(auth: &AuthSettings) -> Result<DecodingKey, ConfigError> {
    use aws_lc_rs::signature::{
        ParsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256,
    };
    const KEY: &str = "auth.public_key_file";
    let path = auth.public_key_file.trim();
    let pem = std::fs::read(path).map_err(|e| invalid(KEY, format!("{path:?}: {e}")))?;
    if pem.windows(7).any(|w| w == b"PRIVATE") {
        return Err(invalid(
            KEY,
            "holds a private key: give the gateway only the public key \
             (openssl pkey -in private.pem -pubout)",
        ));
    }
    let (key, check) = match auth.algorithm {
        JwtAlgorithm::RS256 => (
            DecodingKey::from_rsa_pem(&pem),
            &RSA_PKCS1_2048_8192_SHA256 as &'static dyn aws_lc_rs::signature::VerificationAlgorithm,
        ),
        _ => (
            DecodingKey::from_ec_pem(&pem),
            &ECDSA_P256_SHA256_FIXED as &'static dyn aws_lc_rs::signature::VerificationAlgorithm,
        ),
    };
    let expected = match auth.algorithm {
        JwtAlgorithm::RS256 => "an RSA public key of 2048 to 8192 bits in PEM",
        _ => "a P-256 EC public key in PEM",
    };
    let key = key.map_err(|_| invalid(KEY, format!("{path:?} is not {expected}")))?;
    // jsonwebtoken parses the key only when verifying, where a bad key would look like a bad
    // signature on every token. Parse it once now with the same library and algorithm.
    let DecodingKeyKind::SecretOrDer(der) = key.kind() else {
        return Err(invalid(KEY, format!("{path:?} is not {expected}")));
    };
    ParsedPublicKey::new(check, der)
        .map_err(|e| invalid(KEY, format!("{path:?} is not {expected} ({e})")))?;
    Ok(key)
}
