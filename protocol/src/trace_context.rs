//! W3C Trace Context (`traceparent`, version `00`): parsing a header strictly, making a
//! new trace, and making this hop's own span within a trace. Pure: the random bytes a
//! new id needs are the caller's. Never fails a request: a header that does not parse is
//! ignored, as the specification asks, and the caller starts a new trace.
//!
//! `00-<trace-id: 32 hex>-<parent-id: 16 hex>-<trace-flags: 2 hex>`, lowercase; an id of
//! all zeros is invalid. A header of a later version is read for its first four fields
//! (the specification's rule for versions this code does not know) and continued as
//! version `00`; version `ff` is invalid.

use std::fmt;

/// The name of the header, and of the environment variable a job gets it in.
pub const HEADER: &str = "traceparent";
pub const ENV_VARIABLE: &str = "TRACEPARENT";
/// A version-`00` `traceparent`'s length.
pub const LENGTH: usize = 55;

/// The `sampled` trace flag, set on the traces this code starts.
const SAMPLED: u8 = 0x01;

/// A valid trace context: always printed as a version-`00` header (`Display`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

/// The random bytes a new trace takes: a trace id and a span id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewTraceBytes {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

impl TraceParent {
    /// Reads a `traceparent` header strictly; `None` for anything that is not one.
    pub fn parse(header: &str) -> Option<Self> {
        let bytes = header.as_bytes();
        if bytes.len() < LENGTH {
            return None;
        }
        let version = hex_byte(&bytes[0..2])?;
        match version {
            0x00 if bytes.len() != LENGTH => return None,
            0xff => return None,
            // A later version: more may follow, after a dash.
            _ if bytes.len() > LENGTH && bytes[LENGTH] != b'-' => return None,
            _ => {}
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let trace_id: [u8; 16] = hex_array(&bytes[3..35])?;
        let parent_id: [u8; 8] = hex_array(&bytes[36..52])?;
        let flags = hex_byte(&bytes[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self { trace_id, parent_id, flags })
    }

    /// A new trace whose first span is `random.span_id`, sampled. An all-zero id (one
    /// chance in 2^64 or more) is made valid by setting its last bit.
    pub fn new_trace(random: NewTraceBytes) -> Self {
        Self { trace_id: non_zero(random.trace_id), parent_id: non_zero(random.span_id), flags: SAMPLED }
    }

    /// The same trace and flags with `span_id` as the parent: what this hop passes on.
    pub fn child(&self, span_id: [u8; 8]) -> Self {
        Self { parent_id: non_zero(span_id), ..*self }
    }

    /// The trace id, 32 lowercase hex digits: what log lines carry.
    pub fn trace_id(&self) -> String {
        to_hex(&self.trace_id)
    }

    /// The parent (span) id, 16 lowercase hex digits.
    pub fn parent_id(&self) -> String {
        to_hex(&self.parent_id)
    }

    pub fn flags(&self) -> u8 {
        self.flags
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "00-{}-{}-{:02x}", self.trace_id(), self.parent_id(), self.flags)
    }
}

fn non_zero<const N: usize>(mut id: [u8; N]) -> [u8; N] {
    if id == [0; N] {
        id[N - 1] = 1;
    }
    id
}

/// A lowercase hex digit's value; uppercase is invalid in a `traceparent`.
fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    Some(hex_digit(pair[0])? << 4 | hex_digit(pair[1])?)
}

fn hex_array<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = hex_byte(pair)?;
    }
    Some(out)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_header_is_read_and_printed_back_exactly() {
        let parsed = TraceParent::parse(EXAMPLE).expect("valid");
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.parent_id(), "00f067aa0ba902b7");
        assert_eq!(parsed.flags(), 1);
        assert_eq!(parsed.to_string(), EXAMPLE);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(TraceParent::parse(unsampled).map(|t| t.to_string()).as_deref(), Some(unsampled));
    }

    #[test]
    fn invalid_headers_are_refused() {
        let cases = [
            ("empty", ""),
            ("uppercase trace id", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            ("uppercase flags", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A"),
            ("uppercase version", "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("all-zero trace id", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            ("all-zero parent id", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            ("version ff", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("short trace id", "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"),
            ("long trace id", "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01"),
            ("version 00 with more", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"),
            ("later version, no dash", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"),
            ("underscores", "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01"),
            ("not hex", "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01"),
            ("spaces", " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("a command", "00-$(touch /tmp/x)aaaaaaaaaaaaaaaaaaaaaaaaa-00f067aa0ba902b7-01"),
            ("multibyte", "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01"),
        ];
        for (case, header) in cases {
            assert_eq!(TraceParent::parse(header), None, "{case}: {header:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_for_its_first_fields_and_continued_as_00() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert_eq!(TraceParent::parse(later).map(|t| t.to_string()).as_deref(), Some(EXAMPLE));
        let exact = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(TraceParent::parse(exact).map(|t| t.to_string()).as_deref(), Some(EXAMPLE));
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_and_takes_the_new_span() {
        let parent = TraceParent::parse(EXAMPLE).expect("valid");
        let child = parent.child([0xab; 8]);
        assert_eq!(child.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-abababababababab-01");
        assert_eq!(child.child([0; 8]).parent_id(), "0000000000000001");
    }

    #[test]
    fn a_new_trace_is_valid_sampled_and_parses_back() {
        let trace = TraceParent::new_trace(NewTraceBytes { trace_id: [0x12; 16], span_id: [0x34; 8] });
        assert_eq!(trace.to_string(), "00-12121212121212121212121212121212-3434343434343434-01");
        assert_eq!(TraceParent::parse(&trace.to_string()), Some(trace));
        let zeros = TraceParent::new_trace(NewTraceBytes { trace_id: [0; 16], span_id: [0; 8] });
        assert_eq!(TraceParent::parse(&zeros.to_string()), Some(zeros));
        assert_eq!(zeros.trace_id(), "00000000000000000000000000000001");
    }
}
