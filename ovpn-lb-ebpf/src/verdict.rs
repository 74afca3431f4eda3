//! What each outcome tells the hook: drops end the packet, passes and
//! restores hand it on (see each hook's `pass_code`).

use ovpn_lb_common::{Reason, reason::Outcome};

use crate::hook::Hook;

/// The return code for a packet that was not redirected.
#[inline(always)]
pub fn of<C: Hook>(ctx: &C, reason: Reason) -> i32 {
    match reason.outcome() {
        Outcome::Dropped | Outcome::Local => ctx.drop_code(),
        Outcome::Passed | Outcome::Forwarded => ctx.pass_code(),
    }
}
