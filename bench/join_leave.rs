//! Join/leave throughput against a metacast served on loopback.
//!
//! `cargo bench --bench join_leave` — starts metacast in this process on
//! 127.0.0.1 against the local Postgres and Redis (a fresh database and a
//! fresh Redis prefix, both removed at the end), then runs two workloads over
//! HTTP and prints join+leave cycles per second with latency percentiles:
//!
//! - `own room`: each client joins and leaves its own room, so every join
//!   starts a session and every leave ends it (Redis + a Postgres commit each);
//! - `shared room`: every client cycles in one room that a resident keeps
//!   occupied, so joins and leaves stay on Redis.
//!
//! Knobs: `BENCH_CLIENTS` (default 16), `BENCH_SECONDS` per workload (default 10).

use std::time::{Duration, Instant};

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use metacast::auth::{MetacastClaim, TokenRequest};
use metacast::config::Settings;
use redis::AsyncCommands;
use secrecy::ExposeSecret;
use sqlx::Connection;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

struct Target {
    client: HttpClient,
    base: String,
    token: String,
}

impl Target {
    async fn call(&self, method: Method, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .body(Empty::new())?;
        let response = self.client.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    async fn connect(&self) -> anyhow::Result<String> {
        let (status, body) = self.call(Method::POST, "/v1/connections").await?;
        anyhow::ensure!(status == StatusCode::CREATED, "create connection: {status}");
        let value: serde_json::Value = serde_json::from_slice(&body)?;
        Ok(value["id"].as_str().context("connection id")?.to_owned())
    }

    /// One join and one leave; returns the time the pair took.
    async fn cycle(&self, room: &str, id: &str) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let path = format!("/v1/rooms/{room}/connections/{id}");
        let (joined, _) = self.call(Method::PUT, &path).await?;
        anyhow::ensure!(joined == StatusCode::CREATED, "join: {joined}");
        let (left, _) = self.call(Method::DELETE, &path).await?;
        anyhow::ensure!(left == StatusCode::NO_CONTENT, "leave: {left}");
        Ok(started.elapsed())
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let clients = env_number("BENCH_CLIENTS", 16) as usize;
    let seconds = env_number("BENCH_SECONDS", 10);

    let mut settings = Settings::from_env()?;
    let base_url = settings.database_url.expose_secret().to_owned();
    let database = format!("metacast_bench_{}", uuid::Uuid::new_v4().simple());
    let (server, _) = base_url
        .rsplit_once('/')
        .context("DATABASE_URL has no database name")?;
    settings.database_url = format!("{server}/{database}").into();
    settings.redis_prefix = format!("bench:{}:", uuid::Uuid::new_v4().simple());
    settings.jwt.secret = Some(metacast::cli::throwaway_secret());
    settings.listen = "127.0.0.1:0".parse()?;
    settings.db_max_connections = 32;

    let state = metacast::app::connect(settings.clone()).await?;
    let token = state.jwt_keys.mint(&TokenRequest {
        subject: "bench".into(),
        claim: MetacastClaim {
            admin: true,
            ..MetacastClaim::default()
        },
        ttl: Duration::from_secs(3600),
    })?;
    let listener = metacast::app::bind(&state).await?;
    let addr = listener.local_addr()?;
    let lifecycle = state.lifecycle.clone();
    let server_task = tokio::spawn(metacast::app::serve(state.clone(), listener));

    let target = std::sync::Arc::new(Target {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base: format!("http://{addr}"),
        token,
    });
    println!("join/leave over HTTP on {addr}: {clients} clients, {seconds} s per workload");
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>10}",
        "workload", "cycles/s", "p50 ms", "p99 ms", "max ms"
    );

    let resident = target.connect().await?;
    let (status, _) = target
        .call(
            Method::PUT,
            &format!("/v1/rooms/shared/connections/{resident}"),
        )
        .await?;
    anyhow::ensure!(status == StatusCode::CREATED, "resident join: {status}");

    for (name, shared) in [("own room", false), ("shared room", true)] {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for i in 0..clients {
            let target = target.clone();
            tasks.push(tokio::spawn(async move {
                let id = target.connect().await?;
                let room = if shared {
                    "shared".to_owned()
                } else {
                    format!("own-{i}")
                };
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    latencies.push(target.cycle(&room, &id).await?);
                }
                anyhow::Ok(latencies)
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await??);
        }
        latencies.sort();
        let pick =
            |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
        println!(
            "{:<12} {:>10.0} {:>10.2} {:>10.2} {:>10.2}",
            name,
            latencies.len() as f64 / seconds as f64,
            pick(0.5),
            pick(0.99),
            pick(1.0)
        );
    }

    lifecycle.stop();
    server_task.await??;
    state.db.close().await;
    let mut admin = sqlx::PgConnection::connect(&base_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database \"{database}\" with (force)"
    )))
    .execute(&mut admin)
    .await?;
    let mut redis = redis::Client::open(settings.redis_url.expose_secret())?
        .get_multiplexed_async_connection()
        .await?;
    let pattern = format!("{}*", settings.redis_prefix);
    let keys: Vec<String> = {
        let mut iter = redis.scan_match::<_, String>(&pattern).await?;
        let mut keys = Vec::new();
        while let Some(key) = iter.next_item().await {
            keys.push(key?);
        }
        keys
    };
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(&mut redis)
            .await?;
    }
    Ok(())
}
