//! SSE delivery against a metacast process on loopback.
//!
//! `bash bench/sse.sh` (raises the open-file limit, builds the release
//! binary, runs this). It starts `metacast serve` as a child process against
//! the local Postgres and Redis (a fresh database and Redis prefix, removed
//! at the end) and prints:
//!
//! - write→event latency with one subscriber (PATCH sent → event received);
//! - fan-out of a change to N idle subscribers of one room, over a few
//!   rounds (one change each): how many got it (the fewest in any round),
//!   and p50/p99/max of the delay over every delivery;
//! - server memory per idle stream: the server's Pss growth ÷ N;
//! - CPU time per change (user + system, so the kernel's TCP work on both
//!   ends of loopback counts) of the server and of this load client, which
//!   share the machine's cores.
//!
//! Knobs: `BENCH_FANOUT` (default `1000,10000`), `BENCH_WRITES` (default
//! 200), `BENCH_ROUNDS` (changes per fan-out size, default 5).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::future::join_all;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use metacast::auth::{JwtKeys, JwtSettings, MetacastClaim, TokenRequest};
use metacast::config::Settings;
use redis::AsyncCommands;
use secrecy::ExposeSecret;
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Subscriptions opening concurrently while the fan-out is built up.
const OPENING_AT_ONCE: usize = 64;

fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector)
}

