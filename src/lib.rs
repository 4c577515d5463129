//! keypipe's server: the HTTP adapters of every protocol ([`api`]), the
//! composition of a node ([`node`]) and the configuration ([`config`]),
//! over the engine (`keypipe-core`), its network face (`keypipe-net`) and
//! the KMS services (`keypipe-kms`), re-exported here under their layer
//! names.
//!
//! Layers, bottom up (a layer only calls the ones below it): [`key`],
//! [`device`], [`qkd`], [`rangeset`] (engine) · [`http`], [`tls`],
//! [`link`], [`linked`], [`push`], [`push_mode`], [`kms_side`] (net) ·
//! [`store`], [`kms`] (KMS services) · [`api`] · [`node`] · [`config`] and
//! the `keypipe` binary. The C library (`keypipe-ffi`) stands on the
//! engine and net crates only.
//!
//! The server's own modules beside those: [`process`] (the process's
//! memory protection), [`revocation`] (revoked certificates from the
//! store's CA), [`listener_cert`] (certificates keypipe issues for its
//! listeners) and [`etsi014_supply`] (the engine as ETSI 014's key
//! supply).

pub mod api;
pub mod config;
pub mod etsi014_supply;
pub mod listener_cert;
pub mod node;
pub mod process;
pub mod revocation;

pub use keypipe_core::{device, key, qkd, rangeset};
pub use keypipe_kms as kms;
pub use keypipe_kms::store;
pub use keypipe_net::{http, kms_side, link, linked, push, push_mode, tls};
