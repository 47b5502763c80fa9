//! A small, hand-written Kubernetes REST client: in-cluster configuration, Secrets, and the API
//! server's `Status` errors. Only what the connector uses.

mod error;
mod secret;

pub use error::KubeError;
pub use secret::{OnConflict, Secret};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::watched_file::WatchedFile;

/// Where pods find their service-account files.
pub const DEFAULT_SERVICEACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Connect and whole-call timeouts for every API call the client makes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body we read (a Secret is at most 1 MiB).
const MAX_BODY: u64 = 4 << 20;

/// The API server address: `host` may be a DNS name, an IPv4 or an IPv6 literal (with or
/// without brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// From `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`, as in every pod.
    pub fn from_env() -> Result<Endpoint, KubeError> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").unwrap_or_default();
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_default();
        Endpoint::from_parts(&host, &port)
    }

    pub fn from_parts(host: &str, port: &str) -> Result<Endpoint, KubeError> {
        if host.is_empty() || port.is_empty() {
            return Err(KubeError::Config(
                "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set (they are in \
                 every pod; outside a cluster set them to the API server's address)"
                    .into(),
            ));
        }
        let port: u16 = port.parse().map_err(|_| {
            KubeError::Config(format!(
                "KUBERNETES_SERVICE_PORT={port:?} is not a port number"
            ))
        })?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Endpoint { host, port })
    }

    /// `host:port` with IPv6 literals in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn base_url(&self) -> String {
        format!("https://{}", self.authority())
    }
}

/// The service-account files a pod sees: `token`, `ca.crt`, `namespace`.
#[derive(Debug, Clone)]
pub struct ServiceAccountDir(pub PathBuf);

