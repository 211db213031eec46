//! A minimal SSE client over a real TCP connection, for stream tests.

use std::time::Duration;

use axum::http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::sse_text::Blocks;
pub use crate::sse_text::Frame;

/// How long a test waits for the next frame before failing.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

pub struct SseStream {
    body: Incoming,
    blocks: Blocks,
}

/// Opens `url` with the given headers; the stream when the answer is 200.
pub async fn open(url: &str, headers: &[(&str, &str)]) -> (StatusCode, Option<SseStream>) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = hyper::Request::get(url).header("accept", "text/event-stream");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .expect("request");
    let status = response.status();
    if status != StatusCode::OK {
        return (status, None);
    }
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    (
        status,
        Some(SseStream {
            body: response.into_body(),
            blocks: Blocks::default(),
        }),
    )
}

impl SseStream {
    /// The next event (comments skipped), or `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.blocks.next_frame() {
                return Some(frame);
            }
            let chunk = tokio::time::timeout(FRAME_TIMEOUT, self.body.frame())
                .await
                .expect("a frame within the timeout");
            match chunk {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.blocks.push(&data);
                    }
                }
                _ => return None,
            }
        }
    }

    /// Waits up to `wait` for the next comment (a keep-alive); an event
    /// arriving first fails the test.
    pub async fn expect_comment(&mut self, wait: Duration) -> String {
        tokio::time::timeout(wait, async {
            loop {
                if let Some(block) = self.blocks.next_block() {
                    assert!(block.starts_with(':'), "expected a comment, got {block:?}");
                    return block;
                }
                let frame = self.body.frame().await.expect("the stream is open");
                if let Ok(data) = frame.expect("a body frame").into_data() {
                    self.blocks.push(&data);
                }
            }
        })
        .await
        .expect("a comment within the wait")
    }

    /// The next event, which must be of `kind`.
    pub async fn expect(&mut self, kind: &str) -> Frame {
        let frame = self
            .next()
            .await
            .unwrap_or_else(|| panic!("stream ended before {kind}"));
        assert_eq!(frame.event, kind, "{frame:?}");
        frame
    }

    /// Asserts that nothing arrives within `wait` (keep-alives aside).
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Ok(frame) = tokio::time::timeout(wait, self.next()).await {
            panic!("expected silence, got {frame:?}");
        }
    }
}
