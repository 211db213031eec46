//! The `metacast` command line.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;

use crate::auth::{JwtKeys, MetacastClaim, TokenRequest};
use crate::config::Settings;

#[derive(Debug, Parser)]
#[command(name = "metacast", version, about = "Realtime metadata service")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default command).
    Serve(ServeArgs),
    /// Create the database if missing and apply migrations, then exit.
    Migrate,
    /// Mint an HS256 token with METACAST_JWT_SECRET, for curl users.
    Token(TokenArgs),
    /// Print the OpenAPI document.
    Openapi,
}

#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// Development mode: a throw-away JWT secret, and an admin token printed at start.
    #[arg(long)]
    pub dev: bool,
    /// Listen address (overrides METACAST_LISTEN).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Postgres URL (overrides DATABASE_URL).
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Redis URL (overrides REDIS_URL).
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The token's subject (`sub`): who the caller is.
    #[arg(long)]
    pub sub: String,
    /// Allow everything.
    #[arg(long)]
    pub admin: bool,
    /// Room permissions, repeatable: `lobby=read,join` or `team-*=read`.
    #[arg(long = "room", value_name = "PATTERN=ACTIONS")]
    pub rooms: Vec<String>,
    /// Let the subject write its own connections' metadata.
    #[arg(long)]
    pub own_metadata: bool,
    /// Lifetime: seconds, or with a unit (`30s`, `15m`, `12h`, `7d`).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
}

impl ServeArgs {
    /// Applies the flags over the environment's settings.
    pub fn apply(&self, settings: &mut Settings) {
        if let Some(listen) = self.listen {
            settings.listen = listen;
        }
        if let Some(url) = &self.database_url {
            settings.database_url = url.clone().into();
        }
        if let Some(url) = &self.redis_url {
            settings.redis_url = url.clone().into();
        }
    }
}

impl TokenArgs {
    /// The token request these flags describe.
    pub fn request(&self) -> anyhow::Result<TokenRequest> {
        let mut claim = MetacastClaim {
            admin: self.admin,
            own_metadata: self.own_metadata,
            ..MetacastClaim::default()
        };
        for grant in &self.rooms {
            let (pattern, actions) = grant
                .split_once('=')
                .with_context(|| format!("--room {grant:?}: expected PATTERN=ACTION[,ACTION…]"))?;
            let actions = actions
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned);
            claim
                .rooms
                .entry(pattern.trim().to_owned())
                .or_default()
                .extend(actions);
        }
        Ok(TokenRequest {
            subject: self.sub.clone(),
            claim,
            ttl: self.ttl,
        })
    }
}

/// Mints a token with the configured secret.
pub fn mint(settings: &Settings, args: &TokenArgs) -> anyhow::Result<String> {
    JwtKeys::new(&settings.jwt)?.mint(&args.request()?)
}

/// A random 256-bit secret for `serve --dev`, hex-encoded.
pub fn throwaway_secret() -> SecretString {
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    secret.into()
}

/// Parses `90`, `30s`, `15m`, `12h` or `7d`.
pub fn parse_duration(raw: &str) -> anyhow::Result<Duration> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let number: u64 = number
        .parse()
        .with_context(|| format!("{raw:?} is not a duration such as 30s, 15m, 12h or 7d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("{raw:?}: unknown unit {unit:?}; use s, m, h or d"),
    };
    Ok(Duration::from_secs(number * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn room_grants_accumulate() {
        let args = TokenArgs {
            sub: "alice".into(),
            admin: false,
            rooms: vec![
                "lobby=read,join".into(),
                "lobby=write_room".into(),
                "team-*=read".into(),
            ],
            own_metadata: true,
            ttl: Duration::from_secs(60),
        };
        let request = args.request().unwrap();
        assert_eq!(request.claim.rooms["lobby"], ["read", "join", "write_room"]);
        assert_eq!(request.claim.rooms["team-*"], ["read"]);
        assert!(request.claim.own_metadata);
    }
}
