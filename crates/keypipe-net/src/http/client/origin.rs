//! Where the client's requests go: an [`Origin`] parsed from an
//! `http[s]://host[:port][/base]` URL (strictly, so nothing in it can break
//! a request head), resolved off the event loop, and spelled canonically.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

/// Where requests go: `http[s]://host:port[/base]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// `https://`: the connection is TLS.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path prefix without a trailing `/` (may be empty).
    pub base_path: String,
    /// The address to connect to: set by [`Origin::parse`] for an IP
    /// literal, by [`Origin::resolve`] for a name.
    pub addr: Option<SocketAddr>,
}

/// Characters allowed in a URL path (RFC 3986 `pchar` and `/`): no space,
/// no control character, no `?` or `#`, so a path can never break the
/// request line it is written into.
fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "/-._~!$&'()*+,;=:@%".contains(c)
}

impl Origin {
    /// Parses an `http[s]://host[:port][/path]` URL. The host is an IPv4
    /// address, a bracketed IPv6 address or a DNS name (letters, digits,
    /// `-`, `.`); the port defaults to 80 (http) or 443 (https).
    pub fn parse(url: &str) -> Result<Origin, String> {
        let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            _ => {
                return Err(format!(
                    "{url:?}: only http:// and https:// URLs are supported"
                ));
            }
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if !path.chars().all(path_char) {
            return Err(format!(
                "{url:?}: the path may only hold URL path characters"
            ));
        }
        // `[v6]` or `[v6]:port`; `name` or `name:port`.
        let (host, port) = match authority.find(']') {
            Some(end) if authority.starts_with('[') => {
                (&authority[..=end], authority[end + 1..].strip_prefix(':'))
            }
            _ => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        if host.len() < authority.len() && port.is_none() {
            return Err(format!("{url:?}: bad host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
        };
        let (host, addr) = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => {
                let ip = v6
                    .parse::<std::net::Ipv6Addr>()
                    .map_err(|_| format!("{url:?}: bad IPv6 address"))?;
                (v6, Some(SocketAddr::from((ip, port))))
            }
            None => {
                let name_ok = !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
                if !name_ok {
                    return Err(format!("{url:?}: bad host"));
                }
                let ip = host.parse::<std::net::Ipv4Addr>().ok();
                (host, ip.map(|ip| SocketAddr::from((ip, port))))
            }
        };
        Ok(Origin {
            tls,
            host: host.to_owned(),
            port,
            base_path: path.trim_end_matches('/').to_owned(),
            addr,
        })
    }

    /// Resolves a host name (blocking: call it off the event loops).
    pub fn resolve(&mut self) -> io::Result<()> {
        if self.addr.is_none() {
            self.addr = (self.host.as_str(), self.port).to_socket_addrs()?.next();
        }
        self.addr
            .map(|_| ())
            .ok_or_else(|| io::Error::other(format!("{}: no address", self.host)))
    }

    /// The base URI in one spelling (scheme, lower-case host, port, base
    /// path without a trailing `/`): two URIs naming the same KMS compare
    /// equal whatever their case, default port or trailing slash.
    pub fn canonical(&self) -> String {
        format!("{}{}", self.url().to_ascii_lowercase(), self.base_path)
    }

    /// The URL of this origin (without its base path).
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.authority()
        )
    }

    /// True when the host is a loopback address or `localhost`.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.addr.is_some_and(|a| a.ip().is_loopback())
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let o = Origin::parse("http://127.0.0.1:7004/kms/").unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.base_path.as_str()),
            ("127.0.0.1", 7004, "/kms")
        );
        assert_eq!(Origin::parse("http://h").unwrap().port, 80);
        assert_eq!(
            Origin::parse("http://[::1]:9").unwrap().authority(),
            "[::1]:9"
        );
        let canon = |u: &str| Origin::parse(u).unwrap().canonical();
        assert_eq!(
            canon("https://KMS.example"),
            canon("https://kms.example:443/")
        );
        assert_eq!(canon("http://h:80/k/"), "http://h:80/k");
        assert_ne!(canon("http://h"), canon("https://h"));
        assert_ne!(canon("http://h/a"), canon("http://h/b"));
        assert_ne!(canon("http://h:81"), canon("http://h"));
        let secure = Origin::parse("https://kms.example:8443/base").unwrap();
        assert!(secure.tls && secure.port == 8443);
        assert_eq!(Origin::parse("https://h").unwrap().port, 443);
        assert!(Origin::parse("ftp://h").is_err());
        assert!(Origin::parse("http://h:x").is_err());
        assert!(Origin::parse("http://:80").is_err());
        for bad in [
            "http://h/a b",
            "http://h/x\r\nX-Evil: 1",
            "http://h/p?q",
            "http://h o:1",
            "http://h\r\n:1",
            "http://[zz]:1",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad:?}");
        }
        assert!(
            Origin::parse("http://kms.example-1.net:8080/base")
                .unwrap()
                .addr
                .is_none()
        );
        assert!(Origin::parse("http://10.0.0.1").unwrap().addr.is_some());
    }
}
