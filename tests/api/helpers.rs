//! `TestApp`: one isolated application per test, and a small request builder.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use metacast::auth::{MetacastClaim, TokenRequest};
use metacast::config::Settings;
use metacast::state::AppState;
use serde_json::Value;
use sqlx::PgPool;
use tower::ServiceExt;

/// The HS256 secret every test app accepts.
pub const SECRET: &str = "test-secret-test-secret-test-secret!";

pub struct TestApp {
    pub state: AppState,
    router: Router,
}

/// Deletes the test's Redis keys (its own prefix), so tests leave nothing
/// behind: on every master of a Redis Cluster, one key per DEL (keys of
/// different slots cannot share a command there).
impl Drop for TestApp {
    fn drop(&mut self) {
        let settings = &self.state.settings;
        let pattern = format!("{}*", settings.redis_prefix);
        // Best effort: a test against an unreachable Redis has nothing to clean.
        let Ok(nodes) = redis_nodes(settings) else {
            return;
        };
        for url in nodes {
            let Ok(mut conn) = redis::Client::open(url)
                .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(500)))
            else {
                continue;
            };
            let keys: Vec<String> = match redis::Commands::scan_match(&mut conn, &pattern) {
                Ok(iter) => iter.filter_map(Result::ok).collect(),
                Err(_) => continue,
            };
            if keys.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.del(key).ignore();
            }
            let _: redis::RedisResult<()> = pipe.query(&mut conn);
        }
    }
}

/// The URLs of the Redis servers holding the app's keys: the server, or
/// every master of the cluster (asked of the first seed node that answers).
pub(crate) fn redis_nodes(settings: &Settings) -> redis::RedisResult<Vec<String>> {
    let urls = secrecy::ExposeSecret::expose_secret(&settings.redis_url);
    if !settings.redis_cluster {
        return Ok(vec![urls.to_owned()]);
    }
    let mut last_error = None;
    for seed in urls.split(',').map(str::trim) {
        let nodes = redis::Client::open(seed)
            .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(500)))
            .and_then(|mut conn| {
                redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query::<String>(&mut conn)
            });
        match nodes {
            // `<id> <ip:port@cport[,hostname]> <flags> …`, one line per node.
            Ok(nodes) => {
                return Ok(nodes
                    .lines()
                    .filter_map(|line| {
                        let fields: Vec<&str> = line.split(' ').collect();
                        let address = fields.get(1)?.split(['@', ',']).next()?;
                        let master = fields.get(2)?.split(',').any(|flag| flag == "master");
                        master.then(|| format!("redis://{address}"))
                    })
                    .collect());
            }
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        redis::RedisError::from(std::io::Error::other("REDIS_URL lists no node"))
    }))
}

/// With `TEST_LOG` set (to a filter such as `warn` or `metacast=debug`), the
/// app's log lines go to the test's captured output, printed when it fails.
fn init_test_log() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Default settings for tests: the test secret and a Redis prefix of its own.
pub fn test_settings() -> Settings {
    let mut settings = Settings::from_lookup(|name| match name {
        "REDIS_URL" | "METACAST_REDIS_CLUSTER" => std::env::var(name).ok(),
        _ => None,
    })
    .expect("default settings are valid");
    settings.jwt.secret = Some(SECRET.into());
    settings.redis_prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    settings.shutdown_drain = Duration::ZERO;
    settings
}

impl TestApp {
    /// An app on the test's own database with default settings.
    pub async fn new(pool: PgPool) -> Self {
        Self::with_settings(pool, test_settings()).await
    }

    /// Serves the app on an ephemeral loopback port, with its event wake-up
    /// subscription running; returns the base URL. Stops with the lifecycle.
    pub async fn listen(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let clients =
            metacast::cache::subscription_clients(&self.state.settings).expect("redis clients");
        self.state.hub.spawn_listener(clients);
        let lifecycle = self.state.lifecycle.clone();
        let router = self.router.clone();
        let head_timeout = self.state.settings.request_timeout;
        tokio::spawn(async move {
            metacast::http::serve(listener, router, head_timeout, async move {
                lifecycle.stopped().await;
            })
            .await;
        });
        format!("http://{addr}")
    }

    /// A second instance sharing this one's database and Redis prefix.
    pub async fn another_instance(&self) -> Self {
        Self::with_settings(self.state.db.clone(), (*self.state.settings).clone()).await
    }

    /// An app on the test's own database with the given settings.
    pub async fn with_settings(pool: PgPool, settings: Settings) -> Self {
        init_test_log();
        let redis = metacast::cache::connect(&settings).expect("redis client");
        let state = metacast::app::build_state(settings, pool, redis).expect("valid state");
        let router = metacast::api::router(state.clone());
        Self { state, router }
    }

    /// A token for `sub` with the given claim, signed with the test secret.
    pub fn token(&self, sub: &str, claim: MetacastClaim) -> String {
        self.state
            .jwt_keys
            .mint(&TokenRequest {
                subject: sub.to_owned(),
                claim,
                ttl: Duration::from_secs(600),
            })
            .expect("mintable token")
    }

    /// An admin token.
    pub fn admin(&self) -> String {
        self.token(
            "admin",
            MetacastClaim {
                admin: true,
                ..MetacastClaim::default()
            },
        )
    }

