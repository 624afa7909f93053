//! Shopper tokens: JWT HS256 with `sub` (the user id), `exp` and an optional
//! `student` flag. Any other algorithm, `none` included, is refused.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use std::hash::BuildHasher;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::domain::UserId;
use crate::SeededHasher;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    student: bool,
}

/// The verified caller.
#[derive(Debug, Clone)]
pub struct Shopper {
    pub user: UserId,
    pub student: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub &'static str);

/// Seconds of clock difference between the token issuer and us that are tolerated.
const LEEWAY_SECS: i64 = 30;

/// Verified tokens remembered at most; past this, tokens are verified in
/// full each time until the upkeep drops expired ones (about 35 MB at most).
const MAX_REMEMBERED: usize = 100_000;

pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
    /// Tokens already verified, by a salted hash of their signature. At a drop a
    /// shopper sends the same token many times a second, and full
    /// verification (base64, HMAC, JSON) was a tenth of a refused request's
    /// CPU. A hit compares the whole token and checks its expiry again, so
    /// it accepts exactly what full verification would.
    remembered: DashMap<u64, Remembered, SeededHasher>,
    salt: SeededHasher,
}

struct Remembered {
    token: Box<str>,
    shopper: Shopper,
    exp: i64,
}

impl TokenVerifier {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Tolerates small clock differences between the issuer and us.
        validation.leeway = LEEWAY_SECS as u64;
        Self {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            remembered: DashMap::default(),
            salt: SeededHasher::default(),
        }
    }

    /// Forgets tokens that have expired.
    pub fn forget_expired(&self) {
        let now = unix_now();
        self.remembered.retain(|_, r| !expired(r.exp, now));
        self.remembered.shrink_to_fit();
    }

    /// Verifies an `Authorization` header value.
    pub fn verify(&self, authorization: Option<&str>) -> Result<Shopper, AuthError> {
        let header = authorization.ok_or(AuthError("missing bearer token"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or(AuthError("Authorization must be `Bearer <token>`"))?;
        let token = token.trim();
        // Keyed by the last 32 bytes: in an HS256 token, part of the
        // signature (an HMAC output, so already unpredictable) and cheaper
        // to find than the signature segment. A token that shares them but
        // differs elsewhere fails the whole-token comparison.
        let tail = &token.as_bytes()[token.len().saturating_sub(32)..];
        let hash = self.salt.hash_one(tail);
        if let Some(hit) = self.remembered.get(&hash) {
            if &*hit.token == token && !expired(hit.exp, unix_now()) {
                return Ok(hit.shopper.clone());
            }
        }
        let data = decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            AuthError(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::InvalidSignature => "token signature does not verify",
                ErrorKind::InvalidAlgorithm => "token algorithm must be HS256",
                _ => "malformed token",
            })
        })?;
        let user = UserId::parse(&data.claims.sub)
            .map_err(|_| AuthError("token subject is not a valid user id"))?;
        let shopper = Shopper {
            user,
            student: data.claims.student,
        };
        if self.remembered.len() < MAX_REMEMBERED {
            let exp = i64::try_from(data.claims.exp).unwrap_or(i64::MAX);
            let remembered = Remembered {
                token: token.into(),
                shopper: shopper.clone(),
                exp,
            };
            self.remembered.insert(hash, remembered);
        }
        Ok(shopper)
    }
}

/// Whole seconds since the epoch. std's clock read is all a remembered
/// token's expiry check needs; jiff's `Timestamp::now` adds range checks.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64)
}

/// The rule jsonwebtoken applies: expired once `exp` is more than the
/// leeway in the past.
fn expired(exp: i64, now: i64) -> bool {
    exp < now.saturating_sub(LEEWAY_SECS)
}

/// Mints a shopper token valid for `ttl_secs` from now.
pub fn mint(secret: &str, user: &UserId, ttl_secs: u64, student: bool) -> String {
    let exp = jiff::Timestamp::now().as_second().max(0) as u64 + ttl_secs;
    let claims = Claims {
        sub: user.as_str().to_owned(),
        exp,
        student,
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    #[test]
    fn a_minted_token_verifies() {
        let token = mint("s3cret", &alice(), 60, true);
        let shopper = TokenVerifier::new("s3cret")
            .verify(Some(&format!("Bearer {token}")))
            .unwrap();
        assert_eq!(shopper.user, alice());
        assert!(shopper.student);
    }

    #[test]
    fn a_remembered_token_is_accepted_again_and_a_near_copy_is_not() {
        let verifier = TokenVerifier::new("s3cret");
        let token = mint("s3cret", &alice(), 60, false);
        for _ in 0..2 {
            assert!(verifier.verify(Some(&format!("Bearer {token}"))).is_ok());
        }
        assert_eq!(verifier.remembered.len(), 1);
        let mut forged = token.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(verifier.verify(Some(&format!("Bearer {forged}"))).is_err());
    }

    #[test]
    fn a_remembered_token_expires_by_the_same_rule() {
        let now = unix_now();
        assert!(!expired(now - LEEWAY_SECS, now));
        assert!(expired(now - LEEWAY_SECS - 1, now));
        let verifier = TokenVerifier::new("s3cret");
        let token = mint("s3cret", &alice(), 60, false);
        verifier.verify(Some(&format!("Bearer {token}"))).unwrap();
        for mut entry in verifier.remembered.iter_mut() {
            entry.exp = now - LEEWAY_SECS - 1;
        }
        verifier.forget_expired();
        assert_eq!(verifier.remembered.len(), 0);
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let token = mint("other", &alice(), 60, false);
        assert!(TokenVerifier::new("s3cret")
            .verify(Some(&format!("Bearer {token}")))
            .is_err());
    }

    #[test]
    fn an_unsigned_token_is_refused() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let seg = |text: &str| URL_SAFE_NO_PAD.encode(text);
        let token = format!(
            "{}.{}.",
            seg(r#"{"alg":"none","typ":"JWT"}"#),
            seg(r#"{"sub":"alice","exp":9999999999}"#)
        );
        assert!(TokenVerifier::new("s3cret")
            .verify(Some(&format!("Bearer {token}")))
            .is_err());
    }

    #[test]
    fn missing_or_odd_headers_are_refused() {
        let v = TokenVerifier::new("s3cret");
        assert!(v.verify(None).is_err());
        assert!(v.verify(Some("Basic abc")).is_err());
        assert!(v.verify(Some("Bearer not.a.jwt")).is_err());
    }
}
