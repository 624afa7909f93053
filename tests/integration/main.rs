//! One integration test binary: real SQLite files in temp dirs, real HTTP.

mod conformance;
mod contract;
mod lifecycle;
mod process;
mod redis_faults;
mod server;
mod storm;
mod support;
