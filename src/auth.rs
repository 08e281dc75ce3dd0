//! Bearer JWT verification, in process, with `biscuit` (see `docs/api.md#authentication`).
//!
//! One algorithm is configured and only that one is accepted: biscuit checks
//! the signature with the configured algorithm and key and then insists that
//! the header names the same algorithm, which shuts out `alg: none` and
//! HS256-signed-with-the-public-key confusion. Claims are validated with
//! biscuit's `RegisteredClaims::validate`, with `exp` made mandatory (biscuit's
//! default leaves it optional). Every failure reads the same to the caller.

use std::fmt;
use std::path::Path;

use biscuit::jwa::SignatureAlgorithm;
use biscuit::jws::{Compact, Header, RegisteredHeader, Secret};
use biscuit::{
    ClaimPresenceOptions, CompactJson, Empty, Presence, RegisteredClaims, SingleOrMultiple,
    TemporalOptions, Timestamp, Validation, ValidationOptions,
};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use crate::config::JwtSettings;
use crate::domain::UserId;

/// Why a request is not authenticated. The two map to the API's two
/// bodies; the reason a token was refused is deliberately not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer ...` header.
    #[error("Authentication credentials were not provided.")]
    Missing,
    /// A bearer token that failed any check.
    #[error("Invalid token.")]
    Invalid,
}

/// A token that passed every check: who it names, and until when that
/// holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The caller.
    pub user: UserId,
    /// `exp` plus the leeway, to the instant: the verifier refuses the token
    /// at any later instant (and accepts it at this one).
    pub valid_until: DateTime<Utc>,
}

/// Tokens verified recently, so that a client sending the same token on
/// every request pays the signature check once (HS256 ~1.4 µs, RS256 ~23 µs,
/// ES256 ~56 µs), never past the instant the verifier would refuse it. Keyed
/// by the whole token, so only the exact string that was verified is
/// answered from here. Bounded (`quick_cache` evicts the least useful
/// entries); one per worker thread, so no lock.
#[derive(Debug)]
pub struct TokenCache {
    /// `None` when caching is off (capacity 0).
    entries: Option<quick_cache::unsync::Cache<Box<str>, Verified>>,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (0: no caching).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: (capacity > 0).then(|| quick_cache::unsync::Cache::new(capacity)),
        }
    }

    /// [`Verifier::authenticate`], answered from the cache when it can be.
    pub fn authenticate(
        &mut self,
        verifier: &Verifier,
        header: Option<&[u8]>,
    ) -> Result<UserId, AuthError> {
        self.authenticate_at(verifier, header, Utc::now())
    }

    /// [`TokenCache::authenticate`] at the instant `now`.
    fn authenticate_at(
        &mut self,
        verifier: &Verifier,
        header: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Result<UserId, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = bearer_token(header).ok_or(AuthError::Missing)?;
        if let Some(user) = self.cached(token, now) {
            return Ok(user);
        }
        let verified = verifier.verify_at(token, now)?;
        self.remember(token, verified);
        Ok(verified.user)
    }

    /// The user of `token` when it is cached and still valid at `now` (the
    /// verifier's own rule: refused once `now` is past `exp` + leeway); an
    /// entry past its deadline is dropped.
    fn cached(&mut self, token: &str, now: DateTime<Utc>) -> Option<UserId> {
        let entries = self.entries.as_mut()?;
        let hit = *entries.get(token)?;
        if now <= hit.valid_until {
            return Some(hit.user);
        }
        entries.remove(token);
        None
    }

    fn remember(&mut self, token: &str, verified: Verified) {
        if let Some(entries) = self.entries.as_mut() {
            entries.insert(token.into(), verified);
        }
    }
}

/// Timestamps beyond year 9999 are refused before chrono sees them (biscuit's
/// `Timestamp::from` panics on values chrono cannot represent).
const MAX_TIMESTAMP: i64 = 253_402_300_799;

/// The claims we read. `exp`/`nbf`/`iat` are kept as JSON numbers so that a
/// fractional NumericDate (allowed by RFC 7519) is accepted, not refused; the
/// user-id claim is looked up by name in the rest.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<SingleOrMultiple<String>>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

impl CompactJson for Claims {}

