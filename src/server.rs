//! Assembling and serving the bridge: `app` builds the HTTP router with the Socket.IO
//! layer; `run` serves it on a listener until a shutdown signal, then drains (SPEC
//! section 8). Tests bind port 0 and call `run` directly.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use socketioxide::SocketIo;
use tokio::net::TcpListener;

use crate::bridge::Bridge;
use crate::transport::{http, polling, socketio};

/// After the streams are drained, how long open connections get to close by themselves.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// The whole service: HTTP routes, with Socket.IO at `/socket.io/`.
pub fn app(bridge: Bridge) -> (Router, SocketIo) {
    let limits = &bridge.config().limits;
    let (layer, io) = SocketIo::builder()
        .max_payload(limits.socketio_max_payload)
        .max_buffer_size(limits.socketio_buffer)
        .build_layer();
    socketio::attach(&io, bridge.clone());
    // Outermost: the polling pacer sees the Socket.IO service's responses.
    let router = http::router(bridge)
        .layer(layer)
        .layer(axum::middleware::from_fn_with_state(
            polling::Pacer::default(),
            polling::pace,
        ));
    (router, io)
}

/// Serves until `shutdown` resolves, then drains the streams, closes the sockets and
/// returns once connections are closed (or after a bounded wait).
pub async fn run(
    listener: TcpListener,
    bridge: Bridge,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (router, io) = app(bridge.clone());
    tokio::spawn(bridge.flags().clone().watch());
    let drained = std::sync::Arc::new(tokio::sync::Notify::new());
    let notify = drained.clone();
    let graceful = async move {
        shutdown.await;
        bridge.drain().await;
        io.close().await;
        notify.notify_one();
    };
    let serve = axum::serve(listener, router).with_graceful_shutdown(graceful);
    tokio::select! {
        r = serve => r,
        _ = async {
            drained.notified().await;
            tokio::time::sleep(CLOSE_LIMIT).await;
        } => {
            tracing::warn!("connections still open after the drain; closing anyway");
            Ok(())
        }
    }
}
