//! Which URL RegisterManagedInstance goes to: the region's endpoint (commercial, China, ISO,
//! FIPS, dual-stack) or an explicit one (a VPC endpoint in a private network).

use std::fmt;

/// An HTTPS endpoint, split the way the client and the NO_PROXY rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://host[:port]` plus the path (`/` when none was given).
    pub url: String,
    /// Host without brackets, lower case.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Regions SSM has a FIPS endpoint in (GovCloud regions are FIPS already).
const FIPS_REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "ca-central-1",
];

fn env_true(v: Option<String>) -> bool {
    v.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Resolves the endpoint. `var` reads an environment variable (`AWS_USE_FIPS_ENDPOINT`,
/// `AWS_USE_DUALSTACK_ENDPOINT`). Returns the endpoint and warnings worth logging.
pub fn resolve(
    region: &str,
    explicit: Option<&str>,
    var: impl Fn(&str) -> Option<String>,
) -> Result<(Endpoint, Vec<String>), String> {
    if let Some(e) = explicit {
        return parse_url(e).map(|ep| (ep, Vec::new()));
    }
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "region {region:?} is not an AWS region name such as us-west-2"
        ));
    }
    let fips = env_true(var("AWS_USE_FIPS_ENDPOINT"));
    let dual = env_true(var("AWS_USE_DUALSTACK_ENDPOINT"));
    let mut warnings = Vec::new();
    let (domain, dual_domain) = if region.starts_with("cn-") {
        ("amazonaws.com.cn", Some("api.amazonwebservices.com.cn"))
    } else if region.starts_with("us-isob-") {
        ("sc2s.sgov.gov", None)
    } else if region.starts_with("us-iso-") {
        ("c2s.ic.gov", None)
    } else {
        ("amazonaws.com", Some("api.aws"))
    };
    let gov = region.starts_with("us-gov-");
    let mut service = "ssm";
    if fips && !gov {
        if FIPS_REGIONS.contains(&region) {
            service = "ssm-fips";
        } else {
            warnings.push(format!(
                "AWS_USE_FIPS_ENDPOINT=true but SSM has no FIPS endpoint in {region}; using the \
                 regular endpoint (set --agent.endpoint to choose one explicitly)"
            ));
        }
    }
    let host = match (dual, dual_domain) {
        (true, Some(d)) => format!("{service}.{region}.{d}"),
        (true, None) => {
            warnings.push(format!(
                "AWS_USE_DUALSTACK_ENDPOINT=true but {region} has no dual-stack endpoint; using \
                 the regular endpoint"
            ));
            format!("{service}.{region}.{domain}")
        }
        (false, _) => format!("{service}.{region}.{domain}"),
    };
    Ok((
        Endpoint {
            url: format!("https://{host}/"),
            host,
            port: 443,
        },
        warnings,
    ))
}