/// Verifies bearer tokens against the one configured algorithm and key.
pub struct Verifier {
    algorithm: SignatureAlgorithm,
    secret: Secret,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: chrono::Duration,
    user_claim: String,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm)
            .field("user_claim", &self.user_claim)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Builds the verifier from settings, loading and checking the key.
    /// The error names the setting at fault.
    pub fn from_settings(jwt: &JwtSettings) -> Result<Self, String> {
        let (algorithm, secret) = match jwt.jwt_algorithm.as_str() {
            "HS256" => {
                let secret = jwt
                    .jwt_secret
                    .as_ref()
                    .ok_or("CONNSTATUS_JWT_SECRET: required for HS256")?;
                (
                    SignatureAlgorithm::HS256,
                    Secret::Bytes(secret.expose_secret().as_bytes().to_vec()),
                )
            }
            alg @ ("RS256" | "ES256") => {
                let path = jwt
                    .jwt_public_key
                    .as_deref()
                    .ok_or_else(|| format!("CONNSTATUS_JWT_PUBLIC_KEY: required for {alg}"))?;
                let algorithm = if alg == "RS256" {
                    SignatureAlgorithm::RS256
                } else {
                    SignatureAlgorithm::ES256
                };
                let key = load_public_key(Path::new(path), algorithm)
                    .map_err(|e| format!("CONNSTATUS_JWT_PUBLIC_KEY: {path}: {e}"))?;
                (algorithm, Secret::PublicKey(key))
            }
            other => {
                return Err(format!(
                    "CONNSTATUS_JWT_ALGORITHM: `{other}` is not one of HS256, RS256, ES256"
                ))
            }
        };
        Ok(Self {
            algorithm,
            secret,
            issuer: jwt.jwt_issuer.clone(),
            audience: jwt.jwt_audience.clone(),
            leeway: chrono::Duration::seconds(
                i64::try_from(jwt.jwt_leeway_seconds).unwrap_or(i64::MAX / 1000),
            ),
            user_claim: jwt.jwt_user_claim.clone(),
        })
    }

    /// Checks an `Authorization` header value and returns the caller.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<UserId, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = bearer_token(header).ok_or(AuthError::Missing)?;
        self.verify(token)
    }

    /// Verifies a compact JWS and returns the user it names.
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        self.verify_until(token).map(|v| v.user)
    }

    /// Verifies a compact JWS: the user it names, and until when (Unix
    /// seconds, leeway included) that answer holds.
    pub fn verify_until(&self, token: &str) -> Result<Verified, AuthError> {
        self.verify_at(token, Utc::now())
    }

    /// [`Verifier::verify_until`] as if the clock read `now`.
    fn verify_at(&self, token: &str, now: DateTime<Utc>) -> Result<Verified, AuthError> {
        // A JWS compact token is three base64url parts; refuse anything else
        // before doing any work on it.
        if token.is_empty() || token.len() > 8192 || token.split('.').count() != 3 {
            return Err(AuthError::Invalid);
        }
        let decoded = Compact::<Claims, Empty>::new_encoded(token)
            .decode(&self.secret, self.algorithm)
            .map_err(|_| AuthError::Invalid)?;
        let claims = decoded.payload().map_err(|_| AuthError::Invalid)?;
        let registered = self.registered(claims)?;
        registered
            .validate(self.validation(now))
            .map_err(|_| AuthError::Invalid)?;
        let user = user_from_claim(claims.rest.get(&self.user_claim)).ok_or(AuthError::Invalid)?;
        // `exp` is required, so present here; biscuit accepted the token
        // because `now - exp <= leeway`, exactly.
        let exp = registered.expiry.ok_or(AuthError::Invalid)?;
        let valid_until = exp
            .checked_add_signed(self.leeway)
            .ok_or(AuthError::Invalid)?;
        Ok(Verified { user, valid_until })
    }

    fn validation(&self, now: DateTime<Utc>) -> ValidationOptions {
        ValidationOptions {
            claim_presence_options: ClaimPresenceOptions {
                expiry: Presence::Required,
                issuer: presence(self.issuer.is_some()),
                audience: presence(self.audience.is_some()),
                ..ClaimPresenceOptions::default()
            },
            temporal_options: TemporalOptions {
                epsilon: self.leeway,
                now: Some(now),
            },
            issued_at: Validation::Validate(chrono::Duration::MAX),
            not_before: Validation::Validate(()),
            expiry: Validation::Validate(()),
            issuer: validation(self.issuer.clone()),
            audience: validation(self.audience.clone()),
        }
    }

    fn registered(&self, claims: &Claims) -> Result<RegisteredClaims, AuthError> {
        Ok(RegisteredClaims {
            issuer: claims.iss.clone(),
            audience: claims.aud.clone(),
            expiry: timestamp(claims.exp.as_ref())?,
            not_before: timestamp(claims.nbf.as_ref())?,
            issued_at: timestamp(claims.iat.as_ref())?,
            ..RegisteredClaims::default()
        })
    }
}