    /// A token allowing `actions` on each of `patterns`.
    pub fn token_for(&self, sub: &str, grants: &[(&str, &[&str])]) -> String {
        self.token(
            sub,
            MetacastClaim {
                rooms: grants
                    .iter()
                    .map(|(pattern, actions)| {
                        (
                            pattern.to_string(),
                            actions.iter().map(|a| a.to_string()).collect(),
                        )
                    })
                    .collect(),
                ..MetacastClaim::default()
            },
        )
    }

    pub fn request(&self, method: Method, uri: &str) -> TestRequest {
        TestRequest {
            router: self.router.clone(),
            builder: Request::builder().method(method).uri(uri),
            body: Vec::new(),
        }
    }

    pub fn get(&self, uri: &str) -> TestRequest {
        self.request(Method::GET, uri)
    }

    pub fn put(&self, uri: &str) -> TestRequest {
        self.request(Method::PUT, uri)
    }

    pub fn patch(&self, uri: &str) -> TestRequest {
        self.request(Method::PATCH, uri)
    }

    pub fn delete(&self, uri: &str) -> TestRequest {
        self.request(Method::DELETE, uri)
    }

    pub fn post(&self, uri: &str) -> TestRequest {
        self.request(Method::POST, uri)
    }

    /// Creates a connection for the token's subject; returns its id.
    pub async fn connect(&self, token: &str) -> String {
        let response = self.post("/v1/connections").bearer(token).send().await;
        assert_eq!(response.status, StatusCode::CREATED, "{response:?}");
        response.json()["id"].as_str().expect("id").to_owned()
    }

    /// Joins connection `id` to `room`; returns the answer's status.
    pub async fn join(&self, token: &str, room: &str, id: &str) -> TestResponse {
        self.put(&format!("/v1/rooms/{room}/connections/{id}"))
            .bearer(token)
            .send()
            .await
    }

    /// How many members the room has in Redis.
    pub async fn members(&self, room: &str) -> usize {
        let mut redis = self.state.redis.clone();
        redis::cmd("HLEN")
            .arg(self.state.redis_keys.room_members(room))
            .query_async(&mut redis)
            .await
            .expect("Redis answers")
    }

    /// The events recorded in the room's Redis stream: `(type, data)`, oldest first.
    /// Waits until every published outbox row is deleted (they go in
    /// batches, off the request path): from then on, events Redis loses
    /// are gone for good.
    pub async fn outbox_drained(&self) {
        for _ in 0..100 {
            let left: i64 = sqlx::query_scalar("select count(*) from outbox")
                .fetch_one(&self.state.db)
                .await
                .unwrap();
            if left == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("published outbox rows are never deleted");
    }

    pub async fn events(&self, room: &str) -> Vec<(String, Value)> {
        crate::history::room_history(&self.state, room).await
    }

    /// Creates a room with `doc` as admin and returns its version.
    /// Merges `body` into the room's metadata as an admin; the new version.
    pub async fn patch_room(&self, room: &str, body: Value) -> i64 {
        let response = self
            .patch(&format!("/v1/rooms/{room}/metadata"))
            .bearer(&self.admin())
            .json(&body)
            .send()
            .await;
        assert_eq!(response.status, StatusCode::OK, "{response:?}");
        response.version()
    }

    pub async fn create_room(&self, room: &str, doc: Value) -> i64 {
        let response = self
            .put(&format!("/v1/rooms/{room}/metadata"))
            .bearer(&self.admin())
            .json(&doc)
            .send()
            .await;
        assert!(response.status.is_success(), "{response:?}");
        response.version()
    }
}

pub struct TestRequest {
    router: Router,
    builder: axum::http::request::Builder,
    body: Vec<u8>,
}

impl TestRequest {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.builder = self.builder.header(name, value);
        self
    }

    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    pub fn if_match(self, version: i64) -> Self {
        self.header("if-match", &format!("\"{version}\""))
    }

    /// A JSON body with `Content-Type: application/json`.
    pub fn json(self, body: &Value) -> Self {
        self.body("application/json", body.to_string())
    }

    /// A body with the given `Content-Type`.
    pub fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        self.builder = self.builder.header(header::CONTENT_TYPE, content_type);
        self.body = body.into();
        self
    }

    /// Raw body bytes without a `Content-Type`.
    pub fn raw_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub async fn send(self) -> TestResponse {
        let request = self
            .builder
            .body(Body::from(self.body))
            .expect("valid request");
        let response = self.router.oneshot(request).await.expect("infallible");
        let (parts, body) = response.into_parts();
        // An event stream's body never ends: answer with its head only (the
        // stream closes when the body is dropped).
        let streaming = parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
        let body = if streaming {
            Vec::new()
        } else {
            body.collect().await.expect("body").to_bytes().to_vec()
        };
        TestResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for TestResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} {}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("body is not JSON ({err}): {self:?}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The version from `ETag: "<n>"`.
    pub fn version(&self) -> i64 {
        let etag = self
            .header("etag")
            .unwrap_or_else(|| panic!("no ETag: {self:?}"));
        etag.trim_matches('"')
            .parse()
            .unwrap_or_else(|_| panic!("ETag {etag} is not a version"))
    }

    /// Asserts a problem+json answer with `status` and `code`.
    #[track_caller]
    pub fn assert_problem(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        let body = self.json();
        assert_eq!(body["code"], code, "{self:?}");
        assert_eq!(body["status"], status.as_u16(), "{self:?}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{self:?}"
        );
        assert!(
            body["title"].is_string() && body["type"].is_string(),
            "{self:?}"
        );
    }
}
