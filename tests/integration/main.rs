//! One integration test binary: real SQLite files in temp dirs, real HTTP.

mod contract;
mod crash;
mod lifecycle;
mod server;
mod storm;
mod support;
