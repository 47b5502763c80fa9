//! EKS Connector: registers a Kubernetes cluster with AWS Systems Manager, launches and guards the
//! SSM agent, and proxies the EKS console's Kubernetes API requests with impersonation.
//!
//! Each binary's path through the modules (`bin/` holds thin mains: flags through [`cli`]):
//! - `eks-connector-init`: [`cli`] → [`init`] (reads the Secret through [`state::StateStore`] and
//!   the Vault through [`state`], decides with [`init::plan::decide`]) → [`ssm`] (register, via
//!   [`ssm::egress`]) → [`state`] (Vault files, then the Secret through the store) → [`kube`].
//! - `eks-connector-agent` (the launcher): [`cli`] → [`launcher`] (checks the Vault, PID 1 in
//!   [`launcher::pid1`] with [`signals`]) and [`keysync`] (Vault → [`state::StateStore`] →
//!   [`kube`]), readiness on [`health`].
//! - `eks-connector-proxy` (the original's `server`): [`cli`] → [`proxy`] (listener, [`http`]
//!   framing, identity policy, upstream pool over [`tls`]), readiness on [`health`]; its
//!   allocator is [`alloc::ThreadCache`].
//! - `eks-connector`: the image's multi-call entry; runs one of the three by name or first word.
//!
//! One module per domain: [`init`], [`launcher`], [`keysync`], [`proxy`], [`ssm`] (the one AWS
//! call), [`state`] (Vault files and the state Secret, byte for byte, and their one store),
//! [`kube`] (Kubernetes REST client); and the plumbing they share: [`tls`], [`cli`], [`backoff`],
//! [`signals`], [`health`], [`metrics`], [`http`], [`watched_file`], [`random`], [`utc`],
//! [`alloc`].

pub mod alloc;
pub mod backoff;
pub mod cli;
pub mod health;
pub mod http;
pub mod init;
pub mod keysync;
pub mod kube;
pub mod launcher;
pub mod metrics;
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
