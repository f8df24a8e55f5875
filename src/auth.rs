//! Identity: who a request is for, the same on both transports (SPEC section 3).
//!
//! With `auth.jwt_secret` set, a HS256 JWT (`sub` = user, `tenant` = tenant) is required;
//! without it, development identity comes from headers or handshake fields, which the
//! adapters read and hand here. Owns token verification only; never logs a token.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::AuthConfig;
use crate::error::ApiError;
use crate::request::Subject;

/// Seconds of clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 5;

pub struct Auth {
    jwt: Option<(DecodingKey, Validation)>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    tenant: Option<String>,
}

impl Auth {
    pub fn new(config: &AuthConfig) -> Auth {
        let jwt = config.jwt_secret.as_ref().map(|secret| {
            let mut v = Validation::new(Algorithm::HS256);
            v.leeway = LEEWAY_SECS;
            v.validate_nbf = true;
            match &config.audience {
                Some(aud) => v.set_audience(&[aud]),
                None => v.validate_aud = false,
            }
            if let Some(iss) = &config.issuer {
                v.set_issuer(&[iss]);
            }
            (DecodingKey::from_secret(secret.as_bytes()), v)
        });
        Auth { jwt }
    }

    pub fn enabled(&self) -> bool {
        self.jwt.is_some()
    }

    /// The subject of a request. With auth on, `token` must be a valid JWT; with auth
    /// off, the development identity is taken as given.
    pub fn identify(&self, token: Option<&str>, dev: Subject) -> Result<Subject, ApiError> {
        let Some((key, validation)) = &self.jwt else {
            return Ok(dev);
        };
        let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
            ApiError::Unauthorized("a bearer token is required (auth is on)".into())
        })?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| {
            ApiError::Unauthorized(format!("the token was refused: {}", describe(&e)))
        })?;
        Ok(Subject {
            user: data.claims.sub,
            session: None,
            tenant: data.claims.tenant,
        })
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "it has expired",
        K::ImmatureSignature => "it is not valid yet (nbf)",
        K::InvalidSignature => "its signature does not match",
        K::InvalidAlgorithm | K::MissingAlgorithm => "only HS256 tokens are accepted",
        K::InvalidIssuer => "wrong issuer",
        K::InvalidAudience => "wrong audience",
        K::MissingRequiredClaim(_) => "a required claim (exp) is missing",
        _ => "it is not a valid JWT",
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, token) = h.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn auth() -> Auth {
        Auth::new(&AuthConfig {
            jwt_secret: Some("s3cret".into()),
            ..AuthConfig::default()
        })
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn valid_token_gives_user_and_tenant() {
        let t = token(
            json!({"sub": "alice", "tenant": "acme", "exp": now() + 60}),
            "s3cret",
        );
        let s = auth().identify(Some(&t), Subject::default()).unwrap();
        assert_eq!(s.user.as_deref(), Some("alice"));
        assert_eq!(s.tenant.as_deref(), Some("acme"));
    }

    #[test]
    fn refusals() {
        let a = auth();
        let dev = || Subject::default();
        assert!(a.identify(None, dev()).is_err());
        let wrong = token(json!({"sub": "a", "exp": now() + 60}), "other");
        assert!(a.identify(Some(&wrong), dev()).is_err());
        let expired = token(json!({"sub": "a", "exp": now() - 600}), "s3cret");
        let e = a.identify(Some(&expired), dev()).unwrap_err();
        assert!(e.to_string().contains("expired"));
        // alg: none
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(a.identify(Some(none), dev()).is_err());
    }

    #[test]
    fn auth_off_takes_the_dev_identity() {
        let a = Auth::new(&AuthConfig::default());
        let dev = Subject {
            user: Some("bob".into()),
            ..Subject::default()
        };
        assert_eq!(a.identify(None, dev.clone()).unwrap(), dev);
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(None), None);
    }
}
