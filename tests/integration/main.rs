//! One integration test binary: real HTTP, real SQLite files in temp dirs,
//! and a real redis-server and PostgreSQL that the tests start themselves.

mod abuse;
mod admin;
mod admission;
mod after_sale;
mod checkout;
mod conformance;
mod contract;
mod fuzz;
mod lifecycle;
mod metrics;
mod model;
mod pages;
mod process;
mod promotions;
mod queue;
mod recovery;
mod redis_faults;
mod redis_topologies;
mod reserve_script;
mod retire;
mod server;
mod storm;
mod support;
mod webhooks;
