//! Where the service finds master keys and reserves AES-GCM encryptions:
//! the [`KeySource`] trait, implemented over the store by `crate::keys`
//! (and in memory by the tests and the fuzz entry points).

use std::sync::Arc;

use super::NcpError;
use crate::store::MasterKey;

/// Where the service finds master keys (the server implements it over the
/// store, with a cache).
pub trait KeySource: Send + Sync {
    /// The key tagged `tag`, `None` when there is none. A failure should be
    /// [`NcpError::Internal`], or [`NcpError::Unavailable`] when the store
    /// cannot be reached now; its detail is not sent to the client.
    fn key(&self, tag: &str) -> Result<Option<Arc<MasterKey>>, NcpError>;

    /// Durably reserves up to `n` more AES-GCM encryptions of version
    /// `version` of `tag`, never taking its count past `limit`: how many
    /// were granted (0 at the limit) and the count after ([`budget`]).
    ///
    /// [`budget`]: super::budget
    fn reserve_encryptions(
        &self,
        tag: &str,
        version: u32,
        n: u64,
        limit: u64,
    ) -> Result<(u64, u64), NcpError>;
}
