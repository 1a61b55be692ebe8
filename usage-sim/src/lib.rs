//! `usage-sim`: a deterministic local stand-in for the Usage part of `api.onomondo.com`
//! (specification: `upstream-api.md` §8).
//!
//! Guarantees: the same `SimOptions` give byte-identical responses to the same requests; all
//! data is generated and serialized once in `Simulator::new`, so serving is lookups and
//! copies; every response, errors included, is JSON with a correct `Content-Length` unless a
//! misbehavior (`--misbehavior`) is switched on; every upstream behaviour the spec marks as a
//! guess is a switch in `SimOptions`.
//!
//! Layout, lowest first; a module uses only modules on lines above its own, never one beside or
//! below it:
//! - `calendar` (dates), `random` (the deterministic draws), `clock`, `conn` (the per-connection
//!   handle cut-short bodies use), `options` (the CLI, and every mode it names);
//! - `query` (parameter parsing), `auth`, `ratelimit`, `faults`, `stats`, `data` (generator and
//!   views), `body` (whole, trickled and cut-short bodies);
//! - `cursor` (`next_page`), `page` (selection and rendering), `response` (the JSON head and
//!   error bodies), `misbehave` (the misbehaving answers of `--misbehavior`);
//! - `simulator` (`Simulator::new`: options checked, data built, shared state);
//! - `control` (`/__sim/*`);
//! - `service` (the hyper handler and `serve`, its own accept loop).

mod auth;
mod body;
mod calendar;
mod clock;
mod conn;
mod control;
mod cursor;
mod data;
mod faults;
mod misbehave;
mod options;
mod page;
mod query;
mod random;
mod ratelimit;
mod response;
mod service;
mod simulator;
mod stats;

pub use options::{
    AuthMode, CursorMode, Misbehavior, RateAlign, RateScope, RecordShape, SimOptions,
};
pub use service::serve;
pub use simulator::{SimError, Simulator};