fn presence(required: bool) -> Presence {
    if required {
        Presence::Required
    } else {
        Presence::Optional
    }
}

fn validation(expected: Option<String>) -> Validation<String> {
    expected.map_or(Validation::Ignored, Validation::Validate)
}

/// A NumericDate claim as a biscuit timestamp, seconds truncated toward the
/// past; absurd values are an invalid token, never a panic.
fn timestamp(value: Option<&Number>) -> Result<Option<Timestamp>, AuthError> {
    let Some(value) = value else { return Ok(None) };
    let seconds = match (value.as_i64(), value.as_f64()) {
        (Some(s), _) => s,
        (None, Some(f)) if f.is_finite() && f.abs() < MAX_TIMESTAMP as f64 => f.floor() as i64,
        _ => return Err(AuthError::Invalid),
    };
    if seconds.abs() > MAX_TIMESTAMP {
        return Err(AuthError::Invalid);
    }
    Ok(Some(Timestamp::from(seconds)))
}

/// The user id claim: a positive integer as a JSON number or a string of
/// ASCII digits.
fn user_from_claim(value: Option<&Value>) -> Option<UserId> {
    match value? {
        Value::Number(n) => n.as_u64().and_then(UserId::new),
        Value::String(s) => UserId::parse(s),
        _ => None,
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive), or `None` when
/// the header is not a bearer credential at all.
///
/// On bytes: the whitespace around the parts is HTTP's (spaces and tabs,
/// ASCII), and only the token needs to be text; this runs on every request.
fn bearer_token(header: &[u8]) -> Option<&str> {
    let header = header.trim_ascii();
    let (scheme, token) = match header.iter().position(|&b| b == b' ') {
        Some(space) => (&header[..space], &header[space + 1..]),
        None => (header, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    std::str::from_utf8(token.trim_ascii()).ok()
}

/// Reads a PEM public key as the raw key bytes *ring* verifies with: the
/// PKCS#1 `RSAPublicKey` for RS256, the uncompressed P-256 point for ES256.
/// Accepts SPKI (`PUBLIC KEY`) and, for RSA, PKCS#1 (`RSA PUBLIC KEY`).
fn load_public_key(path: &Path, algorithm: SignatureAlgorithm) -> Result<Vec<u8>, String> {
    const RSA: &str = "1.2.840.113549.1.1.1";
    const EC: &str = "1.2.840.10045.2.1";
    const P256: &str = "1.2.840.10045.3.1.7";
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let pem = pem::parse(text).map_err(|e| format!("not a PEM file ({e})"))?;
    match (pem.tag(), algorithm) {
        ("RSA PUBLIC KEY", SignatureAlgorithm::RS256) => Ok(pem.contents().to_vec()),
        ("PUBLIC KEY", _) => {
            let spki = spki::SubjectPublicKeyInfoRef::try_from(pem.contents())
                .map_err(|e| format!("not a public key ({e})"))?;
            let oid = spki.algorithm.oid.to_string();
            let params = spki
                .algorithm
                .parameters
                .and_then(|p| p.decode_as::<spki::ObjectIdentifier>().ok())
                .map(|o| o.to_string());
            let fits = match algorithm {
                SignatureAlgorithm::RS256 => oid == RSA,
                _ => oid == EC && params.as_deref() == Some(P256),
            };
            if !fits {
                return Err(format!("the key does not fit {algorithm:?}"));
            }
            Ok(spki.subject_public_key.raw_bytes().to_vec())
        }
        (tag, _) => Err(format!(
            "a `{tag}` PEM block is not a public key for {algorithm:?}"
        )),
    }
}

/// Mints an HS256 token for `user` valid for `ttl` — the `token` command,
/// for development and tests. The secret is the configured HS256 secret.
pub fn mint_hs256(
    secret: &[u8],
    user_claim: &str,
    user: UserId,
    ttl: std::time::Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, String> {
    let now = chrono::Utc::now().timestamp();
    let ttl = i64::try_from(ttl.as_secs()).map_err(|_| "ttl too long".to_string())?;
    let mut rest = Map::new();
    rest.insert(user_claim.to_owned(), Value::String(user.to_string()));
    let claims = Claims {
        exp: Some(Number::from(now.saturating_add(ttl))),
        nbf: None,
        iat: Some(Number::from(now)),
        iss: issuer.map(str::to_owned),
        aud: audience.map(|a| SingleOrMultiple::Single(a.to_owned())),
        rest,
    };
    let header = Header::from_registered_header(RegisteredHeader {
        algorithm: SignatureAlgorithm::HS256,
        ..RegisteredHeader::default()
    });
    let token = Compact::new_decoded(header, claims)
        .encode(&Secret::Bytes(secret.to_vec()))
        .map_err(|e| e.to_string())?;
    token
        .encoded()
        .map(|c| c.encode())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_other_schemes_are_not_credentials() {
        assert_eq!(bearer_token(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer_token(b"Bearer"), Some(""));
        assert_eq!(bearer_token(b"Basic dXNlcjpwdw=="), None);
        assert_eq!(bearer_token(b"\xff\xfe"), None);
        assert_eq!(bearer_token(b"\tBearer\tabc"), None);
        assert_eq!(bearer_token(b"Bearer \xffabc"), None);
    }

    #[test]
    fn user_claim_takes_positive_integers_as_numbers_or_digit_strings() {
        assert_eq!(user_from_claim(Some(&Value::from(7))), UserId::new(7));
        assert_eq!(user_from_claim(Some(&Value::from("42"))), UserId::new(42));
        for bad in [
            Value::from(0),
            Value::from(-3),
            Value::from(1.5),
            Value::from("x1"),
            Value::from(""),
            Value::Null,
            Value::Bool(true),
            serde_json::json!([1]),
        ] {
            assert_eq!(user_from_claim(Some(&bad)), None, "{bad}");
        }
        assert_eq!(user_from_claim(None), None);
    }

    fn hs256_verifier() -> Verifier {
        let settings = crate::config::Settings::from_figment(crate::config::Settings::figment(
            "config", "test",
        ))
        .expect("settings");
        Verifier::from_settings(&settings.jwt).expect("verifier")
    }

    fn token(user: u64, ttl_secs: u64) -> String {
        mint_hs256(
            crate::config::DEV_JWT_SECRET.as_bytes(),
            "sub",
            UserId::new(user).expect("id"),
            std::time::Duration::from_secs(ttl_secs),
            None,
            None,
        )
        .expect("mint")
    }

    #[test]
    fn the_token_cache_answers_as_the_verifier_does_and_stays_bounded() {
        let verifier = hs256_verifier();
        let mut cache = TokenCache::new(2);
        let (a, b, c) = (token(1, 60), token(2, 60), token(3, 60));
        for t in [&a, &a, &b, &c, &a] {
            let header = format!("Bearer {t}");
            assert_eq!(
                cache.authenticate(&verifier, Some(header.as_bytes())),
                verifier.verify(t)
            );
            assert!(cache.entries.as_ref().map_or(0, |e| e.len()) <= 2);
        }
        for user in 10..60 {
            let header = format!("Bearer {}", token(user, 60));
            assert!(cache
                .authenticate(&verifier, Some(header.as_bytes()))
                .is_ok());
            assert!(cache.entries.as_ref().map_or(0, |e| e.len()) <= 2);
        }
        assert_eq!(cache.authenticate(&verifier, None), Err(AuthError::Missing));
        assert_eq!(
            cache.authenticate(&verifier, Some(b"Bearer x.y.z")),
            Err(AuthError::Invalid)
        );
        assert!(
            !cache
                .entries
                .as_ref()
                .is_some_and(|e| e.contains_key("x.y.z")),
            "failures are not cached"
        );
    }

    #[test]
    fn a_cached_token_is_refused_once_it_expires() {
        let verifier = hs256_verifier();
        let mut cache = TokenCache::new(10);
        let t = token(1, 60);
        let header = format!("Bearer {t}");
        assert!(cache
            .authenticate(&verifier, Some(header.as_bytes()))
            .is_ok());
        let entries = cache.entries.as_mut().expect("caching is on");
        // Pretend the clock passed exp + leeway.
        let mut entry = entries.get_mut(t.as_str()).expect("cached");
        entry.valid_until = Utc::now() - chrono::Duration::seconds(1);
        drop(entry);
        // Re-verified: still valid by its real exp, so accepted and re-cached
        // with its real deadline; an entry is never trusted past its deadline.
        assert!(cache
            .authenticate(&verifier, Some(header.as_bytes()))
            .is_ok());
        let entries = cache.entries.as_ref().expect("caching is on");
        assert!(entries.get(t.as_str()).expect("re-cached").valid_until > Utc::now());
    }

    /// An HS256 token for user 1 with exactly `exp` (and no `iat`).
    fn token_expiring_at(exp: i64) -> String {
        let mut rest = Map::new();
        rest.insert("sub".into(), Value::String("1".into()));
        let claims = Claims {
            exp: Some(Number::from(exp)),
            nbf: None,
            iat: None,
            iss: None,
            aud: None,
            rest,
        };
        let header = Header::from_registered_header(RegisteredHeader {
            algorithm: SignatureAlgorithm::HS256,
            ..RegisteredHeader::default()
        });
        Compact::new_decoded(header, claims)
            .encode(&Secret::Bytes(
                crate::config::DEV_JWT_SECRET.as_bytes().to_vec(),
            ))
            .expect("sign")
            .encoded()
            .expect("encoded")
            .encode()
    }

    #[test]
    fn the_token_cache_never_accepts_what_the_verifier_refuses_at_the_same_instant() {
        let verifier = hs256_verifier();
        let exp = 2_000_000_000;
        let deadline = DateTime::from_timestamp(exp, 0).expect("instant") + verifier.leeway;
        let t = token_expiring_at(exp);
        let header = format!("Bearer {t}");
        let issued = deadline - chrono::Duration::seconds(600);
        let mut cache = TokenCache::new(10);
        // Every 100 ms from 2 s before the deadline to 2 s after it.
        for step in -20..=20 {
            let now = deadline + chrono::Duration::milliseconds(step * 100);
            // Cached while it was valid, then looked up at `now`.
            assert!(cache
                .authenticate_at(&verifier, Some(header.as_bytes()), issued)
                .is_ok());
            let from_cache = cache.cached(&t, now);
            let verdict = verifier.verify_at(&t, now).map(|v| v.user);
            assert_eq!(
                from_cache.ok_or(AuthError::Invalid),
                verdict,
                "{}ms from exp + leeway: the cache answered {from_cache:?}, the verifier {verdict:?}",
                step * 100
            );
        }
    }

    #[test]
    fn a_cache_of_size_zero_remembers_nothing_and_still_verifies() {
        let verifier = hs256_verifier();
        let mut cache = TokenCache::new(0);
        let t = token(1, 60);
        let header = format!("Bearer {t}");
        for _ in 0..2 {
            assert_eq!(
                cache.authenticate(&verifier, Some(header.as_bytes())),
                verifier.verify(&t)
            );
        }
        assert!(cache.entries.is_none());
        assert_eq!(cache.cached(&t, Utc::now()), None);
    }

    #[test]
    fn absurd_timestamps_are_invalid_not_a_panic() {
        assert_eq!(
            timestamp(Some(&Number::from(i64::MAX))),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            timestamp(Some(&Number::from(u64::MAX))),
            Err(AuthError::Invalid)
        );
        let f = Number::from_f64(1e300).expect("finite");
        assert_eq!(timestamp(Some(&f)), Err(AuthError::Invalid));
        assert!(timestamp(Some(&Number::from(1_700_000_000))).is_ok());
    }
}
