//! XDP restore only: forward a restored packet to the LAN ourselves when the
//! LAN driver can transmit XDP frames, with the kernel's own route and
//! neighbour entry. Anything the lookup cannot settle (no route through the
//! LAN, neighbour not resolved, too big, TTL about to expire) goes to the
//! kernel, which handles it as usual.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use ovpn_lb_common::{checksum, maps::site_flags};

use crate::{
    hook::Hook,
    maps::SITE,
    packet::{ETH_HLEN, EthHdr, Ipv4Hdr, Ipv6Hdr, Packet},
    translate,
    tunnel::Restored,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `sizeof(struct bpf_fib_lookup)`.
const FIB_PARAMS_LEN: i32 = 64;
const _: () = assert!(size_of::<bpf_fib_lookup>() == FIB_PARAMS_LEN as usize);

/// The return code of a redirect into the LAN device, or `None`: pass it to
/// the kernel.
#[inline(always)]
pub fn to_lan(pkt: &Packet<XdpContext>, restored: &Restored) -> Option<i32> {
    try_to_lan(pkt, restored).map(|lan| pkt.ctx.redirect(lan))
}

#[inline(always)]
fn try_to_lan(pkt: &Packet<XdpContext>, restored: &Restored) -> Option<u32> {
    let site = SITE.get(0)?;
    if site.flags & site_flags::LAN_XDP_XMIT == 0 || site.lan_ifindex == 0 {
        return None;
    }
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.ifindex = Hook::ingress_ifindex(pkt.ctx);
    match restored {
        Restored::V4 => {
            let ip: *mut Ipv4Hdr = pkt.ptr(ETH_HLEN)?;
            unsafe {
                if (*ip).ttl <= 1 {
                    return None;
                }
                params.family = AF_INET;
                params.l4_protocol = (*ip).protocol;
                params.__bindgen_anon_1.tot_len = u16::from_be((*ip).tot_len);
                params.__bindgen_anon_2.tos = (*ip).tos;
                params.__bindgen_anon_3.ipv4_src = (*ip).saddr;
                params.__bindgen_anon_4.ipv4_dst = (*ip).daddr;
            }
            lookup(pkt, &mut params, site.lan_ifindex)?;
            unsafe {
                let before = translate::ttl_proto_word(ip);
                (*ip).ttl -= 1;
                (*ip).check =
                    checksum::replace2((*ip).check, before, translate::ttl_proto_word(ip));
            }
        }
        Restored::V6 => {
            let ip: *mut Ipv6Hdr = pkt.ptr(ETH_HLEN)?;
            unsafe {
                if (*ip).hop_limit <= 1 {
                    return None;
                }
                params.family = AF_INET6;
                params.l4_protocol = (*ip).nexthdr;
                params.__bindgen_anon_1.tot_len =
                    u16::from_be((*ip).payload_len) + size_of::<Ipv6Hdr>() as u16;
                params.__bindgen_anon_3.ipv6_src = (*ip).saddr;
                params.__bindgen_anon_4.ipv6_dst = (*ip).daddr;
            }
            lookup(pkt, &mut params, site.lan_ifindex)?;
            unsafe { (*ip).hop_limit -= 1 };
        }
    }
    let eth: *mut EthHdr = pkt.ptr(0)?;
    unsafe {
        (*eth).dst = params.dmac;
        (*eth).src = params.smac;
    }
    Some(site.lan_ifindex)
}

/// Route and neighbour lookup; `Some` only for a resolved next hop on the LAN.
#[inline(always)]
fn lookup(pkt: &Packet<XdpContext>, params: &mut bpf_fib_lookup, lan: u32) -> Option<()> {
    let ret = unsafe { fib_lookup(pkt.ctx.ctx.cast(), params, FIB_PARAMS_LEN, 0) };
    (ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS) && params.ifindex == lan).then_some(())
}
