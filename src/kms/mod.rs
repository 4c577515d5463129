//! KMS-side services (sans-IO). For now: the store of key material pushed
//! to this process by a QKD node (ETSI 004 push mode, KMS side).

mod received;

pub use received::{Received, ReceivedError, ReceivedKeys};
