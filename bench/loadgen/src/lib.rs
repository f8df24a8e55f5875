//! The load generator's clients, as a library: the binary (`main.rs`) drives them under
//! load, and the bridge's black-box tests use the same lean clients where a real client
//! library cannot do what a test needs (thousands of sockets, a reader that stops reading).
//!
//! `net` (target, connections, byte counting), `http` (the HTTP/1.1 client and chunked
//! decoding), `frames` (NDJSON lines, SSE frames), `sio` (the Engine.IO / Socket.IO
//! client over WebSocket and long-polling), `check` (what a correct stream is), `stats`
//! (histograms, counters, tables), `procfs` (CPU, memory and threads from /proc), `load`
//! (the load run), `idle` (idle connections and their memory).

pub mod check;
pub mod frames;
pub mod http;
pub mod idle;
pub mod load;
pub mod net;
pub mod procfs;
pub mod sio;
pub mod stats;
