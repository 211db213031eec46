//! Settings from the environment (and a `.env` file, which never overrides
//! it), validated at start-up: a bad value fails fast with one line naming
//! the variable.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::SecretString;

/// HS256 secrets that ship with metacast and so are no secret.
const PUBLISHED_SECRETS: &[&str] = &["local-compose-secret-change-me-0123456789"];

use crate::auth::JwtSettings;
use crate::document::DocumentLimits;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Everything `metacast serve` needs.
#[derive(Clone)]
pub struct Settings {
    pub database_url: SecretString,
    /// One `redis://` URL, or with `redis_cluster` the comma-separated seed
    /// nodes of a Redis Cluster.
    pub redis_url: SecretString,
    /// Whether `redis_url` names a Redis Cluster.
    pub redis_cluster: bool,
    pub listen: SocketAddr,
    pub jwt: JwtSettings,
    /// Prefix of every Redis key and channel this instance uses.
    pub redis_prefix: String,
    pub limits: DocumentLimits,
    pub max_body_bytes: usize,
    /// Origins allowed by CORS, with credentials (cookies); or `*` alone:
    /// any origin, without credentials.
    pub cors_origins: Vec<String>,
    pub log_format: LogFormat,
    pub db_max_connections: u32,
    /// How long a request waits for a Postgres connection before a 503.
    pub db_acquire_timeout: Duration,
    /// Upper bound for answering a (non-streaming) request.
    pub request_timeout: Duration,
    /// Event streams one token subject may hold open on this instance.
    pub max_streams_per_subject: usize,
    /// After SIGTERM, how long `/readyz` reports 503 while requests are still
    /// served, so load balancers stop sending traffic before we close.
    pub shutdown_drain: Duration,
    pub presence: PresenceSettings,
    /// Bytes of room documents this instance keeps in memory for metadata
    /// GETs (0: none).
    pub document_cache_bytes: usize,
    /// The longest a cached document is served without being read again.
    pub document_cache_max_age: Duration,
    /// Unexpired stream tickets one subject may hold at once; one more is a
    /// 429 `too-many-tickets` until the oldest expires or is used.
    pub max_tickets_per_subject: usize,
}

/// Connections, leases, occupancy and sessions.
#[derive(Debug, Clone)]
pub struct PresenceSettings {
    /// Lease of a connection created without `ttl_seconds`.
    pub default_ttl: Duration,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub max_connections_per_subject: usize,
    pub max_rooms_per_connection: usize,
    /// How often each instance sweeps expired leases.
    pub sweep_interval: Duration,
    /// How often each instance reconciles sessions between Redis and Postgres.
    pub reconcile_interval: Duration,
    /// Whether a join creates a room that does not exist (else 404).
    pub auto_create_rooms: bool,
    /// Events kept per room stream.
    pub event_history: usize,
    /// How long a room's stream keeps its events.
    pub event_retention: Duration,
    /// After a connection's last event stream closes, how long before it
    /// leaves its rooms (a quick reconnect keeps it).
    pub stream_grace: Duration,
}

impl PresenceSettings {
    /// How long a room's history is kept, in the milliseconds Redis takes.
    pub fn retention_ms(&self) -> u64 {
        self.event_retention.as_millis() as u64
    }
}

