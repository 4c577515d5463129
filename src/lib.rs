//! keypipe: moves secret key material from a QKD device to the software that
//! uses it.
//!
//! Layers, bottom up (a layer only calls the ones below it):
//! - [`key`]: the zeroizing key arena, its handles and the lock-free ring;
//! - [`device`]: the polled QKD device trait, its drivers and the poller;
//! - [`qkd`]: one node of a QKD link with ETSI GS QKD 004 stream semantics;
//! - [`ffi`]: the C ABI (`include/keypipe.h`).

#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod device;
pub mod ffi;
pub mod http;
pub mod key;
pub mod kms;
pub mod node;
pub mod qkd;
pub mod rangeset;
pub mod store;
