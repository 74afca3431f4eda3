//! XDP only: complete checksums the sender left to the NIC.
//!
//! A LAN host with transmit checksum offload (the default on veth and most
//! NICs) sends TCP and UDP with only the pseudo-header sum in the checksum
//! field (`CHECKSUM_PARTIAL`). Under tc the socket buffer remembers that and
//! the kernel finishes the sum before the packet leaves; an XDP frame
//! redirected into a TAP device has no socket buffer, so OpenVPN would carry
//! the unfinished sum and the far host would drop the segment. The field of
//! such a packet equals the pseudo-header sum, so that is the test; summing
//! the L4 bytes (field included) then gives the full checksum. A complete
//! checksum that happens to equal the pseudo-header sum comes out of the same
//! sum unchanged, so the test cannot corrupt a packet.

use aya_ebpf::helpers::bpf_csum_diff;
use ovpn_lb_common::{Reason, checksum};

use crate::{
    hook::Hook,
    log::{self, Helper},
    packet::{Packet, Word},
    parse::{Ip, L4Checksum},
};

/// Bytes summed per helper call; the copy lives on the 512-byte BPF stack.
const CHUNK: usize = 256;
/// Largest L4 segment we complete: XDP frames on veth and TAP stay below a page.
const MAX_L4_BYTES: usize = 4096;

/// Completes the checksum at `l4` if it holds the pseudo-header sum for the
/// packet's current addresses, which `pseudo` computes from the L4 length.
#[inline(always)]
pub fn complete<C: Hook>(
    pkt: &Packet<C>,
    ip: &Ip,
    l4: Option<&L4Checksum>,
    pseudo: impl FnOnce(u16) -> u16,
) -> Result<(), Reason> {
    let Some(l4) = l4 else { return Ok(()) };
    // A fragment's checksum covers the whole datagram, whose other fragments
    // we cannot see; and the kernel completes offloaded checksums before it
    // fragments, so no fragment carries a partial one.
    if C::KEEPS_CHECKSUM_STATE || !l4.offloadable || ip.fragment {
        return Ok(());
    }
    let field = pkt.header::<Word>(l4.offset).ok_or(Reason::TruncatedL4)?;
    if field.get() != pseudo((ip.len - (ip.l4 - ip.l3)) as u16) {
        return Ok(());
    }
    let end = ip.l3 + ip.len;
    if end - ip.l4 > MAX_L4_BYTES {
        // Longer than any frame these hooks see; counted, never sent wrong.
        log::rewrite_failed(Helper::SegmentTooLong, i64::from((end - ip.l4) as u32));
        return Err(Reason::RewriteFailed);
    }
    // Copies, not packet pointers: loops over variable packet offsets are
    // more than the verifier will follow.
    let mut chunk = [0u8; CHUNK];
    let mut at = ip.l4;
    let mut sum: u32 = 0;
    for _ in 0..MAX_L4_BYTES / CHUNK {
        // Opaque, so the compiler bounds the register the helper gets rather
        // than a copy of it, which is what the verifier checks.
        let mut n = core::hint::black_box((end - at) & !3);
        if n > CHUNK {
            n = CHUNK;
        }
        if n == 0 {
            break;
        }
        if !pkt.ctx().load_bytes(at, &mut chunk, n as u32) {
            return Err(Reason::TruncatedL4);
        }
        // SAFETY: `chunk` holds `n` <= CHUNK initialised bytes; the helper
        // only reads them (a null `from` with size 0 reads nothing).
        let ret = unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                chunk.as_mut_ptr().cast(),
                n as u32,
                sum,
            )
        };
        // The helper's 32-bit sum, or a negative error.
        sum = u32::try_from(ret).map_err(|_| {
            log::rewrite_failed(Helper::CsumDiff, ret);
            Reason::RewriteFailed
        })?;
        at += n;
    }
    // Whole words are done (the segment is at most MAX_L4_BYTES long).
    let rest = (end - at) & 3;
    if rest != 0 {
        // The last 1-3 bytes, zero-padded as the checksum pads an odd end.
        let mut tail = [0u8; 4];
        if !pkt.ctx().load_bytes(at, &mut tail, rest as u32) {
            return Err(Reason::TruncatedL4);
        }
        sum = checksum::add(sum, u32::from_ne_bytes(tail));
    }
    let mut done = !checksum::fold(sum);
    if done == 0 && l4.zero_means_none {
        done = 0xffff;
    }
    // Re-derive the pointer: the helpers above may have moved packet data.
    pkt.header::<Word>(l4.offset)
        .ok_or(Reason::TruncatedL4)?
        .set(done);
    Ok(())
}
