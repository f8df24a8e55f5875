//! Assembling and serving the bridge: `app` builds the HTTP router with the Socket.IO
//! layer and the CORS guard; `run` accepts connections on a listener until a shutdown
//! signal, then drains (SPEC section 8). Tests bind port 0 and call `run` directly.
//!
//! Connections are served by hyper's HTTP/1.1 server with the connection limits of
//! `limits`: the largest request head (431 above it) and the time a connection may take
//! to send one (a connection that sends nothing, or idles on keep-alive, is closed).
//! This module owns connections only; requests are the router's business.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::bridge::Bridge;
use crate::capacity::Refused;
use crate::error::ApiError;
use crate::transport::{cors, http, polling, socketio};

/// Most headers in one request head (hyper's default is 100).
const MAX_HEADERS: usize = 100;

/// Connections the kernel queues before they are accepted (the kernel caps it at
/// `net.core.somaxconn`): a burst of connects must not overflow a 128-deep queue into
/// one-second SYN retransmits.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listening socket (address reuse on, a deep accept queue).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The whole service: HTTP routes, with Socket.IO at `/socket.io/`.
pub fn app(bridge: Bridge) -> (Router, SocketIo) {
    let (router, io, _) = assemble(bridge);
    (router, io)
}

/// [`app`], with the polling pacer that shutdown asks whether polling clients are done.
fn assemble(bridge: Bridge) -> (Router, SocketIo, polling::Pacer) {
    let limits = &bridge.config().limits;
    // One packet limit for both transports, as Node socket.io's maxHttpBufferSize: the
    // WebSocket message and frame limits follow it (socketioxide's default is 64 MiB).
    let ws_max = usize::try_from(limits.socketio_max_payload).unwrap_or(usize::MAX);
    let (layer, io) = SocketIo::builder()
        .max_payload(limits.socketio_max_payload)
        .ws_max_message_size(ws_max)
        .ws_max_frame_size(ws_max)
        .max_buffer_size(limits.socketio_buffer)
        .ws_read_buffer_size(socketio::WS_READ_BUFFER)
        .ping_interval(Duration::from_secs(limits.socketio_ping_interval_secs))
        .ping_timeout(Duration::from_secs(limits.socketio_ping_timeout_secs))
        .build_layer();
    socketio::attach(&io, bridge.clone());
    let cors = cors::Cors::new(&bridge.config().cors);
    let pacer = polling::Pacer::default();
    // Outermost: the CORS guard sees every request first; the polling pacer sees the
    // Socket.IO service's responses.
    let router = http::router(bridge)
        .layer(layer)
        .layer(axum::middleware::from_fn(socketio::detach_head))
        .layer(axum::middleware::from_fn_with_state(
            pacer.clone(),
            polling::pace,
        ))
        .layer(axum::middleware::from_fn_with_state(cors, cors::guard));
    (router, io, pacer)
}

/// Refused connections answered at once; past this many, more are closed unanswered.
const MAX_REFUSING: usize = 1024;

/// Answers a connection over `limits.max_connections` (or the per-address limit): its
/// request gets 429 `over_capacity` (WebSocket upgrades included) and the connection
/// closes. The request is read first, so the client sees the answer rather than a reset.
fn refuse(
    conn: &http1::Builder,
    stream: tokio::net::TcpStream,
    refused: Refused,
    refusing: &Arc<AtomicUsize>,
) {
    tracing::debug!(%refused, "connection refused");
    if refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        refusing.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let (conn, refusing) = (conn.clone(), refusing.clone());
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |_req| async move {
            let mut resp = ApiError::Connections(refused).into_response();
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok::<_, std::convert::Infallible>(resp)
        });
        let _ = conn.serve_connection(TokioIo::new(stream), service).await;
        refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Serves until `shutdown` resolves, then drains the streams, closes the sockets and
/// returns once connections are closed (or after a bounded wait).
pub async fn run(
    listener: TcpListener,
    bridge: Bridge,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (router, io, pacer) = assemble(bridge.clone());
    tokio::spawn(bridge.flags().clone().watch());
    let limits = &bridge.config().limits;
    let shutdown_limits = &bridge.config().shutdown;
    // After the drain: how long polling clients get to fetch their last packets, then how
    // long open connections get to close by themselves.
    let poll_flush = Duration::from_secs(shutdown_limits.poll_flush_secs);
    let close_limit = Duration::from_secs(shutdown_limits.close_secs);
    let mut conn = http1::Builder::new();
    conn.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_timeout_secs))
        .max_header_size(limits.max_header_bytes)
        .max_headers(MAX_HEADERS);
    let service = TowerToHyperService::new(router);
    let refusing = Arc::new(AtomicUsize::new(0));
    let connections = bridge.connections().clone();

    // Connections are accepted through the drain (a new request then gets 503 `draining`);
    // once the streams have ended, each connection is asked to close after its response.
    let (closing, closing_rx) = watch::channel(false);
    let drained = async move {
        shutdown.await;
        bridge.drain().await;
        pacer.flushed(std::time::Instant::now(), poll_flush).await;
        io.close().await;
    };
    tokio::pin!(drained);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut drained => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let slot = match connections.open(peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                refuse(&conn, stream, refused, &refusing);
                continue;
            }
        };
        let mut closing = closing_rx.clone();
        let (conn, service) = (conn.clone(), service.clone());
        tokio::spawn(async move {
            let _slot = slot;
            // Made inside the task: its buffers belong to the worker that serves it, and
            // the connection is stored once in the task, not also as a captured value.
            let served = conn
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(served);
            let result = tokio::select! {
                r = served.as_mut() => r,
                () = async { _ = closing.wait_for(|c| *c).await; } => {
                    served.as_mut().graceful_shutdown();
                    served.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(closing_rx);
    closing.send_replace(true);
    // Every connection task holds a receiver: all closed once none is left.
    if tokio::time::timeout(close_limit, closing.closed())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain; closing anyway");
    }
    Ok(())
}
