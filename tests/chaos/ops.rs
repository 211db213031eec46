//! One client of the run: a subject of its own with a few connections,
//! doing random operations against random instances. Every answer is
//! logged; an answer of 500 or more is a violation (no store is down here,
//! so not even a 503 is expected).

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::client::{Api, Outcome, Response};
use crate::rng::Rng;
use crate::streams;
use crate::world::World;

/// A connection pool this small keeps every connection busy.
const MAX_CONNECTIONS: usize = 3;

pub struct Client {
    pub name: String,
    pub rng: Rng,
    /// One per instance, all with this client's token.
    pub apis: Vec<Api>,
    pub token: String,
    pub world: Arc<World>,
    connections: Vec<String>,
}

/// The operations, with their weights.
const OPERATIONS: &[(&str, u64)] = &[
    ("connect", 8),
    ("join", 20),
    ("leave", 9),
    ("heartbeat", 14),
    ("fall-silent", 2),
    ("disconnect", 4),
    ("clear", 2),
    ("delete-room", 1),
    ("room-metadata", 12),
    ("session-metadata", 8),
    ("connection-metadata", 6),
    ("room-stream", 4),
    ("connection-stream", 2),
    ("cut", 6),
];

impl Client {
    pub fn new(name: String, rng: Rng, apis: Vec<Api>, token: String, world: Arc<World>) -> Self {
        Self {
            name,
            rng,
            apis,
            token,
            world,
            connections: Vec::new(),
        }
    }

