//! EKS Connector: registers a Kubernetes cluster with AWS Systems Manager, launches and guards the
//! SSM agent, and proxies the EKS console's Kubernetes API requests with impersonation.
//!
//! Synchronous, thread-per-connection code; one module per domain:
//! - [`init`]: the init container (register with SSM or reuse, Vault first, then the Secret);
//! - [`launcher`]: PID 1 in the SSM agent's container;
//! - [`keysync`]: copies every key the agent rotates into the state Secret (run by the launcher);
//! - [`proxy`]: the fail-closed, streaming, pooled Kubernetes API proxy;
//! - [`ssm`]: the one AWS call, `RegisterManagedInstance`, with endpoints and the HTTPS_PROXY egress ([`ssm::egress`]);
//! - [`state`]: the SSM agent's Vault files and the state Secret, byte for byte;
//! - [`kube`]: the Kubernetes REST client (Secrets, `Status` errors, in-cluster config);
//!
//! and the plumbing they share: [`tls`], [`cli`], [`backoff`], [`signals`], [`health`],
//! [`watched_file`], [`random`], [`utc`].

pub mod backoff;
pub mod cli;
pub mod health;
pub mod http;
pub mod init;
pub mod keysync;
pub mod kube;
pub mod launcher;
pub mod proxy;
pub mod random;
pub mod signals;
pub mod ssm;
pub mod state;
pub mod tls;
pub mod utc;
pub mod watched_file;

/// The version every binary reports and sends in `User-Agent`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
