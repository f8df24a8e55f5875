//! A lean HTTP/1.1 client over one TCP connection.
//!
//! Writes requests the caller prepared once (head and body in one buffer), parses the
//! response head with httparse, and decodes the body (chunked, `Content-Length`, or until
//! the server closes) into the caller's buffer, so the NDJSON/SSE parsers see body bytes
//! only. One connection carries one request at a time; it is reusable (keep-alive) unless
//! the response said `Connection: close`, was HTTP/1.0, or ran until close. No TLS, no
//! redirects, no compression: the load generator measures the server, not a client stack.

use std::fmt;
use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net::{Counted, Target};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug)]
pub enum HttpError {
    /// The server closed the connection. `before_response`: not one byte of this
    /// response had arrived (a stale keep-alive connection: retry on a new one).
    Closed {
        before_response: bool,
    },
    Io(io::Error),
    /// Bytes that are not HTTP/1.1 as this client understands it.
    Protocol(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Closed {
                before_response: true,
            } => f.write_str("connection closed before the response"),
            HttpError::Closed {
                before_response: false,
            } => f.write_str("connection closed mid-response"),
            HttpError::Io(e) => write!(f, "i/o error: {e}"),
            HttpError::Protocol(m) => write!(f, "bad HTTP: {m}"),
        }
    }
}

/// What the response head says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub content_type: String,
}

#[derive(Debug)]
enum Body {
    Chunked(ChunkedDecoder),
    Length(u64),
    UntilClose,
    Done,
}

