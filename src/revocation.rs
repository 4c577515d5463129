//! Keeps the process's set of revoked client certificates in step with
//! keypipe's CA in the store: `keypipe ca revoke` (any process on the same
//! store) reaches every TLS listener within a second.

use std::sync::Arc;
use std::time::Duration;

use crate::store::CaStore;
use crate::tls::Revoked;

/// How often the store's change counter is read.
const EVERY: Duration = Duration::from_secs(1);

/// Loads the revoked serials now, then watches the store on a thread of
/// its own (it ends with the process).
pub fn watch(store: Arc<dyn CaStore>, revoked: Arc<Revoked>) -> std::io::Result<()> {
    let mut seen = store.ca_changes().ok();
    load(&*store, &revoked);
    std::thread::Builder::new()
        .name("revocation-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EVERY);
                match store.ca_changes() {
                    Ok(now) if Some(now) != seen => {
                        seen = Some(now);
                        load(&*store, &revoked);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("revocations: cannot read the store: {e}"),
                }
            }
        })?;
    Ok(())
}

fn load(store: &dyn CaStore, revoked: &Revoked) {
    match store.revoked_serials() {
        Ok(serials) => {
            tracing::debug!(revoked = serials.len(), "revoked certificates loaded");
            revoked.replace(serials);
        }
        Err(e) => tracing::warn!("revocations: cannot read the store: {e}"),
    }
}
