//! The simulated link's outage switch (`kp_simulated_link_set_down`):
//! injects or ends an outage that both nodes of a pair see, to exercise
//! link loss without a real device.

use super::{enter, kp_engine};
use crate::{errors::*, guard};

/// Injects (`down` != 0) or ends an outage of the engine's simulated link
/// (both nodes of a pair see it). `KP_ERR_INVALID_ARGUMENT` for other
/// devices.
///
/// # Safety
/// `e` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_simulated_link_set_down(e: *mut kp_engine, down: i32) -> kp_result {
    guard(|| {
        // SAFETY: the caller's contract.
        let engine = unsafe { enter(e) }?;
        let control = engine.engine().link_control().ok_or_else(|| {
            fail(
                KP_ERR_INVALID_ARGUMENT,
                "the engine's device is not a simulated link".into(),
            )
        })?;
        control.set_down(down != 0);
        Ok(KP_OK)
    })
}