/// Builds a request with a body, ready to be written as is.
pub fn request(
    method: &str,
    path: &str,
    authority: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\n");
    for (name, value) in headers {
        r.push_str(name);
        r.push_str(": ");
        r.push_str(value);
        r.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// One keep-alive HTTP/1.1 connection.
#[derive(Debug)]
pub struct HttpConn {
    io: Counted<TcpStream>,
    rbuf: Vec<u8>,
    rpos: usize,
    body: Body,
    reusable: bool,
}

impl HttpConn {
    pub async fn connect(target: &Target) -> io::Result<HttpConn> {
        Ok(HttpConn {
            io: target.connect().await?,
            rbuf: Vec::with_capacity(READ_CHUNK),
            rpos: 0,
            body: Body::Done,
            reusable: true,
        })
    }

    /// Bytes received from the server since the last call.
    pub fn take_read(&mut self) -> u64 {
        self.io.take_read()
    }

    /// Whether another request may be sent on this connection.
    pub fn reusable(&self) -> bool {
        self.reusable && matches!(self.body, Body::Done) && self.rpos == self.rbuf.len()
    }

    pub async fn send(&mut self, request: &[u8]) -> Result<(), HttpError> {
        self.io
            .write_all(request)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => HttpError::Closed {
                    before_response: true,
                },
                _ => HttpError::Io(e),
            })
    }

    /// Reads from the socket; 0 at end of stream.
    async fn fill(&mut self) -> Result<usize, HttpError> {
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > 0 && self.rpos * 2 >= self.rbuf.len() {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        self.rbuf.reserve(READ_CHUNK);
        match self.io.read_buf(&mut self.rbuf).await {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(0),
            Err(e) => Err(HttpError::Io(e)),
        }
    }

    /// Reads the response head (skipping `1xx` heads) and prepares the body decoder.
    pub async fn read_head(&mut self) -> Result<Head, HttpError> {
        let mut received_any = false;
        loop {
            if let Some(unread) = self.rbuf.get(self.rpos..).filter(|u| !u.is_empty()) {
                received_any = true;
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(unread) {
                    Ok(httparse::Status::Complete(n)) => {
                        let status = resp.code.unwrap_or(0);
                        let mut chunked = false;
                        let mut length = None;
                        let mut close = resp.version != Some(1);
                        let mut content_type = String::new();
                        for h in resp.headers.iter() {
                            let value = String::from_utf8_lossy(h.value);
                            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                                chunked =
                                    value.to_ascii_lowercase().trim_end().ends_with("chunked");
                            } else if h.name.eq_ignore_ascii_case("content-length") {
                                length = Some(value.trim().parse::<u64>().map_err(|_| {
                                    HttpError::Protocol(format!("Content-Length {value:?}"))
                                })?);
                            } else if h.name.eq_ignore_ascii_case("connection") {
                                let v = value.to_ascii_lowercase();
                                if v.contains("close") {
                                    close = true;
                                } else if v.contains("keep-alive") {
                                    close = false;
                                }
                            } else if h.name.eq_ignore_ascii_case("content-type") {
                                content_type = value.into_owned();
                            }
                        }
                        self.rpos += n;
                        if (100..200).contains(&status) && status != 101 {
                            continue;
                        }
                        self.reusable = !close;
                        self.body = if chunked {
                            Body::Chunked(ChunkedDecoder::default())
                        } else if let Some(len) = length {
                            if len == 0 {
                                Body::Done
                            } else {
                                Body::Length(len)
                            }
                        } else if status == 204 || status == 304 {
                            Body::Done
                        } else {
                            self.reusable = false;
                            Body::UntilClose
                        };
                        return Ok(Head {
                            status,
                            content_type,
                        });
                    }
                    Ok(httparse::Status::Partial) if unread.len() > MAX_HEAD => {
                        return Err(HttpError::Protocol(format!(
                            "response head longer than {MAX_HEAD} bytes"
                        )));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => return Err(HttpError::Protocol(format!("response head: {e}"))),
                }
            }
            if self.fill().await? == 0 {
                self.reusable = false;
                return Err(HttpError::Closed {
                    before_response: !received_any,
                });
            }
        }
    }

    /// Appends the next body bytes to `out`: `Ok(true)` when some were appended,
    /// `Ok(false)` once the body is complete.
    pub async fn read_body(&mut self, out: &mut Vec<u8>) -> Result<bool, HttpError> {
        loop {
            let before = out.len();
            let unread = self.rbuf.get(self.rpos..).unwrap_or_default();
            match &mut self.body {
                Body::Done => return Ok(false),
                Body::Chunked(d) => {
                    let used = d.decode(unread, out).map_err(HttpError::Protocol)?;
                    self.rpos += used;
                    if d.is_done() {
                        self.body = Body::Done;
                    }
                }
                Body::Length(rest) => {
                    let take = (*rest).min(unread.len() as u64) as usize;
                    out.extend_from_slice(unread.get(..take).unwrap_or_default());
                    self.rpos += take;
                    *rest -= take as u64;
                    if *rest == 0 {
                        self.body = Body::Done;
                    }
                }
                Body::UntilClose => {
                    out.extend_from_slice(unread);
                    self.rpos = self.rbuf.len();
                }
            }
            if out.len() > before {
                return Ok(true);
            }
            if matches!(self.body, Body::Done) {
                return Ok(false);
            }
            if self.fill().await? == 0 {
                self.reusable = false;
                return match self.body {
                    Body::UntilClose => {
                        self.body = Body::Done;
                        Ok(false)
                    }
                    _ => Err(HttpError::Closed {
                        before_response: false,
                    }),
                };
            }
        }
    }

    /// Reads the whole body into `out`, refusing more than `limit` bytes.
    pub async fn read_body_to_end(
        &mut self,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), HttpError> {
        while self.read_body(out).await? {
            if out.len() > limit {
                self.reusable = false;
                return Err(HttpError::Protocol(format!("body over {limit} bytes")));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of a chunk size.
    Size,
    /// `;extensions` or spaces after the size, up to the line end.
    SizeExt,
    /// `\n` after the size line's `\r`.
    SizeLf,
    /// Data bytes still to come in this chunk.
    Data(u64),
    /// The `\r\n` after a chunk's data.
    DataCr,
    DataLf,
    /// At the start of a trailer line (an empty one ends the body).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    Done,
}

/// `Transfer-Encoding: chunked` decoding, any split of the input across calls.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    digits: u32,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    fn size_line_done(&mut self) {
        self.state = if self.size == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data(self.size)
        };
        self.size = 0;
        self.digits = 0;
    }

    /// Decodes from `input`, appending data to `out`; returns the bytes of `input` used
    /// (all of them unless the body ended within `input`).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, String> {
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Data(rest) => {
                    let take = rest.min((input.len() - i) as u64) as usize;
                    out.extend_from_slice(input.get(i..i + take).unwrap_or_default());
                    i += take;
                    self.state = if rest == take as u64 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data(rest - take as u64)
                    };
                    continue;
                }
                ChunkState::Size => match (b as char).to_digit(16) {
                    Some(v) => {
                        if self.digits >= 15 {
                            return Err("chunk size too large".into());
                        }
                        self.size = self.size * 16 + u64::from(v);
                        self.digits += 1;
                    }
                    None if self.digits == 0 => {
                        return Err(format!("chunk size expected, got byte {b:#04x}"));
                    }
                    None => match b {
                        b'\r' => self.state = ChunkState::SizeLf,
                        b'\n' => self.size_line_done(),
                        b';' | b' ' | b'\t' => self.state = ChunkState::SizeExt,
                        _ => return Err(format!("bad byte {b:#04x} in a chunk size")),
                    },
                },
                ChunkState::SizeExt => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.size_line_done(),
                    _ => {}
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err("chunk size line not ended by CRLF".into());
                    }
                    self.size_line_done();
                }
                ChunkState::DataCr => match b {
                    b'\r' => self.state = ChunkState::DataLf,
                    b'\n' => self.state = ChunkState::Size,
                    _ => return Err("chunk data longer than its size".into()),
                },
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err("chunk data not ended by CRLF".into());
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => {
                    self.state = match b {
                        b'\r' => ChunkState::TrailerLf,
                        b'\n' => ChunkState::Done,
                        _ => ChunkState::TrailerLine,
                    }
                }
                ChunkState::TrailerLine => {
                    if b == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err("trailer section not ended by CRLF".into());
                    }
                    self.state = ChunkState::Done;
                }
            }
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] =
        b"5\r\nhello\r\n1;ext=1\r\n \r\n10\r\n0123456789abcdef\r\n0\r\nx-trailer: y\r\n\r\n";

    fn decode_parts(parts: &[&[u8]]) -> (Vec<u8>, bool, usize) {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut used = 0;
        for p in parts {
            used += d.decode(p, &mut out).unwrap();
        }
        (out, d.is_done(), used)
    }

    #[test]
    fn chunked_whole_and_split_at_every_point() {
        let want = b"hello 0123456789abcdef".to_vec();
        assert_eq!(decode_parts(&[BODY]), (want.clone(), true, BODY.len()));
        for cut in 0..BODY.len() {
            assert_eq!(
                decode_parts(&[&BODY[..cut], &BODY[cut..]]),
                (want.clone(), true, BODY.len()),
                "cut {cut}"
            );
        }
        let bytes: Vec<&[u8]> = BODY.chunks(1).collect();
        assert_eq!(decode_parts(&bytes), (want, true, BODY.len()));
    }

    #[test]
    fn chunked_stops_at_the_end_of_the_body() {
        let mut input = b"3\r\nabc\r\n0\r\n\r\n".to_vec();
        let end = input.len();
        input.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        assert_eq!(d.decode(&input, &mut out), Ok(end));
        assert!(d.is_done());
        assert_eq!(out, b"abc");
    }

    #[test]
    fn chunked_refuses_garbage() {
        for bad in [
            &b"zz\r\n"[..],
            b"3\r\nabcd\r\n",
            b"3\rx",
            b"fffffffffffffffff\r\n",
            b"\r\n",
        ] {
            let mut d = ChunkedDecoder::default();
            assert!(d.decode(bad, &mut Vec::new()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_bytes() {
        let r = request(
            "POST",
            "/x",
            "h:1",
            &[("Accept", "text/event-stream")],
            b"{}",
        );
        assert_eq!(
            r,
            b"POST /x HTTP/1.1\r\nHost: h:1\r\nAccept: text/event-stream\r\nContent-Length: 2\r\n\r\n{}"
        );
        let r = request("GET", "/y", "h:1", &[], b"");
        assert_eq!(r, b"GET /y HTTP/1.1\r\nHost: h:1\r\n\r\n");
    }

    #[tokio::test]
    async fn keep_alive_connection_reads_two_responses_split_anyhow() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = vec![0u8; 1024];
            let _ = s.read(&mut req).await.unwrap();
            let resp =
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab\ncd\r\n0\r\n\r\n";
            for b in resp.chunks(3) {
                s.write_all(b).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let _ = s.read(&mut req).await.unwrap();
            s.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\nconnection: close\r\n\r\nnop",
            )
            .await
            .unwrap();
        });
        let target = Target::parse(
            &format!("http://{addr}"),
            1,
            std::time::Duration::from_secs(2),
        )
        .unwrap();
        let mut c = HttpConn::connect(&target).await.unwrap();
        c.send(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(c.read_head().await.unwrap().status, 200);
        let mut body = Vec::new();
        c.read_body_to_end(&mut body, 100).await.unwrap();
        assert_eq!(body, b"ab\ncd");
        assert!(c.reusable());
        c.send(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(c.read_head().await.unwrap().status, 404);
        body.clear();
        c.read_body_to_end(&mut body, 100).await.unwrap();
        assert_eq!(body, b"nop");
        assert!(!c.reusable());
        assert!(c.take_read() > 100);
        server.await.unwrap();
    }
}
