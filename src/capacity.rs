//! Open connections against `limits.max_connections` and `limits.max_connections_per_ip`.
//!
//! Owns the counts only: the accept loop (`server.rs`) takes a [`ConnectionSlot`] per
//! connection and answers the refused ones; the Socket.IO handshake asks whether one more
//! socket fits. It reads no request and knows no transport.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

/// Connections open now, total and per client address.
#[derive(Debug)]
pub struct Connections {
    open: AtomicUsize,
    /// Socket.IO sockets connected now (over WebSocket or polling).
    sockets: AtomicUsize,
    max: usize,
    /// 0: no per-address limit (nothing is counted per address then).
    max_per_ip: usize,
    per_ip: DashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the bridge holds its most open connections (limits.max_connections = {0})")]
    Total(usize),
    #[error(
        "this client address holds its most open connections (limits.max_connections_per_ip = {0})"
    )]
    PerAddress(usize),
}

impl Connections {
    pub fn new(max: usize, max_per_ip: usize) -> Arc<Connections> {
        Arc::new(Connections {
            open: AtomicUsize::new(0),
            sockets: AtomicUsize::new(0),
            max,
            max_per_ip,
            per_ip: DashMap::new(),
        })
    }

    /// Counts one more connection from `ip`, or says which limit refuses it.
    pub fn open(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Refused> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Total(self.max));
        }
        if self.max_per_ip > 0 {
            let mut n = self.per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                drop(n);
                self.per_ip.remove_if(&ip, |_, n| *n == 0);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::PerAddress(self.max_per_ip));
            }
            *n += 1;
        }
        Ok(ConnectionSlot {
            connections: self.clone(),
            ip: (self.max_per_ip > 0).then_some(ip),
        })
    }

    /// Connections open now.
    pub fn count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The total limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether one more Socket.IO socket may connect (the handshake's question; sockets
    /// over long-polling hold no connection of their own, so they count apart).
    pub fn socket_fits(&self) -> Result<(), Refused> {
        if self.sockets.load(Ordering::Acquire) >= self.max {
            return Err(Refused::Total(self.max));
        }
        Ok(())
    }

    pub fn socket_connected(&self) {
        self.sockets.fetch_add(1, Ordering::AcqRel);
    }

    pub fn socket_gone(&self) {
        self.sockets.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One counted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct ConnectionSlot {
    connections: Arc<Connections>,
    ip: Option<IpAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let c = &self.connections;
        c.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            if let Some(mut n) = c.per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
            }
            c.per_ip.remove_if(&ip, |_, n| *n == 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_addresses_are_counted_and_given_back() {
        let c = Connections::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = c.open(a).unwrap();
        let _a2 = c.open(a).unwrap();
        assert_eq!(c.open(a).unwrap_err(), Refused::PerAddress(2));
        let _b1 = c.open(b).unwrap();
        assert_eq!(c.open(b).unwrap_err(), Refused::Total(3));
        assert_eq!(c.count(), 3);
        drop(a1);
        assert_eq!(c.count(), 2);
        assert!(c.open(a).is_ok());
        // No per-address limit: nothing is kept per address.
        let c = Connections::new(10, 0);
        let _x = c.open(a).unwrap();
        let _y = c.open(a).unwrap();
        assert!(c.per_ip.is_empty());
    }
}