    pub async fn run(mut self) {
        let weights: Vec<u64> = OPERATIONS.iter().map(|(_, w)| *w).collect();
        while !self.world.stopping() {
            let operation = OPERATIONS[self.rng.weighted(&weights)].0;
            self.world.count(operation);
            self.act(operation).await;
            let pause = self.rng.below(25);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    async fn act(&mut self, operation: &str) {
        let room = self.rng.pick(&self.world.rooms).clone();
        match operation {
            "connect" if self.connections.len() < MAX_CONNECTIONS => self.connect().await,
            "connect" | "join" => {
                if let Some(id) = self.connection() {
                    self.call(
                        Method::PUT,
                        &format!("/v1/rooms/{room}/connections/{id}"),
                        &[],
                        None,
                    )
                    .await;
                } else {
                    self.connect().await;
                }
            }
            "leave" => {
                if let Some(id) = self.connection() {
                    self.call(
                        Method::DELETE,
                        &format!("/v1/rooms/{room}/connections/{id}"),
                        &[],
                        None,
                    )
                    .await;
                }
            }
            "heartbeat" => {
                if let Some(id) = self.connection() {
                    let path = format!("/v1/connections/{id}/heartbeat");
                    if let Some(r) = self.call(Method::POST, &path, &[], None).await
                        && r.status == StatusCode::NOT_FOUND
                    {
                        self.connections.retain(|c| *c != id);
                    }
                }
            }
            // Its lease runs out: the sweeper ends it (`expired`).
            "fall-silent" if !self.connections.is_empty() => {
                let index = self.rng.below(self.connections.len() as u64) as usize;
                self.connections.remove(index);
            }
            "disconnect" => {
                if let Some(id) = self.connection() {
                    self.connections.retain(|c| *c != id);
                    self.call(Method::DELETE, &format!("/v1/connections/{id}"), &[], None)
                        .await;
                }
            }
            "clear" => {
                self.call(Method::POST, &format!("/v1/rooms/{room}/clear"), &[], None)
                    .await;
            }
            "delete-room" => {
                self.call(Method::DELETE, &format!("/v1/rooms/{room}"), &[], None)
                    .await;
            }
            "room-metadata" => {
                self.write(&format!("/v1/rooms/{room}/metadata"), true)
                    .await
            }
            "session-metadata" => {
                self.write(&format!("/v1/rooms/{room}/session/metadata"), true)
                    .await;
            }
            "connection-metadata" => {
                if let Some(id) = self.connection() {
                    self.write(&format!("/v1/connections/{id}/metadata"), false)
                        .await;
                }
            }
            "room-stream" => {
                let lifetime = Duration::from_millis(200 + self.rng.below(4000));
                let resume = self.rng.chance(60);
                let seed = self.rng.next_u64();
                let world = self.world.clone();
                let apis = self.apis.clone();
                tokio::spawn(streams::visit(world, apis, room, lifetime, resume, seed));
            }
            "connection-stream" => {
                if let Some(id) = self.connection() {
                    let lifetime = Duration::from_millis(200 + self.rng.below(5000));
                    let api = self.api().clone();
                    let world = self.world.clone();
                    tokio::spawn(streams::hold_connection_stream(world, api, id, lifetime));
                }
            }
            "cut" => self.cut(&room).await,
            _ => {}
        }
    }

    fn connection(&mut self) -> Option<String> {
        (!self.connections.is_empty()).then(|| self.rng.pick(&self.connections).clone())
    }

    fn instance(&mut self) -> usize {
        self.rng.below(self.apis.len() as u64) as usize
    }

    fn api(&mut self) -> &Api {
        let index = self.instance();
        &self.apis[index]
    }

    async fn connect(&mut self) {
        let ttl = 2 + self.rng.below(3);
        let body = if self.rng.chance(50) {
            json!({"ttl_seconds": ttl, "metadata": {"client": self.name}})
        } else {
            json!({"ttl_seconds": ttl})
        };
        if let Some(created) = self
            .call(Method::POST, "/v1/connections", &[], Some(&body))
            .await
            && created.status == StatusCode::CREATED
        {
            let id = created.json()["id"].as_str().unwrap_or_default().to_owned();
            self.connections.push(id);
        }
    }

    /// A write of a random strategy, half of them conditional on the version
    /// a read just gave.
    async fn write(&mut self, path: &str, deletable: bool) {
        let etag = if self.rng.chance(40) {
            self.call(Method::GET, path, &[], None).await.and_then(|r| {
                r.headers
                    .get("etag")
                    .and_then(|e| e.to_str().ok())
                    .map(str::to_owned)
            })
        } else {
            None
        };
        let key = format!("k{}", self.rng.below(6));
        let value = self.rng.below(1000);
        let (method, query, content_type, body): (Method, &str, &str, Option<Value>) =
            match self.rng.below(if deletable { 6 } else { 5 }) {
                0 => (
                    Method::PUT,
                    "",
                    "application/json",
                    Some(json!({ key: value })),
                ),
                1 => (
                    Method::PATCH,
                    "",
                    "application/json",
                    Some(json!({ key: value })),
                ),
                2 => (
                    Method::PATCH,
                    "?strategy=deepMerge",
                    "application/json",
                    Some(json!({"deep": { key: value }})),
                ),
                3 => {
                    let value = if self.rng.chance(30) {
                        Value::Null
                    } else {
                        json!(value)
                    };
                    (
                        Method::PATCH,
                        "",
                        "application/merge-patch+json",
                        Some(json!({ key: value })),
                    )
                }
                4 => (
                    Method::PATCH,
                    "",
                    "application/json-patch+json",
                    Some(json!([{"op": "add", "path": format!("/{key}"), "value": value}])),
                ),
                _ => (Method::DELETE, "", "", None),
            };
        let mut headers = Vec::new();
        if !content_type.is_empty() {
            headers.push(("content-type", content_type.to_owned()));
        }
        if let Some(etag) = etag {
            headers.push(("if-match", etag));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        self.call(method, &format!("{path}{query}"), &headers, body.as_ref())
            .await;
    }

    /// Sends a request on a random instance; logs it; flags a server error.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Option<Response> {
        let index = self.instance();
        let what = format!(
            "i{index} {method} {path} {}",
            body.map(Value::to_string).unwrap_or_default()
        );
        match self.apis[index].try_send(method, path, headers, body).await {
            Outcome::Answered(response) => {
                let outcome = format!(
                    "{} {}",
                    response.status.as_u16(),
                    String::from_utf8_lossy(&response.body)
                );
                self.world
                    .count(&format!("answered-{}xx", response.status.as_u16() / 100));
                if response.status.is_server_error() {
                    self.world.violation(format!("{what} answered {outcome}"));
                }
                self.world.record(&self.name, what, outcome);
                Some(response)
            }
            Outcome::Unreachable(err) => {
                self.world
                    .record(&self.name, what, format!("unreachable: {err}"));
                None
            }
            Outcome::TimedOut => {
                // Its effect is unknown, as for a cut request; the hang
                // itself is what nothing a client does may cause.
                self.world
                    .violation(format!("{what} did not answer in time"));
                self.world.record(&self.name, what, "no answer".to_owned());
                None
            }
        }
    }

    /// A request whose client goes away right after sending it (or part of
    /// it): the server cancels the handler at its next await.
    async fn cut(&mut self, room: &str) {
        let connection = self.connection().unwrap_or_else(|| "none".to_owned());
        let (method, path, body) = match self.rng.below(7) {
            0 => (
                "PUT",
                format!("/v1/rooms/{room}/connections/{connection}"),
                String::new(),
            ),
            1 => (
                "DELETE",
                format!("/v1/rooms/{room}/connections/{connection}"),
                String::new(),
            ),
            2 => (
                "POST",
                "/v1/connections".to_owned(),
                r#"{"ttl_seconds":2}"#.to_owned(),
            ),
            3 => (
                "DELETE",
                format!("/v1/connections/{connection}"),
                String::new(),
            ),
            4 => ("POST", format!("/v1/rooms/{room}/clear"), String::new()),
            5 => (
                "PATCH",
                format!("/v1/rooms/{room}/metadata"),
                r#"{"cut":1}"#.to_owned(),
            ),
            _ => (
                "PATCH",
                format!("/v1/rooms/{room}/session/metadata"),
                r#"{"cut":1}"#.to_owned(),
            ),
        };
        let index = self.instance();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: chaos\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.token,
            body.len()
        );
        // Sometimes only the head: the handler never gets its body.
        let sent = if self.rng.chance(25) {
            &request[..request.len() - body.len()]
        } else {
            &request[..]
        };
        let delay = Duration::from_micros(self.rng.below(5000));
        let what = format!("i{index} CUT after {delay:?} {method} {path} {body}");
        if let Ok(mut socket) = tokio::net::TcpStream::connect(self.world.addresses[index]).await
            && socket.write_all(sent.as_bytes()).await.is_ok()
        {
            tokio::time::sleep(delay).await;
            drop(socket);
        }
        if method == "DELETE" && path.starts_with("/v1/connections/") {
            self.connections.retain(|c| *c != connection);
        }
        self.world.record(&self.name, what, "cut".to_owned());
    }
}
