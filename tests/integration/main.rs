//! One integration test binary: real SQLite files in temp dirs, real HTTP.

mod contract;
mod lifecycle;
mod storm;
mod support;