impl Settings {
    /// Reads the process environment (after loading `.env`, if present).
    pub fn from_env() -> anyhow::Result<Self> {
        // Only the current directory's: `dotenvy::dotenv()` would also search
        // every parent directory and take another project's (or a home
        // directory's) secrets for ours. A missing .env is normal; a
        // malformed one is an error worth reporting.
        match dotenvy::from_path(".env") {
            Ok(_) => {}
            Err(err) if err.not_found() => {}
            Err(err) => return Err(err).context(".env"),
        }
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds settings from any variable source (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let env = Env(&lookup);
        let limits = DocumentLimits {
            max_bytes: env.parse("METACAST_MAX_DOCUMENT_BYTES", 64 * 1024)?,
            max_depth: env.parse("METACAST_MAX_DOCUMENT_DEPTH", 32)?,
        };
        let settings = Self {
            database_url: env
                .string(
                    "DATABASE_URL",
                    "postgres://postgres@127.0.0.1:5432/metacast",
                )
                .into(),
            redis_url: env.string("REDIS_URL", "redis://127.0.0.1:6379").into(),
            redis_cluster: env.parse("METACAST_REDIS_CLUSTER", false)?,
            listen: env.parse("METACAST_LISTEN", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            jwt: JwtSettings {
                secret: env.optional("METACAST_JWT_SECRET").map(SecretString::from),
                public_keys: public_keys(env.optional("METACAST_JWT_PUBLIC_KEYS"))?,
                issuer: env.optional("METACAST_JWT_ISSUER"),
                audience: env.optional("METACAST_JWT_AUDIENCE"),
            },
            redis_prefix: env.string("METACAST_REDIS_PREFIX", "metacast:"),
            limits,
            max_body_bytes: env.parse("METACAST_MAX_BODY_BYTES", 1024 * 1024)?,
            cors_origins: env
                .optional("METACAST_CORS_ORIGINS")
                .map(|list| split_list(&list))
                .unwrap_or_default(),
            log_format: match env.string("METACAST_LOG_FORMAT", "pretty").as_str() {
                "pretty" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                other => bail!("METACAST_LOG_FORMAT: expected pretty or json, got {other:?}"),
            },
            db_max_connections: env.parse("METACAST_DB_MAX_CONNECTIONS", 16)?,
            db_acquire_timeout: Duration::from_millis(
                env.parse("METACAST_DB_ACQUIRE_TIMEOUT_MS", 1000)?,
            ),
            request_timeout: Duration::from_secs(env.parse("METACAST_REQUEST_TIMEOUT_SECS", 30)?),
            max_streams_per_subject: env.parse("METACAST_MAX_STREAMS_PER_SUBJECT", 32)?,
            shutdown_drain: Duration::from_secs(env.parse("METACAST_SHUTDOWN_DRAIN_SECS", 5)?),
            presence: PresenceSettings {
                default_ttl: Duration::from_secs(env.parse("METACAST_CONNECTION_TTL_SECS", 30)?),
                min_ttl: Duration::from_secs(env.parse("METACAST_CONNECTION_TTL_MIN_SECS", 1)?),
                max_ttl: Duration::from_secs(env.parse("METACAST_CONNECTION_TTL_MAX_SECS", 3600)?),
                max_connections_per_subject: env
                    .parse("METACAST_MAX_CONNECTIONS_PER_SUBJECT", 64)?,
                max_rooms_per_connection: env.parse("METACAST_MAX_ROOMS_PER_CONNECTION", 64)?,
                sweep_interval: Duration::from_millis(
                    env.parse("METACAST_SWEEP_INTERVAL_MS", 1000)?,
                ),
                reconcile_interval: Duration::from_secs(
                    env.parse("METACAST_RECONCILE_INTERVAL_SECS", 10)?,
                ),
                auto_create_rooms: env.parse("METACAST_AUTO_CREATE_ROOMS", true)?,
                event_history: env.parse("METACAST_EVENT_HISTORY", 1000)?,
                event_retention: Duration::from_secs(
                    env.parse("METACAST_EVENT_RETENTION_SECS", 3600)?,
                ),
                stream_grace: Duration::from_millis(env.parse("METACAST_STREAM_GRACE_MS", 5000)?),
            },
            document_cache_bytes: env.parse("METACAST_DOCUMENT_CACHE_BYTES", 64 << 20)?,
            document_cache_max_age: Duration::from_secs(
                env.parse("METACAST_DOCUMENT_CACHE_MAX_AGE_SECS", 60)?,
            ),
            max_tickets_per_subject: env.parse("METACAST_MAX_TICKETS_PER_SUBJECT", 32)?,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Whether the HS256 secret is one published with metacast (the
    /// docker-compose.yml fallback): anyone can mint tokens a server with
    /// it accepts, so start-up warns.
    pub fn uses_published_secret(&self) -> bool {
        self.jwt.secret.as_ref().is_some_and(|secret| {
            PUBLISHED_SECRETS.contains(&secrecy::ExposeSecret::expose_secret(secret))
        })
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.limits.max_bytes == 0 {
            bail!("METACAST_MAX_DOCUMENT_BYTES must be positive");
        }
        if !(1..=128).contains(&self.limits.max_depth) {
            bail!("METACAST_MAX_DOCUMENT_DEPTH must be between 1 and 128");
        }
        if self.max_body_bytes == 0 {
            bail!("METACAST_MAX_BODY_BYTES must be positive");
        }
        if self.db_max_connections == 0 {
            bail!("METACAST_DB_MAX_CONNECTIONS must be positive");
        }
        if self.max_tickets_per_subject == 0 {
            bail!("METACAST_MAX_TICKETS_PER_SUBJECT must be positive");
        }
        if self.max_streams_per_subject == 0 {
            bail!("METACAST_MAX_STREAMS_PER_SUBJECT must be positive");
        }
        let presence = &self.presence;
        if presence.min_ttl.is_zero() || presence.min_ttl > presence.max_ttl {
            bail!(
                "METACAST_CONNECTION_TTL_MIN_SECS must be positive and at most METACAST_CONNECTION_TTL_MAX_SECS"
            );
        }
        if !(presence.min_ttl..=presence.max_ttl).contains(&presence.default_ttl) {
            bail!("METACAST_CONNECTION_TTL_SECS must lie within the TTL bounds");
        }
        if presence.sweep_interval.is_zero() || presence.reconcile_interval.is_zero() {
            bail!(
                "METACAST_SWEEP_INTERVAL_MS and METACAST_RECONCILE_INTERVAL_SECS must be positive"
            );
        }
        if presence.event_history == 0 {
            bail!("METACAST_EVENT_HISTORY must be positive");
        }
        if self.cors_origins.len() > 1 && self.cors_origins.iter().any(|o| o == "*") {
            bail!(
                "METACAST_CORS_ORIGINS: `*` (any origin, without credentials) cannot be combined with listed origins (which get credentials); use `*` alone or only origins"
            );
        }
        if let Some(bad) = self
            .cors_origins
            .iter()
            .find(|origin| axum::http::HeaderValue::from_str(origin).is_err())
        {
            bail!("METACAST_CORS_ORIGINS: {bad:?} is not a valid origin");
        }
        if self.redis_prefix.contains(['{', '}']) {
            bail!(
                "METACAST_REDIS_PREFIX must not contain braces (they select Redis Cluster hash slots)"
            );
        }
        Ok(())
    }
}

struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    /// The variable, treating an empty value as unset.
    fn optional(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|value| !value.trim().is_empty())
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_owned())
    }

    fn parse<T: FromStr>(&self, name: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|err| anyhow::anyhow!("{name}: cannot parse {raw:?}: {err}")),
        }
    }
}

fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `kid=/path/key.pem,kid2=/path/other.pem`, read now so a missing file fails at start.
fn public_keys(list: Option<String>) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    split_list(&list)
        .into_iter()
        .map(|entry| {
            let (kid, path) = entry.split_once('=').with_context(|| {
                format!("METACAST_JWT_PUBLIC_KEYS: expected kid=path, got {entry:?}")
            })?;
            let pem = std::fs::read(path.trim())
                .with_context(|| format!("METACAST_JWT_PUBLIC_KEYS: cannot read {path:?}"))?;
            Ok((kid.trim().to_owned(), pem))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_follow_the_spec() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.redis_prefix, "metacast:");
        assert_eq!(s.limits, DocumentLimits::default());
        assert_eq!(s.max_body_bytes, 1024 * 1024);
        assert!(!s.redis_cluster);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let err = settings(&[("METACAST_LISTEN", "nowhere")]).err().unwrap();
        assert!(err.to_string().starts_with("METACAST_LISTEN"), "{err}");
        let err = settings(&[("METACAST_MAX_DOCUMENT_DEPTH", "0")])
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("METACAST_MAX_DOCUMENT_DEPTH"),
            "{err}"
        );
        let err = settings(&[("METACAST_JWT_PUBLIC_KEYS", "k=/does/not/exist")])
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("METACAST_JWT_PUBLIC_KEYS"),
            "{err:#}"
        );
    }

    #[test]
    fn the_compose_secret_is_known_to_be_published() {
        let compose = include_str!("../docker-compose.yml");
        let published = settings(&[("METACAST_JWT_SECRET", PUBLISHED_SECRETS[0])]).unwrap();
        assert!(
            compose.contains(PUBLISHED_SECRETS[0]),
            "still the compose default"
        );
        assert!(published.uses_published_secret());
        let own = settings(&[("METACAST_JWT_SECRET", "x".repeat(32).as_str())]).unwrap();
        assert!(!own.uses_published_secret());
        assert!(!settings(&[]).unwrap().uses_published_secret());
    }

    #[test]
    fn cors_origins_are_a_list() {
        let s = settings(&[(
            "METACAST_CORS_ORIGINS",
            "https://a.example, https://b.example",
        )])
        .unwrap();
        assert_eq!(s.cors_origins, ["https://a.example", "https://b.example"]);
        assert_eq!(
            settings(&[("METACAST_CORS_ORIGINS", "*")])
                .unwrap()
                .cors_origins,
            ["*"]
        );
    }

    #[test]
    fn cors_star_cannot_be_mixed_with_origins() {
        // `*` means no credentials, a listed origin means credentials: a
        // mix has no meaning a browser could be given.
        let err = settings(&[("METACAST_CORS_ORIGINS", "https://a.example, *")])
            .err()
            .unwrap();
        let message = err.to_string();
        assert!(message.starts_with("METACAST_CORS_ORIGINS"), "{message}");
        assert!(message.contains('*'), "{message}");
        // An origin that is no header value would be dropped silently.
        let err = settings(&[("METACAST_CORS_ORIGINS", "https://a.example\u{1}")])
            .err()
            .unwrap();
        assert!(
            err.to_string().starts_with("METACAST_CORS_ORIGINS"),
            "{err}"
        );
    }
}
