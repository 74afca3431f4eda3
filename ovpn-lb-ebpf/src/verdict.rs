//! What each outcome tells tc. Only drops and redirects end the tc chain; a
//! packet ovpn-lb passes or restores is handed on (`TC_ACT_UNSPEC`, tcx's
//! "next"), so programs attached after ours still see it, and at the end of the
//! chain the kernel takes it as usual.

use aya_ebpf::bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC};
use ovpn_lb_common::{Reason, reason::Outcome};

/// The tc return code for a packet that was not redirected.
#[inline(always)]
pub fn of(reason: Reason) -> i32 {
    match reason.outcome() {
        Outcome::Dropped => TC_ACT_SHOT,
        Outcome::Passed | Outcome::Forwarded => TC_ACT_UNSPEC,
    }
}
