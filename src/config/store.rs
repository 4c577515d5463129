//! `[store]`: which database the durable store uses (the embedded SQLite
//! file in `data_dir`, or a PostgreSQL database shared by a site).

use serde::Deserialize;

/// `[store]`: the database of the durable store. `Debug` never shows the
/// URL (it may hold a password).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// A PostgreSQL database shared by several keypipe processes of one
    /// site (`postgres://user@host/db`, or `host=… user=… dbname=…`);
    /// absent: the embedded SQLite file in `data_dir`.
    #[serde(default)]
    pub url: Option<String>,
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSettings")
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}