/// Parses an explicit endpoint: `https://` is prepended when there is no scheme; any other
/// scheme is refused (the activation code must not cross the network in clear text).
pub fn parse_url(s: &str) -> Result<Endpoint, String> {
    let s = s.trim();
    let rest = match s.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "endpoint {s:?} uses {scheme}://; only https:// is allowed (the activation code \
                 is a credential)"
            ))
        }
        None => s,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("endpoint {s:?} has no valid host"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("endpoint {s:?}: unclosed [ in the host"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("endpoint {s:?} has no valid host")),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        None => 443,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("endpoint {s:?}: {p:?} is not a port number"))?,
    };
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '?' || c == '#')
    {
        return Err(format!("endpoint {s:?} has no valid host"));
    }
    let host = host.to_ascii_lowercase();
    let bracketed = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let url = if port == 443 {
        format!("https://{bracketed}{path}")
    } else {
        format!("https://{bracketed}:{port}{path}")
    };
    Ok(Endpoint { url, host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(region: &str, vars: &[(&str, &str)]) -> (String, usize) {
        let (e, w) = resolve(region, None, |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        assert_eq!(e.url, format!("https://{}/", e.host));
        assert_eq!(e.port, 443);
        (e.host, w.len())
    }

    #[test]
    fn partitions() {
        assert_eq!(host("us-west-2", &[]).0, "ssm.us-west-2.amazonaws.com");
        assert_eq!(
            host("eu-central-1", &[]).0,
            "ssm.eu-central-1.amazonaws.com"
        );
        assert_eq!(host("cn-north-1", &[]).0, "ssm.cn-north-1.amazonaws.com.cn");
        assert_eq!(host("us-iso-east-1", &[]).0, "ssm.us-iso-east-1.c2s.ic.gov");
        assert_eq!(
            host("us-isob-east-1", &[]).0,
            "ssm.us-isob-east-1.sc2s.sgov.gov"
        );
        assert_eq!(
            host("us-gov-west-1", &[]).0,
            "ssm.us-gov-west-1.amazonaws.com"
        );
        assert!(resolve("", None, |_| None).is_err());
        assert!(resolve("us-west-2.evil.com/x", None, |_| None).is_err());
    }

    #[test]
    fn fips_and_dual_stack() {
        let fips = [("AWS_USE_FIPS_ENDPOINT", "true")];
        let dual = [("AWS_USE_DUALSTACK_ENDPOINT", "TRUE")];
        let both = [
            ("AWS_USE_FIPS_ENDPOINT", "true"),
            ("AWS_USE_DUALSTACK_ENDPOINT", "true"),
        ];
        assert_eq!(
            host("us-east-1", &fips),
            ("ssm-fips.us-east-1.amazonaws.com".into(), 0)
        );
        assert_eq!(
            host("ca-central-1", &fips).0,
            "ssm-fips.ca-central-1.amazonaws.com"
        );
        assert_eq!(
            host("us-gov-east-1", &fips),
            ("ssm.us-gov-east-1.amazonaws.com".into(), 0)
        );
        assert_eq!(
            host("eu-west-1", &fips),
            ("ssm.eu-west-1.amazonaws.com".into(), 1)
        );
        assert_eq!(host("eu-west-1", &dual).0, "ssm.eu-west-1.api.aws");
        assert_eq!(
            host("cn-north-1", &dual).0,
            "ssm.cn-north-1.api.amazonwebservices.com.cn"
        );
        assert_eq!(host("us-west-2", &both).0, "ssm-fips.us-west-2.api.aws");
        assert_eq!(
            host("us-iso-east-1", &dual),
            ("ssm.us-iso-east-1.c2s.ic.gov".into(), 1)
        );
        assert_eq!(
            host("us-west-2", &[("AWS_USE_FIPS_ENDPOINT", "false")]).0,
            "ssm.us-west-2.amazonaws.com"
        );
    }

    #[test]
    fn explicit_endpoints_win() {
        let (e, _) = resolve(
            "us-west-2",
            Some("vpce-1.ssm.us-west-2.vpce.amazonaws.com"),
            |_| Some("true".into()),
        )
        .unwrap();
        assert_eq!(e.url, "https://vpce-1.ssm.us-west-2.vpce.amazonaws.com/");
        let e = parse_url("https://127.0.0.1:8443").unwrap();
        assert_eq!(
            (e.url.as_str(), e.host.as_str(), e.port),
            ("https://127.0.0.1:8443/", "127.0.0.1", 8443)
        );
        let e = parse_url("HTTPS://[::1]:9000/base").unwrap();
        assert_eq!(
            (e.url.as_str(), e.host.as_str(), e.port),
            ("https://[::1]:9000/base", "::1", 9000)
        );
        let e = parse_url("Example.COM:443").unwrap();
        assert_eq!(e.url, "https://example.com/");
        for bad in [
            "http://x",
            "https://",
            "https://:80",
            "https://h:0",
            "https://h:x",
            "https://u@h",
            "[::1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
