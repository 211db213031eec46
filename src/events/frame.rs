//! Server-Sent Events on the wire: one event becomes one immutable buffer,
//! encoded once and shared by every subscriber that sends it.

use bytes::{BufMut, Bytes, BytesMut};

/// The comment sent on an idle stream so proxies and browsers see traffic.
pub const KEEP_ALIVE: Bytes = Bytes::from_static(b":\n\n");

/// `id`, `event` and `data` lines and the blank line that ends the event.
/// A line break in `data` (LF, CRLF or CR: all end a line in SSE) starts
/// another `data:` line; `id` and `event` are ours and never contain one.
pub fn encode(id: &str, kind: &str, data: &str) -> Bytes {
    let mut frame = BytesMut::with_capacity(id.len() + kind.len() + data.len() + 24);
    frame.put_slice(b"id: ");
    frame.put_slice(id.as_bytes());
    frame.put_slice(b"\nevent: ");
    frame.put_slice(kind.as_bytes());
    frame.put_u8(b'\n');
    for line in data.split("\r\n").flat_map(|line| line.split(['\r', '\n'])) {
        frame.put_slice(b"data: ");
        frame.put_slice(line.as_bytes());
        frame.put_u8(b'\n');
    }
    frame.put_u8(b'\n');
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_is_id_type_data_and_a_blank_line() {
        let frame = encode("e1-5-0", "room.cleared", r#"{"room":"lobby"}"#);
        assert_eq!(
            &frame[..],
            b"id: e1-5-0\nevent: room.cleared\ndata: {\"room\":\"lobby\"}\n\n"
        );
    }

    #[test]
    fn line_breaks_in_data_become_data_lines() {
        let frame = encode("1", "x", "a\nb\r\nc\rd");
        assert_eq!(
            &frame[..],
            b"id: 1\nevent: x\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn keep_alive_is_a_comment() {
        assert!(KEEP_ALIVE.starts_with(b":"));
        assert!(KEEP_ALIVE.ends_with(b"\n\n"));
    }
}
