//! Server-Sent Events as text, shared by the test binaries' stream clients:
//! what arrived, split into blocks at their blank line and parsed into frames.

use serde_json::Value;

/// One SSE event.
#[derive(Debug, Clone)]
pub struct Frame {
    pub id: String,
    pub event: String,
    pub data: Value,
}

/// Received text not yet taken as a block.
#[derive(Debug, Default)]
pub struct Blocks(String);

impl Blocks {
    pub fn push(&mut self, bytes: &[u8]) {
        self.0
            .push_str(std::str::from_utf8(bytes).expect("UTF-8 frames"));
    }

    /// The next complete block (an event or a comment), blank line included.
    pub fn next_block(&mut self) -> Option<String> {
        let end = self.0.find("\n\n")?;
        Some(self.0.drain(..end + 2).collect())
    }

    /// The next complete event, comments skipped.
    pub fn next_frame(&mut self) -> Option<Frame> {
        while let Some(block) = self.next_block() {
            if let Some(frame) = parse(&block) {
                return Some(frame);
            }
        }
        None
    }
}

fn parse(block: &str) -> Option<Frame> {
    let (mut id, mut event, mut data) = (String::new(), String::from("message"), String::new());
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("id:") {
            id = value.trim_start().to_owned();
        } else if let Some(value) = line.strip_prefix("event:") {
            event = value.trim_start().to_owned();
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.trim_start());
        }
    }
    (!data.is_empty()).then(|| Frame {
        id,
        event,
        data: serde_json::from_str(&data).expect("JSON data"),
    })
}
