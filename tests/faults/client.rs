//! A client of a running metacast over real TCP, as an application sees it:
//! JSON requests, and event streams read frame by frame.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::sse_text::Blocks;
pub use crate::sse_text::Frame;

/// Longer than any answer metacast should take, even with a store down; a
/// request that hangs this long fails the test instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// What came back, or that nothing could (the server is down).
#[derive(Debug)]
pub enum Outcome {
    Answered(Response),
    Unreachable(String),
    /// No answer within `REQUEST_TIMEOUT`: the caller decides whether that
    /// is fatal (a fault test) or a finding to report (the chaos checker).
    TimedOut,
}

#[derive(Clone)]
pub struct Api {
    base: String,
    token: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// How long the answer took.
    pub elapsed: Duration,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} after {:?} {:?} {}",
            self.status,
            self.elapsed,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("body is not JSON ({err}): {self:?}"))
    }

    /// The version from `ETag: "<n>"`.
    pub fn version(&self) -> i64 {
        self.headers
            .get("etag")
            .and_then(|etag| etag.to_str().ok())
            .and_then(|etag| etag.trim_matches('"').parse().ok())
            .unwrap_or_else(|| panic!("no version ETag: {self:?}"))
    }

    /// Asserts an outage answer: 503 with `Retry-After` and the problem
    /// `code`, quickly. SPEC's target is well under a second; the bound
    /// here is looser so a busy CI machine cannot make it flake, yet far
    /// below the multi-second retries of an untuned client that it guards
    /// against.
    #[track_caller]
    pub fn assert_outage(&self, code: &str) {
        assert_eq!(self.status, StatusCode::SERVICE_UNAVAILABLE, "{self:?}");
        assert!(self.headers.contains_key("retry-after"), "{self:?}");
        assert_eq!(self.json()["code"], code, "{self:?}");
        assert!(self.elapsed < Duration::from_secs(5), "not fast: {self:?}");
    }
}

impl Api {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            base: base.to_owned(),
            token: token.to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends a request; `None` when the server could not be reached. A body
    /// is sent as `application/json` unless `headers` name a content type.
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Outcome {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let bytes = match body {
            Some(body) => {
                if !headers
                    .iter()
                    .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
                {
                    request = request.header("content-type", "application/json");
                }
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(bytes)).expect("a valid request");
        let started = Instant::now();
        let sent = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((parts, body.to_bytes()))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, sent).await {
            Ok(Ok((parts, body))) => Outcome::Answered(Response {
                status: parts.status,
                headers: parts.headers,
                body: body.to_vec(),
                elapsed: started.elapsed(),
            }),
            Ok(Err(err)) => Outcome::Unreachable(err),
            Err(_) => Outcome::TimedOut,
        }
    }

    /// Sends a request that must get an answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Response {
        match self.try_send(method, path, headers, body).await {
            Outcome::Answered(response) => response,
            Outcome::Unreachable(err) => panic!("{path}: no answer: {err}"),
            Outcome::TimedOut => panic!("{path} did not answer within {REQUEST_TIMEOUT:?}"),
        }
    }

    pub async fn get(&self, path: &str) -> Response {
        self.send(Method::GET, path, &[], None).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Response {
        self.send(Method::PUT, path, &[], Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Response {
        self.send(Method::PATCH, path, &[], Some(body)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.send(Method::POST, path, &[], Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.send(Method::DELETE, path, &[], None).await
    }

    /// Creates a connection with a lease of `ttl` seconds; returns its id.
    pub async fn connect(&self, ttl: u64) -> String {
        let created = self
            .post("/v1/connections", &serde_json::json!({"ttl_seconds": ttl}))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
        created.json()["id"].as_str().expect("an id").to_owned()
    }

    /// Polls `GET path` until `done` holds for the answer, for up to `wait`.
    pub async fn poll_until(
        &self,
        path: &str,
        wait: Duration,
        done: impl Fn(&Response) -> bool,
    ) -> Response {
        let deadline = Instant::now() + wait;
        loop {
            if let Outcome::Answered(response) = self.try_send(Method::GET, path, &[], None).await
                && done(&response)
            {
                return response;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: condition not met in {wait:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens an event stream at `path` (with `Last-Event-ID` when given).
    pub async fn stream(
        &self,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Result<Stream, Response> {
        match self.try_stream(path, last_event_id).await {
            Opened::Stream(stream) => Ok(stream),
            Opened::Refused(response) => Err(response),
            Opened::Unreachable(err) => panic!("{path}: no answer: {err}"),
        }
    }

    /// Opens an event stream, or says why not (the server may be down).
    pub async fn try_stream(&self, path: &str, last_event_id: Option<&str>) -> Opened {
        let mut request = hyper::Request::get(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .expect("a valid request");
        let started = Instant::now();
        let response = match tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request))
            .await
            .unwrap_or_else(|_| panic!("{path} did not answer within {REQUEST_TIMEOUT:?}"))
        {
            Ok(response) => response,
            Err(err) => return Opened::Unreachable(err.to_string()),
        };
        let (parts, body) = response.into_parts();
        if parts.status != StatusCode::OK {
            let body = body.collect().await.map(|b| b.to_bytes().to_vec());
            return Opened::Refused(Response {
                status: parts.status,
                headers: parts.headers,
                body: body.unwrap_or_default(),
                elapsed: started.elapsed(),
            });
        }
        Opened::Stream(Stream {
            body,
            blocks: Blocks::default(),
        })
    }
}

/// What opening a stream gave.
pub enum Opened {
    Stream(Stream),
    /// An answer other than 200.
    Refused(Response),
    Unreachable(String),
}

/// An open event stream.
pub struct Stream {
    body: Incoming,
    blocks: Blocks,
}

/// What reading a stream gave.
#[derive(Debug)]
pub enum Next {
    Frame(Frame),
    /// The server ended the stream (or the connection broke).
    Ended,
    /// Nothing within the wait.
    Quiet,
}

impl Stream {
    /// The next event within `wait` (comments skipped).
    pub async fn next_within(&mut self, wait: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(frame) = self.blocks.next_frame() {
                return Next::Frame(frame);
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return Next::Quiet,
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.blocks.push(&data);
                    }
                }
                Ok(_) => return Next::Ended,
            }
        }
    }

    /// The next event, which must come within `wait`.
    pub async fn expect_within(&mut self, wait: Duration) -> Frame {
        match self.next_within(wait).await {
            Next::Frame(frame) => frame,
            other => panic!("expected an event within {wait:?}, got {other:?}"),
        }
    }
}