impl ServiceAccountDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ServiceAccountDir(dir.into())
    }
    pub fn token(&self) -> PathBuf {
        self.0.join("token")
    }
    pub fn ca(&self) -> PathBuf {
        self.0.join("ca.crt")
    }
    /// The pod's namespace, if the file is there.
    pub fn namespace(&self) -> Option<String> {
        std::fs::read_to_string(self.0.join("namespace"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }
}

struct AgentCache {
    ca_generation: u64,
    agent: ureq::Agent,
}

/// A Kubernetes API client authenticated with a (rotating) service-account token and trusting
/// only the cluster CA.
pub struct Client {
    endpoint: Endpoint,
    token: WatchedFile,
    ca: WatchedFile,
    agent: Mutex<Option<AgentCache>>,
}

/// How often token and CA files are checked for changes.
const FILE_RECHECK: Duration = Duration::from_secs(1);

impl Client {
    pub fn new(endpoint: Endpoint, sa: &ServiceAccountDir) -> Client {
        Client {
            endpoint,
            token: WatchedFile::new(sa.token(), FILE_RECHECK, 64 << 10),
            ca: WatchedFile::new(sa.ca(), FILE_RECHECK, 1 << 20),
            agent: Mutex::new(None),
        }
    }

    /// From the pod's environment and service-account directory.
    pub fn in_cluster(sa_dir: &Path) -> Result<Client, KubeError> {
        Ok(Client::new(
            Endpoint::from_env()?,
            &ServiceAccountDir::new(sa_dir),
        ))
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn bearer(&self) -> Result<String, KubeError> {
        let (bytes, _) = self.token.get().map_err(|e| {
            KubeError::Config(format!(
                "cannot read the service-account token {}: {e}",
                self.token.path().display()
            ))
        })?;
        let token = std::str::from_utf8(&bytes)
            .map_err(|_| KubeError::Config("service-account token is not UTF-8".into()))?
            .trim();
        Ok(format!("Bearer {token}"))
    }

    fn agent(&self) -> Result<ureq::Agent, KubeError> {
        let (ca, generation) = self.ca.get().map_err(|e| {
            KubeError::Config(format!(
                "cannot read the cluster CA {}: {e}",
                self.ca.path().display()
            ))
        })?;
        let mut guard = self.agent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = guard.as_ref() {
            if c.ca_generation == generation {
                return Ok(c.agent.clone());
            }
        }
        let certs = crate::tls::parse_pem_certs(&ca).map_err(|detail| {
            KubeError::Config(format!("cluster CA {}: {detail}", self.ca.path().display()))
        })?;
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(crate::tls::to_ureq_roots(&certs))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            // In-cluster traffic never goes through an egress proxy meant for AWS.
            .proxy(None)
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(CALL_TIMEOUT))
            .user_agent(format!("eks-connector/{}", crate::VERSION))
            // Secrets are small: 16 KiB buffers instead of ureq's 128 KiB keep the launcher's
            // peak RSS under its 2 MiB budget.
            .input_buffer_size(16 * 1024)
            .output_buffer_size(16 * 1024)
            .build()
            .into();
        *guard = Some(AgentCache {
            ca_generation: generation,
            agent: agent.clone(),
        });
        Ok(agent)
    }

    /// One API call. Returns the status and body of any answer; only transport failures are
    /// errors here.
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), KubeError> {
        let url = format!("{}{}", self.endpoint.base_url(), path);
        let agent = self.agent()?;
        let auth = self.bearer()?;
        let transport = |e: ureq::Error| KubeError::Transport {
            url: url.clone(),
            cause: e.to_string(),
        };
        // One request path: the same headers for every verb, a JSON body for those that send one.
        fn head<B>(rb: ureq::RequestBuilder<B>, auth: &str) -> ureq::RequestBuilder<B> {
            rb.header("Authorization", auth)
                .header("Accept", "application/json")
        }
        let json = "application/json";
        let resp = match (method, body) {
            ("GET", _) => head(agent.get(&url), &auth).call(),
            ("DELETE", _) => head(agent.delete(&url), &auth).call(),
            ("POST", Some(b)) => head(agent.post(&url), &auth).content_type(json).send(b),
            ("PUT", Some(b)) => head(agent.put(&url), &auth).content_type(json).send(b),
            _ => {
                return Err(KubeError::Config(format!(
                    "internal: unsupported call {method} {path}"
                )))
            }
        }
        .map_err(transport)?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(transport)?;
        Ok((status, body))
    }

    /// A call whose 2xx body is returned and anything else becomes a typed error. `body` is JSON.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Vec<u8>, KubeError> {
        let (status, bytes) = self.call(method, path, body)?;
        if (200..300).contains(&status) {
            Ok(bytes)
        } else {
            Err(KubeError::from_response(method, path, status, &bytes))
        }
    }

    /// `GET /version`: the server's `gitVersion`, e.g. `v1.37.2`.
    pub fn server_version(&self) -> Result<String, KubeError> {
        #[derive(serde::Deserialize)]
        struct Version {
            #[serde(rename = "gitVersion")]
            git_version: String,
        }
        let body = self.request("GET", "/version", None)?;
        let v: Version = serde_json::from_slice(&body).map_err(|e| KubeError::BadResponse {
            what: "GET /version".into(),
            detail: e.to_string(),
        })?;
        Ok(v.git_version)
    }

    /// `GET /readyz` with our token: used by the health endpoints.
    pub fn ready(&self) -> Result<(), KubeError> {
        self.request("GET", "/readyz", None).map(|_| ())
    }
}

/// A client shared between threads.
pub type SharedClient = Arc<Client>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_bracket_ipv6() {
        let e = Endpoint::from_parts("fd00::1", "443").unwrap();
        assert_eq!(e.base_url(), "https://[fd00::1]:443");
        let e = Endpoint::from_parts("[fd00::1]", "6443").unwrap();
        assert_eq!(e.authority(), "[fd00::1]:6443");
        let e = Endpoint::from_parts("10.0.0.1", "443").unwrap();
        assert_eq!(e.base_url(), "https://10.0.0.1:443");
        assert!(Endpoint::from_parts("", "443").is_err());
        assert!(Endpoint::from_parts("h", "http").is_err());
    }
}
