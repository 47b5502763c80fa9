//! The API server's `Status` errors, decoded into something a caller can match on and a person
//! can act on.

use std::fmt;

#[derive(Debug)]
pub enum KubeError {
    /// 404: the object is not there.
    NotFound { message: String },
    /// 409: someone else changed the object (stale resourceVersion) or it already exists.
    Conflict {
        message: String,
        already_exists: bool,
    },
    /// 403: RBAC refused; the message is the server's and names verb, resource and user.
    Forbidden { message: String },
    /// 401: the token is wrong, expired or revoked.
    Unauthorized { message: String },
    /// Any other non-2xx answer.
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    /// No answer: connection refused, DNS, TLS, timeout.
    Transport { url: String, cause: String },
    /// An answer we could not understand.
    BadResponse { what: String, detail: String },
    /// Local configuration (environment, token or CA files) is missing or wrong.
    Config(String),
}

impl KubeError {
    /// Decodes an error answer; a body that is not a `Status` still gives a clear error.
    pub fn from_response(method: &str, path: &str, code: u16, body: &[u8]) -> KubeError {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Status {
            kind: String,
            reason: String,
            message: String,
        }
        let status: Status = serde_json::from_slice(body).unwrap_or_default();
        let message = if status.kind == "Status" && !status.message.is_empty() {
            status.message
        } else {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_string();
            format!("{method} {path}: HTTP {code}: {text}")
        };
        match code {
            404 => KubeError::NotFound { message },
            409 => KubeError::Conflict {
                message,
                already_exists: status.reason == "AlreadyExists",
            },
            403 => KubeError::Forbidden { message },
            401 => KubeError::Unauthorized { message },
            _ => KubeError::Api {
                code,
                reason: status.reason,
                message,
            },
        }
    }

    /// Worth another try: conflicts, throttling, server errors, no answer.
    pub fn is_transient(&self) -> bool {
        match self {
            KubeError::Transport { .. } | KubeError::Conflict { .. } => true,
            KubeError::Api { code, .. } => *code == 429 || *code >= 500,
            _ => false,
        }
    }
}

impl fmt::Display for KubeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KubeError::NotFound { message } => write!(f, "not found: {message}"),
            KubeError::Conflict { message, .. } => write!(f, "conflict: {message}"),
            KubeError::Forbidden { message } => write!(f, "forbidden: {message}"),
            KubeError::Unauthorized { message } => write!(
                f,
                "unauthorized: {message} (the service-account token is wrong, expired or revoked)"
            ),
            KubeError::Api {
                code,
                reason,
                message,
            } => {
                if reason.is_empty() {
                    write!(f, "API server answered {code}: {message}")
                } else {
                    write!(f, "API server answered {code} {reason}: {message}")
                }
            }
            KubeError::Transport { url, cause } => {
                write!(f, "cannot reach the Kubernetes API at {url}: {cause}")
            }
            KubeError::BadResponse { what, detail } => {
                write!(f, "unexpected answer to {what}: {detail}")
            }
            KubeError::Config(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for KubeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bodies_become_typed_errors() {
        let body = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"secrets \"x\" is forbidden: User \"u\" cannot update","reason":"Forbidden","code":403}"#;
        match KubeError::from_response("PUT", "/p", 403, body) {
            KubeError::Forbidden { message } => assert!(message.contains("cannot update")),
            e => panic!("{e:?}"),
        }
        let body = br#"{"kind":"Status","message":"exists","reason":"AlreadyExists","code":409}"#;
        assert!(matches!(
            KubeError::from_response("POST", "/p", 409, body),
            KubeError::Conflict {
                already_exists: true,
                ..
            }
        ));
        let e = KubeError::from_response("GET", "/p", 502, b"<html>bad gateway</html>");
        assert!(
            e.to_string().contains("502") && e.to_string().contains("bad gateway"),
            "{e}"
        );
        assert!(e.is_transient());
        assert!(!KubeError::from_response("GET", "/p", 400, b"").is_transient());
    }
}
