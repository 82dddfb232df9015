//! Trace context (W3C `traceparent`): one trace id per request, carried through the
//! permission decision, the tool call, hook outcomes and model requests, so one
//! `WHERE trace_id = …` shows the whole story.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;

/// `traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace, for a request that came without one. The id is the current Unix time
    /// in milliseconds (48 bits) followed by 80 random bits.
    ///
    /// Why not all random: every audit table indexes `trace_id`, and ids that rise with
    /// time are appended at the B-tree's right edge, where random ones land on any page
    /// of it. That is a fifth to a third of PostgreSQL's work per audit row while the
    /// index fits in memory (docs/benchmarks.md, "Audit trail"), and the difference
    /// between writing to a few hot pages and reading the index back from disk once a
    /// trail outgrows memory. What the W3C spec asks of random ids still holds: the
    /// right-most 7 bytes (here 10) are random, so samplers that read them see uniform
    /// values, and 80 bits per millisecond keep ids unique. The cost is that the id
    /// tells when the trace began, which its audit rows say anyway. A caller's own trace
    /// id is kept as sent (`parse`).
    pub fn generate() -> Self {
        Self::generate_at(SystemTime::now())
    }

    fn generate_at(now: SystemTime) -> Self {
        let mut rng = rand::rng();
        let millis = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let mut trace_id = [0u8; 16];
        trace_id[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
        // The random part alone is non-zero (the spec forbids an all-zero id, and a
        // clock before 1970 gives a zero prefix).
        loop {
            rng.fill_bytes(&mut trace_id[6..]);
            if trace_id[6..] != [0; 10] {
                break;
            }
        }
        let mut span_id = [0u8; 8];
        loop {
            rng.fill_bytes(&mut span_id);
            if span_id != [0; 8] {
                break;
            }
        }
        TraceContext {
            trace_id,
            span_id,
            sampled: true,
        }
    }

    /// Parses a `traceparent` header; `None` for anything malformed (the caller then
    /// starts a new trace, as the W3C spec asks).
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let mut parts = header.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2
            || version == "ff"
            || trace.len() != 32
            || parent.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let lower = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        };
        if !(lower(version) && lower(trace) && lower(parent) && lower(flags)) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(parent, &mut span_id).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// A child span in the same trace (Warden's own hop).
    pub fn child(&self) -> Self {
        let mut span_id = [0u8; 8];
        loop {
            rand::rng().fill_bytes(&mut span_id);
            if span_id != [0; 8] {
                break;
            }
        }
        TraceContext { span_id, ..*self }
    }

    /// The 32-hex-character trace id stored in audit rows.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The `traceparent` value: `00-<trace id>-<span id>-<flags>`, 55 characters,
    /// written into one buffer (it is formatted at least twice per call).
    pub fn header(&self) -> String {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        // The slices have exactly twice the input's length, so encoding cannot fail.
        let _ = hex::encode_to_slice(self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        let _ = hex::encode_to_slice(self.span_id, &mut out[36..52]);
        out[52] = b'-';
        let _ = hex::encode_to_slice([u8::from(self.sampled)], &mut out[53..55]);
        // Hex digits and dashes only: valid UTF-8.
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn round_trips_and_rejects_malformed() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::parse(header).unwrap();
        assert_eq!(ctx.header(), header);
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = ctx.child();
        assert_eq!(child.trace_id, ctx.trace_id);
        assert_ne!(child.span_id, ctx.span_id);
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
        assert_ne!(
            TraceContext::generate().trace_id,
            TraceContext::generate().trace_id
        );
    }

    #[test]
    fn generated_ids_rise_with_time_and_end_in_random_bits() {
        let at = |millis: u64| UNIX_EPOCH + Duration::from_millis(millis);
        let earlier = TraceContext::generate_at(at(1_795_000_000_000));
        let later = TraceContext::generate_at(at(1_795_000_000_001));
        assert!(earlier.trace_id < later.trace_id);
        assert_eq!(
            earlier.trace_id[..6],
            1_795_000_000_000u64.to_be_bytes()[2..]
        );
        // Same millisecond: the prefix is shared, the random tails differ.
        let twin = TraceContext::generate_at(at(1_795_000_000_000));
        assert_eq!(twin.trace_id[..6], earlier.trace_id[..6]);
        assert_ne!(twin.trace_id[6..], earlier.trace_id[6..]);
        // A clock before 1970 still gives a valid (non-zero) id that round-trips.
        let before_epoch = TraceContext::generate_at(UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(before_epoch.trace_id[..6], [0; 6]);
        assert_eq!(
            TraceContext::parse(&before_epoch.header()),
            Some(before_epoch)
        );
    }
}
