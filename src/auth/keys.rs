//! JWT keys: verifying tokens (HS256 secret, RS256/ES256/EdDSA public keys
//! chosen by `kid`) and minting HS256 tokens for the CLI and `serve --dev`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};

use super::claims::{Claims, MetacastClaim, Permissions};
use super::verified::VerifiedTokens;

/// The shortest HS256 secret we accept (RFC 7518 §3.2: at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;
/// Tokens larger than this are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Tolerated clock skew for `exp` and `nbf`, in seconds.
const LEEWAY_SECONDS: u64 = 5;

/// Key material and claim checks, as configured.
#[derive(Clone, Default)]
pub struct JwtSettings {
    /// HS256 shared secret, used as raw bytes.
    pub secret: Option<SecretString>,
    /// `(kid, PEM)` public keys; the algorithm follows from the key type.
    pub public_keys: Vec<(String, Vec<u8>)>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
}

struct PublicKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens; built once from [`JwtSettings`] and shared.
pub struct JwtKeys {
    hmac: Option<(EncodingKey, DecodingKey)>,
    public: HashMap<String, PublicKey>,
    validations: HashMap<Algorithm, Validation>,
    issuer: Option<String>,
    audience: Option<String>,
    verified: VerifiedTokens,
}

/// A verified token.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub subject: String,
    pub permissions: Permissions,
    pub expires_at: u64,
}

/// What `metacast token` and `serve --dev` put in a token.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    pub subject: String,
    pub claim: MetacastClaim,
    pub ttl: Duration,
}

impl JwtKeys {
    /// Builds the verifier; fails on short secrets and unreadable keys.
    pub fn new(settings: &JwtSettings) -> anyhow::Result<Self> {
        let hmac = match &settings.secret {
            Some(secret) => {
                let bytes = secret.expose_secret().as_bytes();
                if bytes.len() < MIN_SECRET_BYTES {
                    bail!(
                        "METACAST_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes (it has {})",
                        bytes.len()
                    );
                }
                Some((
                    EncodingKey::from_secret(bytes),
                    DecodingKey::from_secret(bytes),
                ))
            }
            None => None,
        };
        let mut public = HashMap::new();
        for (kid, pem) in &settings.public_keys {
            let key = parse_public_key(pem)
                .with_context(|| format!("METACAST_JWT_PUBLIC_KEYS: key {kid:?}"))?;
            public.insert(kid.clone(), key);
        }
        if hmac.is_none() && public.is_empty() {
            bail!("set METACAST_JWT_SECRET or METACAST_JWT_PUBLIC_KEYS (or run `serve --dev`)");
        }
        let validations = [
            Algorithm::HS256,
            Algorithm::RS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
        ]
        .into_iter()
        .map(|alg| (alg, validation(alg, settings)))
        .collect();
        Ok(Self {
            hmac,
            public,
            validations,
            verified: VerifiedTokens::new(LEEWAY_SECONDS),
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
        })
    }

