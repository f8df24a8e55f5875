//! Per-route transport flags (SPEC section 5): the model, its parsing and validation, and
//! the pure evaluation of a flag for a subject.
//!
//! Owns:
//! - [`model`]: [`Flags`] (the content of `flags/flags.toml`), [`RouteFlag`] (one route's
//!   table, also the JSON body of `PUT /admin/flags/{route}`), written back as TOML and
//!   JSON.
//! - [`parse`]: reading them from TOML or JSON and validating, every problem reported in
//!   the crate's one [`crate::problem::Problem`] shape, naming its route and field.
//! - [`percent`]: [`Percent`] (basis points, converted exactly once from the decimal as
//!   written).
//! - [`eval`]: MurmurHash3 bucketing, [`evaluate`] (deny, then allow, then the mode) and
//!   [`Enforcement`] (what a request on a given transport gets).
//! - [`store`]: the flags in force, `flags.toml` (watched, written atomically) and the
//!   audit log; the only part that does file I/O.
//!
//! [`model`], [`parse`], [`percent`] and [`eval`] must not touch: no I/O, no file
//! watching, no HTTP, no metrics, no locks, no clock. Reading and writing `flags.toml` and
//! `audit.jsonl`, reloading and the admin API live in [`store`] and the admin routes (and
//! the `switchyard flags` command of the binary, over HTTP), and call in here; everything
//! in them is a pure function of its arguments, and evaluation does not allocate.

pub mod eval;
pub mod model;
pub mod parse;
pub mod percent;
pub mod store;

pub use eval::{
    Enforcement, Evaluation, Reason, Target, bucket, evaluate, misrouted, murmur3_x86_32,
};
pub use model::{Flags, Mode, RouteFlag, Sticky, SubjectRef, SubjectRefError};
pub use percent::{Percent, PercentError};
