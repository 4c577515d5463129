//! [`Config::from_toml`]: parses the file, then checks what the types
//! alone cannot (ranges, sections that go together, plaintext off
//! loopback); each error names its key.

use super::{Config, Protocol};

impl Config {
    /// Parses and checks a configuration file's text.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let mut config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        for node in &mut config.nodes {
            // The engine is the node's: its name is the node's.
            if let Some(engine) = &mut node.engine {
                engine.name = node.name.clone();
            }
        }
        if config.nodes.is_empty() {
            return Err("no [[node]] configured".into());
        }
        for node in &config.nodes {
            if node
                .keytalk
                .as_ref()
                .is_some_and(|k| k.listen.all().is_empty())
            {
                return Err(format!(
                    "node {}: [node.keytalk] listen is empty",
                    node.name
                ));
            }
            if node.serve.contains(&Protocol::KeyTalk) != node.keytalk.is_some() {
                return Err(format!(
                    "node {}: serve = [\"keytalk\"] and [node.keytalk] go together",
                    node.name
                ));
            }
            if node.serve.contains(&Protocol::Etsi014) != node.etsi014.is_some() {
                return Err(format!(
                    "node {}: serve = [\"etsi014\"] and [node.etsi014] go together",
                    node.name
                ));
            }
            if let Some(listener) = &node.etsi014 {
                let peer = node.etsi014_peer().ok_or_else(|| {
                    format!(
                        "node {}: etsi014 needs [node.engine.link] with peer_name (the peer \
                         node serves the remote SAEs)",
                        node.name
                    )
                })?;
                config.etsi014.service_config(&node.name, peer, listener)?;
            }
        }
        if config.serves(Protocol::KeyTalk) {
            config.keytalk.validate()?;
        }
        match &config.donau {
            Some(donau) => donau.validate(text)?,
            None if config.serves(Protocol::Donau) => {
                return Err("serve = [\"donau\"] needs a [donau] section".into());
            }
            None => {}
        }
        let ka = &config.key_agreement;
        if ka.identifier.is_empty() || ka.identifier.len() > 256 {
            return Err("key_agreement.identifier: must be 1 to 256 bytes".into());
        }
        if ka.schemes.is_empty() {
            return Err("key_agreement.schemes: enable at least one scheme".into());
        }
        let within = |name: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} = {v}: must be {lo} to {hi}"))
            }
        };
        within(
            "key_agreement.reference_ttl_s",
            ka.reference_ttl_s,
            1,
            86_400,
        )?;
        within(
            "key_agreement.max_pending",
            ka.max_pending as u64,
            1,
            10_000_000,
        )?;
        within("key_agreement.max_queued", ka.max_queued as u64, 1, 100_000)?;
        within(
            "ncp.replay_cache_entries",
            config.ncp.replay_cache_entries as u64,
            1000,
            1_000_000_000,
        )?;
        let lg = &config.login;
        within(
            "login.access_token_ttl_s",
            lg.access_token_ttl_s,
            1,
            366 * 86_400,
        )?;
        within(
            "login.refresh_token_ttl_s",
            lg.refresh_token_ttl_s,
            1,
            366 * 86_400,
        )?;
        within("login.failure_delay_ms", lg.failure_delay_ms, 1, 3_600_000)?;
        within(
            "login.max_failure_delay_ms",
            lg.max_failure_delay_ms,
            lg.failure_delay_ms,
            3_600_000,
        )?;
        for node in &config.nodes {
            if node.name.is_empty()
                || !node
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(format!(
                    "node name {:?}: use letters, digits, '-', '_' or '.'",
                    node.name
                ));
            }
            if let Some(engine) = &node.engine {
                engine
                    .validate()
                    .map_err(|e| format!("node {}: {e}", node.name))?;
                if engine.link.as_ref().is_some_and(|l| l.listen.is_some()) {
                    return Err(format!(
                        "node {}: engine.link.listen is for the C ABI; the server receives link sync on node.listen",
                        node.name
                    ));
                }
            }
            if node.tls.is_none() {
                crate::tls::allow_plaintext(
                    "listen",
                    node.listen,
                    node.insecure_plaintext,
                    "[node.tls]",
                    "insecure_plaintext",
                )
                .map_err(|e| format!("node {}: {e}", node.name))?;
            }
            for kms in &node.kms {
                let bad = |what: String| format!("node {}: kms {:?}: {what}", node.name, kms.name);
                if kms.name.is_empty() {
                    return Err(bad("name is empty".into()));
                }
                if kms.uris.is_empty() {
                    return Err(bad("uris: list at least one base URI".into()));
                }
                if !(1..=100_000).contains(&kms.max_streams) {
                    return Err(bad(format!(
                        "max_streams = {}: must be 1 to 100000",
                        kms.max_streams
                    )));
                }
                for uri in &kms.uris {
                    let origin = crate::http::Origin::parse(uri).map_err(&bad)?;
                    if !origin.tls && !origin.is_loopback() && !kms.insecure_plaintext {
                        return Err(bad(format!(
                            "uri {uri:?} is plain http to another host: pushed key would cross \
                             the network in clear. Use https://, or set insecure_plaintext = true \
                             on this kms"
                        )));
                    }
                }
            }
            if node.serve.contains(&Protocol::Etsi004Qkd) && node.engine.is_none() {
                return Err(format!(
                    "node {}: serve = [\"etsi004-qkd\"] needs a [node.engine] section",
                    node.name
                ));
            }
        }
        Ok(config)
    }
}
