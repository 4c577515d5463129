//! `[key_agreement]` and `[login]`: the two services behind the
//! `key-agreement` protocol, shared by every listener that serves it.

use crate::kms::agreement::{AgreementConfig, Scheme};
use crate::kms::login::LoginConfig;

tunables! {
    /// `[key_agreement]`: the key-agreement service, shared by every listener
    /// serving `key-agreement`.
    pub struct KeyAgreementSettings => AgreementConfig {
        /// The server's identifier (`id_S`, sent Base64-encoded).
        identifier: String = utf8(identifier),
        /// Enabled schemes, most preferred first.
        schemes: Vec<Scheme> = same(schemes),
        /// Seconds a `client_reference_id` waits for its login.
        reference_ttl_s: u64 = secs(reference_ttl),
        /// Most agreements awaiting their login at once (more: the oldest is
        /// dropped).
        max_pending: usize = same(max_pending),
        /// Key-agreement and login requests on the pool at once (more: 503).
        max_queued: usize = local(64),
    }
}

impl KeyAgreementSettings {
    /// The service settings.
    pub fn service_config(&self) -> AgreementConfig {
        let mut config = AgreementConfig::default();
        self.apply(&mut config);
        config
    }
}

tunables! {
    /// `[login]`: the login service.
    pub struct LoginSettings => LoginConfig {
        /// Accept a login without `client_reference_id` (plain password).
        allow_plain_password: bool = same(allow_plain_password),
        /// Seconds an access token lives.
        access_token_ttl_s: u64 = secs(access_ttl),
        /// Seconds a session (its refresh token) lives.
        refresh_token_ttl_s: u64 = secs(refresh_ttl),
        /// Milliseconds a first failed login is held; doubles per failure.
        failure_delay_ms: u64 = millis(failure_delay),
        /// Longest hold, milliseconds.
        max_failure_delay_ms: u64 = millis(max_failure_delay),
    }
}

impl LoginSettings {
    /// The service settings.
    pub fn service_config(&self) -> LoginConfig {
        let mut config = LoginConfig::default();
        self.apply(&mut config);
        config
    }
}
