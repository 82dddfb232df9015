//! Server-Sent Events as Warden reads them — from MCP servers' streamable-HTTP answers
//! and listen streams, and from model providers: an incremental reader that keeps each
//! event's name (Anthropic's SDKs dispatch on `event:`), tolerates chunks split anywhere,
//! `\r\n` line ends, comments and multi-line `data`, and refuses an event larger than
//! its limit (a server's `max_message_bytes`, a provider's `max_event_bytes`). Once it
//! refused one, it reads nothing more.

/// An event (or a line not yet ended) longer than the reader's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventTooLarge {
    pub limit: usize,
}

impl std::fmt::Display for EventTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an event larger than {} bytes", self.limit)
    }
}

/// The largest single event a reader accepts unless told otherwise.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 << 20;

/// What a line not yet ended may hold besides the event's data: its field name and
/// separator (`data: `) and the start of its line end.
const UNENDED_LINE_SLACK: usize = "data: ".len() + "\r\n".len();

/// One event: its name (`event:`) if any, and its data (`data:` lines joined by `\n`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Incremental reader.
pub struct SseReader {
    /// The start of a line whose end has not arrived yet (never holds a `\n`).
    buffer: Vec<u8>,
    event: Option<String>,
    data: String,
    has_data: bool,
    max_event_bytes: usize,
    /// An event's data outgrew `max_event_bytes`; nothing more is read.
    oversized: bool,
}

