//! Egress proxy selection for the SSM call: `HTTPS_PROXY`/`https_proxy` (upper case wins) and
//! `NO_PROXY`/`no_proxy` (comma list: `*`, exact hosts, domain suffixes with or without a leading
//! `.` or `*.`, IPs, CIDRs, each with an optional `:port`). Loopback is never proxied.

use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    Any,
    Ip(IpAddr),
    Cidr(IpAddr, u8),
    /// Matches the domain itself and every name under it.
    Domain(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    host: HostRule,
    port: Option<u16>,
}

/// The HTTPS_PROXY/NO_PROXY settings from the environment: how the SSM call leaves the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressProxy {
    https_proxy: Option<String>,
    no_proxy: Vec<Rule>,
}

fn first_non_empty(var: &impl Fn(&str) -> Option<String>, names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| var(n))
        .map(|v| v.trim().to_string())
        .find(|v| !v.is_empty())
}

impl EgressProxy {
    pub fn from_env() -> EgressProxy {
        EgressProxy::from_vars(|k| std::env::var(k).ok())
    }

    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> EgressProxy {
        let https_proxy = first_non_empty(&var, &["HTTPS_PROXY", "https_proxy"]).map(|p| {
            if p.contains("://") {
                p
            } else {
                format!("http://{p}")
            }
        });
        let no_proxy = first_non_empty(&var, &["NO_PROXY", "no_proxy"])
            .map(|v| v.split(',').filter_map(parse_rule).collect())
            .unwrap_or_default();
        EgressProxy {
            https_proxy,
            no_proxy,
        }
    }

    /// The proxy URL to reach `host:port` through, or `None` for a direct connection.
    pub fn proxy_for(&self, host: &str, port: u16) -> Option<&str> {
        let proxy = self.https_proxy.as_deref()?;
        let host = normalize(host);
        let ip = host.parse::<IpAddr>().ok();
        if is_loopback(&host, ip) {
            return None;
        }
        let excluded = self.no_proxy.iter().any(|r| {
            r.port.is_none_or(|p| p == port)
                && match &r.host {
                    HostRule::Any => true,
                    HostRule::Ip(a) => ip == Some(*a),
                    HostRule::Cidr(net, bits) => ip.is_some_and(|i| in_cidr(i, *net, *bits)),
                    HostRule::Domain(d) => {
                        host == *d
                            || (host.len() > d.len()
                                && host.ends_with(d.as_str())
                                && host.as_bytes()[host.len() - d.len() - 1] == b'.')
                    }
                }
        });
        if excluded {
            None
        } else {
            Some(proxy)
        }
    }
}

/// A proxy URL with any `user:password@` replaced, for logs and messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

fn normalize(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

fn is_loopback(host: &str, ip: Option<IpAddr>) -> bool {
    match ip {
        Some(IpAddr::V4(v4)) => v4.is_loopback(),
        Some(IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        None => host == "localhost" || host.ends_with(".localhost"),
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(bits))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(bits))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// One NO_PROXY entry; entries that cannot be understood are skipped.
fn parse_rule(entry: &str) -> Option<Rule> {
    let e = entry.trim().to_ascii_lowercase();
    if e.is_empty() {
        return None;
    }
    if e == "*" {
        return Some(Rule {
            host: HostRule::Any,
            port: None,
        });
    }
    if let Some((addr, bits)) = e.split_once('/') {
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = addr.parse().ok()?;
        let bits: u8 = bits.parse().ok()?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if bits > max {
            return None;
        }
        return Some(Rule {
            host: HostRule::Cidr(ip, bits),
            port: None,
        });
    }
    // A bare IPv6 address has several colons and no port.
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(Rule {
            host: HostRule::Ip(ip),
            port: None,
        });
    }
    let (host, port) = if let Some(v6) = e.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse::<u16>().ok()?),
            None => None,
        };
        (h.to_string(), port)
    } else {
        match e.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.parse::<u16>().ok()?)),
            None => (e.clone(), None),
        }
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(Rule {
            host: HostRule::Ip(ip),
            port,
        });
    }
    let domain = host
        .trim_start_matches("*.")
        .trim_start_matches('.')
        .trim_end_matches('.')
        .to_string();
    if domain.is_empty() || domain == "*" {
        return None;
    }
    Some(Rule {
        host: HostRule::Domain(domain),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(proxy: &str, no_proxy: &str) -> EgressProxy {
        let (p, n) = (proxy.to_string(), no_proxy.to_string());
        EgressProxy::from_vars(move |k| match k {
            "HTTPS_PROXY" => Some(p.clone()),
            "NO_PROXY" => Some(n.clone()),
            _ => None,
        })
    }

    #[test]
    fn upper_case_wins_and_scheme_is_added() {
        let s = EgressProxy::from_vars(|k| match k {
            "HTTPS_PROXY" => Some("proxy.corp:3128".into()),
            "https_proxy" => Some("http://other:1".into()),
            _ => None,
        });
        assert_eq!(
            s.proxy_for("ssm.us-west-2.amazonaws.com", 443),
            Some("http://proxy.corp:3128")
        );
        let s = EgressProxy::from_vars(|k| match k {
            "HTTPS_PROXY" => Some("".into()),
            "https_proxy" => Some("http://lower:1".into()),
            "no_proxy" => Some("amazonaws.com".into()),
            _ => None,
        });
        assert_eq!(s.proxy_for("ssm.us-west-2.amazonaws.com", 443), None);
        assert_eq!(s.proxy_for("example.com", 443), Some("http://lower:1"));
        assert_eq!(
            EgressProxy::from_vars(|_| None).proxy_for("example.com", 443),
            None
        );
    }

    #[test]
    fn no_proxy_rules() {
        let s = settings(
            "http://p:3128",
            " internal.corp, .vpce.amazonaws.com ,*.example.org,10.0.0.0/8,192.168.1.7,fd00::/8,[2001:db8::1]:8443,exact.host:9443,2001:db8::2",
        );
        let direct = [
            ("internal.corp", 443),
            ("a.b.internal.corp", 443),
            ("vpce-1.ssm.vpce.amazonaws.com", 443),
            ("vpce.amazonaws.com", 443),
            ("x.example.org", 443),
            ("example.org", 443),
            ("10.1.2.3", 443),
            ("192.168.1.7", 443),
            ("[fd00::5]", 443),
            ("2001:db8::1", 8443),
            ("exact.host", 9443),
            ("2001:db8::2", 443),
            ("INTERNAL.CORP.", 443),
            // Loopback is never proxied.
            ("127.0.0.1", 443),
            ("127.9.9.9", 443),
            ("::1", 443),
            ("localhost", 443),
            ("a.localhost", 443),
        ];
        for (h, p) in direct {
            assert_eq!(s.proxy_for(h, p), None, "{h}:{p}");
        }
        let proxied = [
            ("ssm.us-west-2.amazonaws.com", 443),
            ("notinternal.corp", 443),
            ("11.0.0.1", 443),
            ("192.168.1.8", 443),
            ("2001:db8::1", 443),
            ("exact.host", 443),
            ("fe00::1", 443),
        ];
        for (h, p) in proxied {
            assert_eq!(s.proxy_for(h, p), Some("http://p:3128"), "{h}:{p}");
        }
        assert_eq!(settings("http://p:1", "*").proxy_for("anything", 443), None);
        assert_eq!(
            settings("http://p:1", "garbage/xx,,").proxy_for("a", 443),
            Some("http://p:1")
        );
    }

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(redact("http://user:pw@proxy:3128"), "http://***@proxy:3128");
        assert_eq!(redact("http://proxy:3128"), "http://proxy:3128");
    }
}