    /// Verifies a bearer token. The error is safe to show to the client.
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, String> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(format!("the token is larger than {MAX_TOKEN_BYTES} bytes"));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        if let Some(verified) = self.verified.get(token, now) {
            return Ok(verified);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| "the token is malformed".to_owned())?;
        let key = match header.alg {
            Algorithm::HS256 => match &self.hmac {
                Some((_, key)) => key,
                None => return Err("HS256 tokens are not accepted by this server".to_owned()),
            },
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA => {
                let public = self.public_key(header.kid.as_deref())?;
                // The key decides the algorithm, never the token: this is
                // what stops algorithm-confusion attacks.
                if public.algorithm != header.alg {
                    return Err("the token's algorithm does not match its key".to_owned());
                }
                &public.key
            }
            other => return Err(format!("algorithm {other:?} is not accepted")),
        };
        let validation = self
            .validations
            .get(&header.alg)
            .ok_or_else(|| "algorithm not accepted".to_owned())?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|err| describe(err.kind()))?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err("the token's sub claim is empty".to_owned());
        }
        let permissions = Permissions::from_claim(&claims.metacast)
            .map_err(|reason| format!("the metacast claim is invalid: {reason}"))?;
        let verified = VerifiedToken {
            subject: claims.sub,
            permissions,
            expires_at: claims.exp,
        };
        self.verified.insert(token, &verified);
        Ok(verified)
    }

    fn public_key(&self, kid: Option<&str>) -> Result<&PublicKey, String> {
        match kid {
            Some(kid) => self
                .public
                .get(kid)
                .ok_or_else(|| format!("no public key with kid {kid:?}")),
            // With a single key configured, `kid` is a formality we don't demand.
            None if self.public.len() == 1 => self
                .public
                .values()
                .next()
                .ok_or_else(|| "no public keys configured".to_owned()),
            None => Err("the token has no kid header".to_owned()),
        }
    }

    /// Mints an HS256 token (needs the shared secret).
    pub fn mint(&self, request: &TokenRequest) -> anyhow::Result<String> {
        let (key, _) = self
            .hmac
            .as_ref()
            .context("minting tokens needs METACAST_JWT_SECRET")?;
        Permissions::from_claim(&request.claim).map_err(anyhow::Error::msg)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = Claims {
            sub: request.subject.clone(),
            exp: now + request.ttl.as_secs(),
            nbf: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(serde_json::Value::String),
            metacast: request.claim.clone(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            key,
        )?)
    }
}

fn validation(alg: Algorithm, settings: &JwtSettings) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if let Some(issuer) = &settings.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &settings.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        // Without a configured audience a token's `aud` is not ours to judge.
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

fn parse_public_key(pem: &[u8]) -> anyhow::Result<PublicKey> {
    type Parser = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
    let candidates: [(Algorithm, Parser); 3] = [
        (Algorithm::RS256, DecodingKey::from_rsa_pem),
        (Algorithm::ES256, DecodingKey::from_ec_pem),
        (Algorithm::EdDSA, DecodingKey::from_ed_pem),
    ];
    candidates
        .into_iter()
        .find_map(|(algorithm, parse)| parse(pem).ok().map(|key| PublicKey { algorithm, key }))
        .context("not an RSA, EC (P-256) or Ed25519 public key in PEM format")
}

fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidSignature => "the token's signature is invalid".to_owned(),
        ErrorKind::InvalidIssuer => "the token's issuer is not accepted".to_owned(),
        ErrorKind::InvalidAudience => "the token's audience is not accepted".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted".to_owned(),
        ErrorKind::Json(_) => "the token's claims have the wrong shape".to_owned(),
        _ => "the token is invalid".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn keys() -> JwtKeys {
        JwtKeys::new(&JwtSettings {
            secret: Some(SECRET.into()),
            ..JwtSettings::default()
        })
        .unwrap()
    }

    #[test]
    fn short_secrets_are_refused() {
        let err = JwtKeys::new(&JwtSettings {
            secret: Some("short".into()),
            ..JwtSettings::default()
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("METACAST_JWT_SECRET"));
    }

    #[test]
    fn minted_tokens_verify() {
        let keys = keys();
        let token = keys
            .mint(&TokenRequest {
                subject: "alice".into(),
                claim: MetacastClaim {
                    rooms: [("lobby".to_owned(), vec!["read".to_owned()])].into(),
                    ..MetacastClaim::default()
                },
                ttl: Duration::from_secs(60),
            })
            .unwrap();
        let verified = keys.verify(&token).unwrap();
        assert_eq!(verified.subject, "alice");
        assert!(!verified.permissions.admin);
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(keys().verify("not.a.token").is_err());
        assert!(keys().verify(&"a".repeat(MAX_TOKEN_BYTES + 1)).is_err());
    }
}
