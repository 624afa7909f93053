//! Shopper tokens: JWT HS256 with `sub` (the user id), `exp` and an optional
//! `student` flag. Any other algorithm, `none` included, is refused.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::UserId;

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

pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl TokenVerifier {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Tolerates small clock differences between the issuer and us.
        validation.leeway = 30;
        Self {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Verifies an `Authorization` header value.
    pub fn verify(&self, authorization: Option<&str>) -> Result<Shopper, AuthError> {
        let header = authorization.ok_or(AuthError("missing bearer token"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or(AuthError("Authorization must be `Bearer <token>`"))?;
        let data = decode::<Claims>(token.trim(), &self.key, &self.validation).map_err(|e| {
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
        Ok(Shopper {
            user,
            student: data.claims.student,
        })
    }
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
