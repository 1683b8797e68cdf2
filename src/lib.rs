//! mirrorctl: a reverse proxy that answers from the primary and mirrors a sampled copy of each
//! request to shadows, fire-and-forget.
//!
//! The flow, one module each: [`config`] (YAML or flags) → [`routing`] table → [`proxy`]
//! (primary path) → [`mirror`] (shadows) → [`compare`] (pairs and diffs) → [`store`]
//! (SQLite / PostgreSQL), with [`telemetry`] (metrics, access log) and the [`admin`] listener
//! reading the live state. [`cli`] holds the subcommands.

pub mod admin;
pub mod body;
pub mod cli;
pub mod compare;
pub mod config;
pub mod control;
pub mod fuzzing;
pub mod mirror;
pub mod proxy;
pub mod routing;
pub mod store;
pub mod telemetry;
