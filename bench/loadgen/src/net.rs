//! Where the load goes: the target parsed from `--url`, TCP connections (optionally
//! spread over several loopback source addresses so tens of thousands of connections do
//! not exhaust one address's ephemeral ports), and [`Counted`], a stream wrapper that
//! counts the bytes received: the MB/s figures are made of it.
//!
//! Owns no protocol: HTTP lives in `http.rs`, Engine.IO/Socket.IO in `sio.rs`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

/// The server under load.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host:port`, for `Host` headers and the WebSocket URL.
    pub authority: String,
    sources: Vec<IpAddr>,
    next_source: AtomicUsize,
    connect_timeout: Duration,
    recv_buffer: Option<u32>,
}

impl Target {
    /// Parses `http://host[:port][/]`. `source_ips` > 1 binds connections round-robin to
    /// 127.0.0.1 ..= 127.0.0.<source_ips> (loopback only, IPv4 targets only).
    pub fn parse(url: &str, source_ips: u8, connect_timeout: Duration) -> Result<Target, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("--url {url}: only http:// URLs are supported (no TLS in the load generator)")
        })?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains('/') {
            return Err(format!(
                "--url {url}: give scheme, host and port only (e.g. http://127.0.0.1:8080); \
                 the request path comes from --route-path"
            ));
        }
        let with_port = if has_port(authority) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("--url {url}: cannot resolve {with_port}: {e}"))?
            .next()
            .ok_or_else(|| format!("--url {url}: {with_port} resolves to no address"))?;
        let sources: Vec<IpAddr> = if source_ips <= 1 {
            Vec::new()
        } else {
            if !(addr.is_ipv4() && addr.ip().is_loopback()) {
                return Err(format!(
                    "--source-ips needs an IPv4 loopback target (127.x.x.x), not {addr}"
                ));
            }
            (1..=source_ips)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
                .collect()
        };
        Ok(Target {
            addr,
            authority: with_port,
            sources,
            next_source: AtomicUsize::new(0),
            connect_timeout,
            recv_buffer: None,
        })
    }

    /// Connections get a receive buffer of `bytes` (`SO_RCVBUF`): a client that stops
    /// reading is then felt by the server at once.
    pub fn with_recv_buffer(mut self, bytes: u32) -> Target {
        self.recv_buffer = Some(bytes);
        self
    }

    /// A new TCP connection (`TCP_NODELAY` on), within the connect timeout.
    pub async fn connect(&self) -> io::Result<Counted<TcpStream>> {
        let source = match self.sources.len() {
            0 => None,
            n => self
                .sources
                .get(self.next_source.fetch_add(1, Ordering::Relaxed) % n)
                .copied(),
        };
        let (addr, recv_buffer) = (self.addr, self.recv_buffer);
        let connect = async move {
            let stream = match (source, recv_buffer) {
                (None, None) => TcpStream::connect(addr).await?,
                (source, recv_buffer) => {
                    let socket = if addr.is_ipv4() {
                        TcpSocket::new_v4()?
                    } else {
                        TcpSocket::new_v6()?
                    };
                    if let Some(ip) = source {
                        socket.bind(SocketAddr::new(ip, 0))?;
                    }
                    if let Some(n) = recv_buffer {
                        socket.set_recv_buffer_size(n)?;
                    }
                    socket.connect(addr).await?
                }
            };
            stream.set_nodelay(true)?;
            Ok(stream)
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(stream) => stream.map(Counted::new),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {} timed out", self.addr),
            )),
        }
    }
}

fn has_port(authority: &str) -> bool {
    match authority.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => authority.contains(':'),
    }
}

/// A stream that counts the bytes read from it (everything the server sent: headers,
/// framing and payload).
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    read: u64,
}

impl<S> Counted<S> {
    pub fn new(inner: S) -> Counted<S> {
        Counted { inner, read: 0 }
    }

    /// The bytes read since the last call.
    pub fn take_read(&mut self) -> u64 {
        std::mem::take(&mut self.read)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            this.read += (buf.filled().len() - before) as u64;
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:18080/", 1, Duration::from_secs(1)).unwrap();
        assert_eq!(t.addr, "127.0.0.1:18080".parse().unwrap());
        assert_eq!(t.authority, "127.0.0.1:18080");
        let t = Target::parse("http://127.0.0.1", 4, Duration::from_secs(1)).unwrap();
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.sources.len(), 4);
        assert!(Target::parse("https://127.0.0.1:1", 1, Duration::from_secs(1)).is_err());
        assert!(Target::parse("http://127.0.0.1:1/api", 1, Duration::from_secs(1)).is_err());
        assert!(Target::parse("http://[::1]:1", 2, Duration::from_secs(1)).is_err());
        assert!(Target::parse("http://[::1]:1", 1, Duration::from_secs(1)).is_ok());
    }
}
