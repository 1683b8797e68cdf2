//! End-to-end tests: real sockets on 127.0.0.1, in-process upstreams on port 0.

mod support;

mod cli;
mod compare;
mod control;
mod faults;
mod h1;
mod h2;
mod hygiene;
mod mirror;
mod primary;
mod routing;
mod tls;