impl Default for SseReader {
    fn default() -> Self {
        SseReader::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseReader {
    pub fn new(max_event_bytes: usize) -> Self {
        SseReader {
            buffer: Vec::new(),
            event: None,
            data: String::new(),
            has_data: false,
            max_event_bytes,
            oversized: false,
        }
    }

    /// Adds `chunk`, appending every event it completes to `out`. An event larger than
    /// the limit is an error, and the events before it are in `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), EventTooLarge> {
        if self.oversized {
            return Err(self.too_large());
        }
        if self.buffer.is_empty() {
            // The usual case (chunks end on a line end): lines are read straight from the
            // chunk, and only an unfinished tail is copied.
            let rest = self.lines(chunk, 0, out);
            self.buffer.extend_from_slice(&chunk[rest..]);
        } else {
            // The buffered start of a line holds no line end: search only the new bytes.
            let from = self.buffer.len();
            let mut buffer = std::mem::take(&mut self.buffer);
            buffer.extend_from_slice(chunk);
            let rest = self.lines(&buffer, from, out);
            buffer.drain(..rest);
            self.buffer = buffer;
        }
        // A line not yet ended also holds its field name (`data: `) and maybe a `\r`,
        // which are not the event's: an event of exactly the limit passes however it
        // was cut into chunks.
        if self.oversized
            || self.buffer.len() + self.data.len() > self.max_event_bytes + UNENDED_LINE_SLACK
        {
            self.oversized = true;
            return Err(self.too_large());
        }
        Ok(())
    }

    fn too_large(&self) -> EventTooLarge {
        EventTooLarge {
            limit: self.max_event_bytes,
        }
    }

    /// Reads every complete line of `bytes`, looking for line ends from `from`; returns
    /// where the unfinished rest begins.
    fn lines(&mut self, bytes: &[u8], from: usize, out: &mut Vec<SseEvent>) -> usize {
        let mut start = 0;
        let mut search = from;
        while !self.oversized
            && let Some(offset) = bytes[search..].iter().position(|b| *b == b'\n')
        {
            let end = search + offset;
            let mut line = &bytes[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            match std::str::from_utf8(line) {
                Ok(line) => self.line(line, out),
                Err(_) => self.line(&String::from_utf8_lossy(line), out),
            }
            start = end + 1;
            search = start;
        }
        start
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data),
                });
                self.has_data = false;
            }
            self.event = None;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
                self.oversized = self.data.len() > self.max_event_bytes;
            }
            "event" => self.event = Some(value.to_owned()),
            // `id:` and `retry:` mean nothing to Warden's readers.
            _ => {}
        }
    }

    /// What is left when the stream ends: a final event without its blank line (some
    /// servers end that way).
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.buffer.is_empty() {
            let rest = String::from_utf8_lossy(&self.buffer).into_owned();
            self.buffer.clear();
            for line in rest.split('\n') {
                self.line(line.trim_end_matches('\r'), out);
            }
        }
        self.line("", out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_of_the_limit_passes_and_one_byte_more_is_refused_after_the_ones_before() {
        let mut reader = SseReader::new(4);
        let mut out = Vec::new();
        reader.push(b"data: 12\ndata: 3\n\n", &mut out).unwrap();
        assert_eq!(out[0].data, "12\n3");

        // Complete in one chunk, after an event that fits: that one is kept.
        let mut reader = SseReader::new(4);
        let mut out = Vec::new();
        let error = reader
            .push(b"data: ok\n\ndata: 12345\n\ndata: later\n\n", &mut out)
            .unwrap_err();
        assert_eq!(error, EventTooLarge { limit: 4 });
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, "ok");
        assert!(
            reader.push(b"data: x\n\n", &mut out).is_err(),
            "nothing more is read"
        );

        // Cut inside its line, an event of the limit still passes.
        let mut reader = SseReader::new(4);
        let mut out = Vec::new();
        reader.push(b"data: 1234", &mut out).unwrap();
        reader.push(b"\r\n\r\n", &mut out).unwrap();
        assert_eq!(out[0].data, "1234");

        // A line that never ends.
        let mut reader = SseReader::new(4);
        let mut out = Vec::new();
        reader.push(b"data: 123456", &mut out).unwrap();
        assert!(reader.push(b"7", &mut out).is_err());
    }

    #[test]
    fn events_keep_their_names_across_split_chunks() {
        let mut reader = SseReader::default();
        let mut out = Vec::new();
        reader
            .push(b"event: message_start\r\ndata: {\"a\"", &mut out)
            .unwrap();
        assert!(out.is_empty());
        reader
            .push(
                b":1}\r\n\r\n: comment\n\ndata: x\ndata: y\n\ndata: [DONE]",
                &mut out,
            )
            .unwrap();
        assert_eq!(
            out,
            [
                SseEvent {
                    event: Some("message_start".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: None,
                    data: "x\ny".into()
                },
            ]
        );
        out.clear();
        reader.finish(&mut out);
        assert_eq!(out[0].data, "[DONE]");
    }

    #[test]
    fn lines_split_inside_a_character_or_a_line_end_read_whole() {
        let bytes = "data: héllo\r\n\r\ndata: [DONE]\n\n".as_bytes();
        for split in 1..bytes.len() {
            let mut reader = SseReader::default();
            let mut out = Vec::new();
            reader.push(&bytes[..split], &mut out).unwrap();
            reader.push(&bytes[split..], &mut out).unwrap();
            let data: Vec<&str> = out.iter().map(|e| e.data.as_str()).collect();
            assert_eq!(data, ["héllo", "[DONE]"], "split at {split}");
        }
    }

    #[test]
    fn an_event_of_the_limit_passes_however_it_is_chunked() {
        let mut out = Vec::new();
        let mut reader = SseReader::new(8);
        reader.push(b"data: 1234\ndata: 567\n\n", &mut out).unwrap();
        reader.push(b"data: 12345678", &mut out).unwrap();
        reader.push(b"\r\n\r\n", &mut out).unwrap();
        let data: Vec<&str> = out.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["1234\n567", "12345678"]);
    }

    #[test]
    fn data_lines_that_never_end_an_event_are_refused() {
        // Each line is short and ends, so only the event's data grows.
        let mut out = Vec::new();
        let mut reader = SseReader::new(12);
        reader.push(b"data: 1234\n", &mut out).unwrap();
        reader.push(b"data: 1234\n", &mut out).unwrap();
        assert_eq!(
            reader.push(b"data: 1234\n", &mut out),
            Err(EventTooLarge { limit: 12 })
        );
        assert!(out.is_empty());
    }
}
