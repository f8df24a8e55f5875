//! The binary's command-line clients: code that runs in `switchyard <command>`, never in
//! the server. They speak to a running bridge over HTTP and use the library's own types
//! and rules, so each rule exists once.

pub mod flags;