/// Opens a room stream over a plain socket and reads it in this one task
/// (an HTTP client library would add a task and a channel per stream, and
/// the load client shares the server's cores). Sends `(version, when
/// received)` for every `room.metadata.updated`, and one `(0, when)` once
/// the `sync` arrived. Subscribers opening at once are limited (`opening`)
/// and retry a 503, as real clients ramping up would.
async fn subscribe(
    address: String,
    path: String,
    token: String,
    seen: mpsc::UnboundedSender<(i64, Instant)>,
    opening: Arc<Semaphore>,
) -> anyhow::Result<()> {
    let mut permit = Some(opening.acquire_owned().await?);
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {token}\r\naccept: text/event-stream\r\n\r\n"
    );
    let mut attempts = 0;
    let (mut socket, mut buffer) = loop {
        let mut socket = TcpStream::connect(&address).await?;
        socket.set_nodelay(true)?;
        socket.write_all(request.as_bytes()).await?;
        let mut buffer = Vec::with_capacity(4096);
        let head_end = loop {
            if socket.read_buf(&mut buffer).await? == 0 {
                bail!("stream closed before its headers");
            }
            if let Some(end) = find(&buffer, b"\r\n\r\n") {
                break end + 4;
            }
        };
        if buffer.starts_with(b"HTTP/1.1 200") {
            buffer.drain(..head_end);
            break (socket, buffer);
        }
        if buffer.starts_with(b"HTTP/1.1 503") && attempts < 20 {
            attempts += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        bail!(
            "stream answered {}",
            String::from_utf8_lossy(&buffer[..head_end])
        );
    };
    // The body is chunked; each event is one chunk, so scanning the raw
    // bytes for whole events (up to the blank line) is enough here.
    loop {
        while let Some(end) = find(&buffer, b"\n\n") {
            let now = Instant::now();
            let block = &buffer[..end];
            if find(block, b"event: sync").is_some() {
                permit.take();
                let _ = seen.send((0, now));
            } else if find(block, b"event: room.metadata.updated").is_some() {
                let _ = seen.send((version_in(block).unwrap_or(-1), now));
            }
            buffer.drain(..end + 2);
        }
        if socket.read_buf(&mut buffer).await? == 0 {
            return Ok(());
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The first `"version":N` in an event's data: the event's own, as the
/// documents this bench writes have no such key.
fn version_in(block: &[u8]) -> Option<i64> {
    let at = find(block, b"\"version\":")? + b"\"version\":".len();
    let digits: Vec<u8> = block[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

struct Server {
    child: tokio::process::Child,
    base: String,
    pid: u32,
}

fn pss_kib(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .context("no Pss in smaps_rollup")
}

/// CPU time (user + system) a process has used so far, in milliseconds
/// (`/proc/<pid>/stat`, clock ticks of 10 ms).
fn cpu_ms(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks * 10.0)
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0
}

async fn put(
    client: &HttpClient,
    url: &str,
    token: &str,
    method: Method,
    body: &str,
) -> anyhow::Result<()> {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))?;
    let response = client.request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    if !status.is_success() {
        bail!("{url} answered {status}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let fanouts: Vec<usize> = std::env::var("BENCH_FANOUT")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .map(|n| n.trim().parse())
        .collect::<Result<_, _>>()?;
    let writes: usize = std::env::var("BENCH_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let binary =
        std::env::var("BENCH_METACAST_BIN").unwrap_or_else(|_| "target/release/metacast".into());

    let settings = Settings::from_env()?;
    let base_url = settings.database_url.expose_secret().to_owned();
    let (server_url, _) = base_url
        .rsplit_once('/')
        .context("DATABASE_URL has no database name")?;
    let database = format!("metacast_bench_{}", uuid::Uuid::new_v4().simple());
    let prefix = format!("bench:{}:", uuid::Uuid::new_v4().simple());
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();

    let child = tokio::process::Command::new(&binary)
        .arg("serve")
        .env("DATABASE_URL", format!("{server_url}/{database}"))
        .env("METACAST_LISTEN", format!("127.0.0.1:{port}"))
        .env("METACAST_JWT_SECRET", &secret)
        .env("METACAST_REDIS_PREFIX", &prefix)
        .env("METACAST_SHUTDOWN_DRAIN_SECS", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {binary} (build it with cargo build --release)"))?;
    let pid = child.id().context("server pid")?;
    let mut server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        pid,
    };
    let result = run(&server, &secret, &fanouts, writes, rounds).await;

    let _ = tokio::process::Command::new("kill")
        .arg(server.pid.to_string())
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(10), server.child.wait()).await;
    let mut admin = sqlx::PgConnection::connect(&base_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database if exists \"{database}\" with (force)"
    )))
    .execute(&mut admin)
    .await?;
    let mut redis = redis::Client::open(settings.redis_url.expose_secret())?
        .get_multiplexed_async_connection()
        .await?;
    let keys: Vec<String> = {
        let mut iter = redis.scan_match::<_, String>(format!("{prefix}*")).await?;
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
    result
}

async fn run(
    server: &Server,
    secret: &str,
    fanouts: &[usize],
    writes: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    let http = client();
    let ready = format!("{}/readyz", server.base);
    let started = Instant::now();
    loop {
        let request = Request::get(&ready).body(Full::new(Bytes::new()))?;
        if let Ok(response) = http.request(request).await
            && response.status() == StatusCode::OK
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("metacast did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let keys = JwtKeys::new(&JwtSettings {
        secret: Some(secret.to_owned().into()),
        ..JwtSettings::default()
    })?;
    let token = keys.mint(&TokenRequest {
        subject: "bench".into(),
        claim: MetacastClaim {
            admin: true,
            ..MetacastClaim::default()
        },
        ttl: Duration::from_secs(3600),
    })?;
    let metadata = format!("{}/v1/rooms/bench/metadata", server.base);
    let address = server.base.trim_start_matches("http://").to_owned();
    let events = "/v1/rooms/bench/events".to_owned();
    put(&http, &metadata, &token, Method::PUT, r#"{"n":0}"#).await?;

    // Write → event latency, one subscriber.
    let (seen, mut received) = mpsc::unbounded_channel();
    let reader = tokio::spawn(subscribe(
        address.clone(),
        events.clone(),
        token.clone(),
        seen,
        Arc::new(Semaphore::new(1)),
    ));
    received.recv().await.context("sync")?;
    let mut latencies = Vec::with_capacity(writes);
    for n in 1..=writes {
        let sent = Instant::now();
        put(
            &http,
            &metadata,
            &token,
            Method::PATCH,
            &format!(r#"{{"n":{n}}}"#),
        )
        .await?;
        let version = n as i64 + 1;
        loop {
            let (got, at) = tokio::time::timeout(Duration::from_secs(5), received.recv())
                .await?
                .context("stream ended")?;
            if got == version {
                latencies.push(at - sent);
                break;
            }
        }
    }
    reader.abort();
    latencies.sort();
    println!(
        "SSE on {} ({writes} writes for latency, {rounds} changes per fan-out)",
        server.base
    );
    println!(
        "write→event latency, 1 subscriber: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    println!(
        "{:>12} {:>10} {:>8} {:>8} {:>8} {:>15} {:>15} {:>15}",
        "subscribers",
        "delivered",
        "p50 ms",
        "p99 ms",
        "max ms",
        "KiB per stream",
        "server CPU ms",
        "client CPU ms"
    );

    let mut version = writes as i64 + 1;
    for &n in fanouts {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = pss_kib(server.pid)?;
        let (seen, mut received) = mpsc::unbounded_channel();
        let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
        let readers: Vec<_> = (0..n)
            .map(|_| {
                tokio::spawn(subscribe(
                    address.clone(),
                    events.clone(),
                    token.clone(),
                    seen.clone(),
                    opening.clone(),
                ))
            })
            .collect();
        drop(seen);
        let mut synced = 0;
        while synced < n {
            let (got, _) = tokio::time::timeout(Duration::from_secs(60), received.recv())
                .await
                .context("subscribers did not all get their sync")?
                .context("streams ended")?;
            if got == 0 {
                synced += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = pss_kib(server.pid)?;
        // Each round is one change; `delivered` is the fewest subscribers
        // any round reached, the delays are over every delivery.
        let mut delays = Vec::with_capacity(n * rounds);
        let mut delivered = n;
        let server_cpu = cpu_ms(&server.pid.to_string())?;
        let client_cpu = cpu_ms("self")?;
        for round in 0..rounds {
            version += 1;
            let sent = Instant::now();
            put(
                &http,
                &metadata,
                &token,
                Method::PATCH,
                &format!(r#"{{"fanout":{n},"round":{round}}}"#),
            )
            .await?;
            let mut got_it = 0;
            while got_it < n {
                match tokio::time::timeout(Duration::from_secs(10), received.recv()).await {
                    Ok(Some((got, at))) if got == version => {
                        delays.push(at - sent);
                        got_it += 1;
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            delivered = delivered.min(got_it);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let per_change = |before: f64, now: f64| (now - before) / rounds as f64;
        let server_cpu = per_change(server_cpu, cpu_ms(&server.pid.to_string())?);
        let client_cpu = per_change(client_cpu, cpu_ms("self")?);
        delays.sort();
        println!(
            "{:>12} {:>10} {:>8.1} {:>8.1} {:>8.1} {:>15.1} {:>15.1} {:>15.1}",
            n,
            delivered,
            percentile(&delays, 0.5),
            percentile(&delays, 0.99),
            percentile(&delays, 1.0),
            after.saturating_sub(before) as f64 / n as f64,
            server_cpu,
            client_cpu,
        );
        for reader in &readers {
            reader.abort();
        }
        join_all(readers).await;
    }
    Ok(())
}
