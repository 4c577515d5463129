//! `[keytalk]` (the enrolment policy and its services) and
//! `[node.keytalk]` (a node's KeyTalk listeners).

use std::net::SocketAddr;

use serde::Deserialize;

use crate::kms::keytalk::config::{KeyTalkConfig, Service, ServiceConfig};
use crate::tls::ServerTlsFiles;

tunables! {
    /// `[keytalk]`: policy and services of KeyTalk enrolment.
    pub struct KeyTalkSettings => KeyTalkConfig {
        /// The user store's domain of KeyTalk users.
        domain: String = same(domain),
        /// Largest clock difference accepted at `handshake`, seconds.
        max_clock_skew_s: u64 = secs(max_clock_skew),
        /// A session without a call this long ends, seconds.
        session_idle_s: u64 = secs(session_idle),
        /// A session ends this long after its `hello`, seconds.
        session_max_s: u64 = secs(session_max_age),
        /// Sessions open at most.
        max_sessions: usize = same(max_sessions),
        /// The first failed authentication's delay, seconds (doubling).
        failure_delay_s: u64 = secs(failure_delay),
        /// Failures in a row before `LOCKED`.
        max_failures: u32 = same(max_failures),
        /// How long `LOCKED` lasts, seconds.
        lock_s: u64 = secs(lock_time),
        /// An out-of-band download waits this long, seconds.
        download_ttl_s: u64 = secs(download_ttl),
        /// Shortest new password (change-password).
        min_password_length: usize = same(min_password_length),
        /// RCDP requests on the pool at once (more: 503).
        max_queued: usize = local(64),
        /// The services.
        #[serde(rename = "service")]
        services: Vec<ServiceConfig> = local(Vec::new()),
    }
}

impl KeyTalkSettings {
    /// Checks the settings: the services, ready to serve.
    pub fn validate(&self) -> Result<Vec<Service>, String> {
        let within = |name: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("keytalk.{name} = {v}: must be {lo} to {hi}"))
            }
        };
        within("max_clock_skew_s", self.max_clock_skew_s, 1, 86_400)?;
        within("session_idle_s", self.session_idle_s, 1, 86_400)?;
        within("session_max_s", self.session_max_s, 1, 7 * 86_400)?;
        within("max_sessions", self.max_sessions as u64, 1, 10_000_000)?;
        within("failure_delay_s", self.failure_delay_s, 0, 3600)?;
        within("max_failures", u64::from(self.max_failures), 1, 1000)?;
        within("lock_s", self.lock_s, 1, 30 * 86_400)?;
        within("download_ttl_s", self.download_ttl_s, 1, 86_400)?;
        within(
            "min_password_length",
            self.min_password_length as u64,
            1,
            1024,
        )?;
        within("max_queued", self.max_queued as u64, 1, 100_000)?;
        if self.domain.is_empty() || self.domain.len() > 256 {
            return Err("keytalk.domain: 1 to 256 bytes".into());
        }
        let mut services: Vec<Service> = Vec::new();
        for s in &self.services {
            if services.iter().any(|o| o.name() == s.name) {
                return Err(format!("keytalk service {:?} is configured twice", s.name));
            }
            services.push(Service::new(s.clone())?);
        }
        Ok(services)
    }

    /// The service's configuration, its downloads at `download_url`
    /// (`http://$(KEYTALK_SVR_HOST):PORT/cert/?`).
    pub fn service_config(&self, download_url: String) -> Result<KeyTalkConfig, String> {
        let mut config = KeyTalkConfig {
            services: self.validate()?,
            download_url,
            ..KeyTalkConfig::default()
        };
        self.apply(&mut config);
        Ok(config)
    }
}

/// One address or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Addresses {
    /// One.
    One(SocketAddr),
    /// Several.
    Many(Vec<SocketAddr>),
}

impl Addresses {
    /// Every address.
    pub fn all(&self) -> Vec<SocketAddr> {
        match self {
            Addresses::One(a) => vec![*a],
            Addresses::Many(v) => v.clone(),
        }
    }
}

/// `[node.keytalk]`: where a node serves KeyTalk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyTalkListener {
    /// RCDP, the public API and the CA download, over TLS: one address
    /// or several (real clients use 443; the 2019 Apple apps hard-code
    /// 4443; iOS fetches the CA from 8443).
    pub listen: Addresses,
    /// The CA download and out-of-band downloads, plain HTTP by design.
    pub ca_listen: SocketAddr,
    /// Host names (and IP addresses) clients use to reach `listen`, for
    /// the certificate keypipe issues itself (`localhost`, 127.0.0.1 and
    /// the listen addresses are always in it).
    #[serde(default)]
    pub names: Vec<String>,
    /// The TLS certificate and key of `listen` (absent: issued by
    /// keypipe's Server CA, ECDSA P-384, and kept in
    /// `data_dir/keytalk/`).
    #[serde(default)]
    pub tls: Option<ServerTlsFiles>,
}
