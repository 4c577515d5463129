//! ETSI GS QKD 004 push mode, KMS side: the store of key pushed to this
//! process ([`store`]) and its HTTP route ([`route`]).

pub mod route;
pub mod store;

pub use route::{Pushers, key_material_route};
pub use store::{Received, ReceivedError, ReceivedKeys, TakeError, Want};
