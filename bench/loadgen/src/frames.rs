//! Splitting a decoded response body into NDJSON lines and SSE frames, across reads.
//!
//! Both parsers own a buffer the HTTP layer appends decoded body bytes to
//! ([`Lines::buf_for_append`]); lines and frames are handed out as borrowed slices, so
//! a stream costs no allocation per event once the buffers have grown. Neither parser
//! knows JSON or the stream rules (`check.rs` does).

use std::fmt;

/// A line or frame the parsers refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String);

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Complete lines of a byte stream (`\n` or `\r\n` endings), a partial last line kept
/// until the rest of it arrives.
#[derive(Debug)]
pub struct Lines {
    buf: Vec<u8>,
    /// Start of the first line not handed out yet.
    pos: usize,
    /// Bytes from `pos` up to here hold no `\n` (not rescanned on the next call).
    scanned: usize,
    max_line: usize,
}

impl Lines {
    pub fn new(max_line: usize) -> Lines {
        Lines {
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
            scanned: 0,
            max_line,
        }
    }

    /// Forgets everything (a new response).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.scanned = 0;
    }

    /// The buffer to append new bytes to; consumed lines are dropped from it first.
    pub fn buf_for_append(&mut self) -> &mut Vec<u8> {
        if self.pos > 0 {
            if self.pos == self.buf.len() {
                self.buf.clear();
                self.scanned = 0;
                self.pos = 0;
            } else if self.pos * 2 >= self.buf.len() {
                self.buf.drain(..self.pos);
                self.scanned -= self.pos;
                self.pos = 0;
            }
        }
        &mut self.buf
    }

    /// The next complete line, without its line ending.
    pub fn next_line(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let from = self.scanned.max(self.pos);
        let Some(rest) = self.buf.get(from..) else {
            return Ok(None);
        };
        match rest.iter().position(|&b| b == b'\n') {
            Some(off) => {
                let start = self.pos;
                let end = from + off;
                self.pos = end + 1;
                self.scanned = self.pos;
                let line = self.buf.get(start..end).unwrap_or_default();
                Ok(Some(line.strip_suffix(b"\r").unwrap_or(line)))
            }
            None => {
                self.scanned = self.buf.len();
                if self.buf.len() - self.pos > self.max_line {
                    Err(FrameError(format!(
                        "a line longer than {} bytes without a line break",
                        self.max_line
                    )))
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// Bytes of an unfinished line.
    pub fn pending(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }
}

/// One dispatched SSE event.
#[derive(Debug, PartialEq, Eq)]
pub struct SseFrame<'a> {
    /// The `event:` field; empty when absent (the SSE default type `message`).
    pub event: &'a [u8],
    /// The `id:` field of this frame, if it had one.
    pub id: Option<&'a [u8]>,
    /// The `data:` lines joined with `\n`.
    pub data: &'a [u8],
}

/// Server-Sent Events frames (the WHATWG event-stream format: `field: value` lines, a
/// blank line dispatches, `:` starts a comment, several `data:` lines join with `\n`).
/// Line endings `\n` and `\r\n`; a lone `\r` is not treated as a line ending.
#[derive(Debug)]
pub struct SseParser {
    lines: Lines,
    event: Vec<u8>,
    id: Vec<u8>,
    has_id: bool,
    data: Vec<u8>,
    data_lines: usize,
    dispatched: bool,
    /// Comment lines seen (`: heartbeat` in `data_only` framing).
    pub comments: u64,
}

impl SseParser {
    pub fn new(max_line: usize) -> SseParser {
        SseParser {
            lines: Lines::new(max_line),
            event: Vec::new(),
            id: Vec::new(),
            has_id: false,
            data: Vec::with_capacity(1024),
            data_lines: 0,
            dispatched: false,
            comments: 0,
        }
    }

    pub fn reset(&mut self) {
        self.lines.reset();
        self.clear_fields();
        self.comments = 0;
    }

    fn clear_fields(&mut self) {
        self.event.clear();
        self.id.clear();
        self.has_id = false;
        self.data.clear();
        self.data_lines = 0;
        self.dispatched = false;
    }

    pub fn buf_for_append(&mut self) -> &mut Vec<u8> {
        self.lines.buf_for_append()
    }

    /// The next complete frame, if the bytes so far hold one.
    pub fn next_frame(&mut self) -> Result<Option<SseFrame<'_>>, FrameError> {
        if self.dispatched {
            self.clear_fields();
        }
        loop {
            let Some(line) = self.lines.next_line()? else {
                return Ok(None);
            };
            if line.is_empty() {
                if self.data_lines == 0 {
                    // No data: nothing is dispatched (WHATWG), the fields start over.
                    self.clear_fields();
                    continue;
                }
                self.dispatched = true;
                return Ok(Some(SseFrame {
                    event: &self.event,
                    id: self.has_id.then_some(self.id.as_slice()),
                    data: &self.data,
                }));
            }
            if line.first() == Some(&b':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(colon) => {
                    let value = line.get(colon + 1..).unwrap_or_default();
                    (
                        line.get(..colon).unwrap_or_default(),
                        value.strip_prefix(b" ").unwrap_or(value),
                    )
                }
                None => (line, &b""[..]),
            };
            match field {
                b"data" => {
                    if self.data_lines > 0 {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                    self.data_lines += 1;
                }
                b"event" => {
                    self.event.clear();
                    self.event.extend_from_slice(value);
                }
                b"id" => {
                    self.id.clear();
                    self.id.extend_from_slice(value);
                    self.has_id = true;
                }
                _ => {} // `retry` and unknown fields are ignored, as browsers do
            }
        }
    }

    /// Whether bytes of an unfinished frame are buffered.
    pub fn pending(&self) -> bool {
        !self.lines.pending().is_empty() || (!self.dispatched && self.data_lines > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(parts: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut l = Lines::new(1024);
        let mut out = Vec::new();
        for p in parts {
            l.buf_for_append().extend_from_slice(p);
            while let Some(line) = l.next_line().unwrap() {
                out.push(line.to_vec());
            }
        }
        assert!(l.pending().is_empty());
        out
    }

    #[test]
    fn lines_split_across_reads() {
        let want: Vec<Vec<u8>> = vec![b"{\"a\":1}".to_vec(), b"".to_vec(), b"{\"b\":2}".to_vec()];
        let whole = b"{\"a\":1}\n\r\n{\"b\":2}\r\n";
        assert_eq!(lines_of(&[whole]), want);
        // every split point, and byte by byte
        for cut in 0..whole.len() {
            assert_eq!(lines_of(&[&whole[..cut], &whole[cut..]]), want, "cut {cut}");
        }
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(lines_of(&bytes), want);
    }

    #[test]
    fn a_line_without_end_over_the_limit_is_refused() {
        let mut l = Lines::new(8);
        l.buf_for_append().extend_from_slice(b"0123456");
        assert_eq!(l.next_line(), Ok(None));
        l.buf_for_append().extend_from_slice(b"789");
        assert!(l.next_line().is_err());
    }

    #[test]
    fn buffer_is_compacted_and_partial_line_kept() {
        let mut l = Lines::new(1 << 20);
        for i in 0..1000 {
            l.buf_for_append()
                .extend_from_slice(format!("line {i}\nhalf").as_bytes());
            assert_eq!(l.next_line().unwrap(), Some(format!("line {i}").as_bytes()));
            assert_eq!(l.next_line().unwrap(), None);
            assert_eq!(l.pending(), b"half");
            l.buf_for_append().extend_from_slice(b"\n");
            assert_eq!(l.next_line().unwrap(), Some(&b"half"[..]));
        }
        assert!(l.buf.capacity() < 64 * 1024);
    }

    type Owned = (Vec<u8>, Option<Vec<u8>>, Vec<u8>);

    fn frames_of(parts: &[&[u8]]) -> (Vec<Owned>, u64) {
        let mut p = SseParser::new(1 << 16);
        let mut out = Vec::new();
        for part in parts {
            p.buf_for_append().extend_from_slice(part);
            while let Some(f) = p.next_frame().unwrap() {
                out.push((f.event.to_vec(), f.id.map(<[u8]>::to_vec), f.data.to_vec()));
            }
        }
        assert!(!p.pending());
        (out, p.comments)
    }

    #[test]
    fn sse_frames_split_across_reads() {
        let whole: &[u8] = b"id: 0\nevent: status_update\ndata: {\"status\":\"started\"}\n\n\
            : heartbeat\n\
            event: heartbeat\r\ndata: {\"timestamp\":1}\r\n\r\n\
            id: 1\nevent: chunk\ndata:{\"text\":\"ab\"}\n\n\
            data: line one\ndata: line two\nretry: 10\n\n\
            event: ignored-without-data\n\n";
        let want: Vec<Owned> = vec![
            (
                b"status_update".to_vec(),
                Some(b"0".to_vec()),
                b"{\"status\":\"started\"}".to_vec(),
            ),
            (b"heartbeat".to_vec(), None, b"{\"timestamp\":1}".to_vec()),
            (
                b"chunk".to_vec(),
                Some(b"1".to_vec()),
                b"{\"text\":\"ab\"}".to_vec(),
            ),
            (b"".to_vec(), None, b"line one\nline two".to_vec()),
        ];
        assert_eq!(frames_of(&[whole]), (want.clone(), 1));
        for cut in 0..whole.len() {
            assert_eq!(
                frames_of(&[&whole[..cut], &whole[cut..]]),
                (want.clone(), 1),
                "cut {cut}"
            );
        }
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(frames_of(&bytes), (want, 1));
    }

    #[test]
    fn an_unfinished_frame_is_pending() {
        let mut p = SseParser::new(1024);
        p.buf_for_append().extend_from_slice(b"id: 3\ndata: {}\n");
        assert_eq!(p.next_frame().unwrap(), None);
        assert!(p.pending());
        p.buf_for_append().extend_from_slice(b"\n");
        assert!(p.next_frame().unwrap().is_some());
        assert_eq!(p.next_frame().unwrap(), None);
        assert!(!p.pending());
    }
}
