//! vmfleet: a VM fleet and autoscaling controller for CI executors.
//!
//! The service shell: configuration, the store, the fleet core, the HTTP API and the CLI's
//! client. Cloud drivers live in `vmfleet-provisioner`, the image catalog in `vmfleet-images`,
//! and the pure planners in `vmfleet-scaler` and `vmfleet-gc`.

pub mod api;
pub mod asg;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod domain;
pub mod fleet;
pub mod jobs;
pub mod metrics;
pub mod metrics_out;
pub mod objects;
pub mod policy;
pub mod secrets;
pub mod server;
pub mod store;
pub mod yaml;
