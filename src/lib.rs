//! EKS Connector: registers a Kubernetes cluster with AWS Systems Manager, launches and guards the
//! SSM agent, and proxies the EKS console's Kubernetes API requests with impersonation.
//!
//! Synchronous, thread-per-connection code; one module per domain:
//! - [`kube`]: the Kubernetes REST client (Secrets, `Status` errors, in-cluster config);
//! - [`tls`]: rustls configuration shared by every client;
//! - [`cli`]: what the three thin mains in `bin/` share.

pub mod backoff;
pub mod cli;
pub mod health;
pub mod init;
pub mod kube;
pub mod launcher;
pub mod proxy;
pub mod random;
pub mod signals;
pub mod ssm;
pub mod state;
pub mod tls;
pub mod watched_file;

/// The version every binary reports and sends in `User-Agent`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
