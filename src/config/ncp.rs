//! `[ncp]`: the NCP KMS API's settings, shared by every listener that
//! serves `ncp-kms`.

tunables! {
    /// `[ncp]`: the NCP KMS API, shared by every listener that serves it.
    pub struct NcpSettings {
        /// Signed requests remembered (each is accepted once) per 5 minutes:
        /// this bounds the sustained rate of signed requests (capacity / 300
        /// per second); beyond, 503 until entries age out. About 30 bytes each.
        replay_cache_entries: usize = local(crate::kms::replay::DEFAULT_CAPACITY),
    }
}
