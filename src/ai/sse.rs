//! Server-Sent Events sent on to AI clients: the writer. The reader is
//! [`warden_actors::sse`], shared with the MCP transports.

use bytes::{BufMut, Bytes, BytesMut};

pub use warden_actors::sse::{SseEvent, SseReader};

/// Appends one event to `out`: `event: NAME` (when given) and `data: …`, then a blank line.
pub fn write_event(out: &mut BytesMut, event: Option<&str>, data: &str) {
    out.reserve(data.len() + event.map_or(0, str::len) + 16);
    if let Some(event) = event {
        out.put_slice(b"event: ");
        out.put_slice(event.as_bytes());
        out.put_u8(b'\n');
    }
    for line in data.split('\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// One event as bytes.
pub fn event_bytes(event: Option<&str>, data: &str) -> Bytes {
    let mut out = BytesMut::new();
    write_event(&mut out, event, data);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_events_read_back() {
        let mut bytes = BytesMut::new();
        write_event(&mut bytes, Some("ping"), "{}");
        write_event(&mut bytes, None, "a\nb");
        let mut reader = SseReader::default();
        let mut out = Vec::new();
        reader.push(&bytes, &mut out).unwrap();
        assert_eq!(out[0].event.as_deref(), Some("ping"));
        assert_eq!(out[1].data, "a\nb");
    }
}
