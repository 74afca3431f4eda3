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
    layout::{ETH_HLEN, EthHdr, Ipv4Hdr, Ipv6Hdr},
    maps::SITE,
    packet::{Mac, Packet},
    parse::Family,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `sizeof(struct bpf_fib_lookup)`.
const FIB_PARAMS_LEN: i32 = 64;
const _: () = assert!(size_of::<bpf_fib_lookup>() == FIB_PARAMS_LEN as usize);

/// The return code of a redirect into the LAN device, or `None`: pass it to
/// the kernel.
#[inline(always)]
pub fn to_lan(pkt: &Packet<XdpContext>, family: Family) -> Option<i32> {
    try_to_lan(pkt, family).map(|lan| pkt.ctx().redirect(lan))
}

#[inline(always)]
fn try_to_lan(pkt: &Packet<XdpContext>, family: Family) -> Option<u32> {
    let site = SITE.get(0)?;
    if site.flags & site_flags::LAN_XDP_XMIT == 0 || site.lan_ifindex == 0 {
        return None;
    }
    // SAFETY: `bpf_fib_lookup` is a C struct of integers and unions of
    // integers, for which all-zero is a valid value (and the one the helper
    // expects in the fields we leave alone).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.ifindex = pkt.ctx().ifindex();
    match family {
        Family::V4 => {
            let ip = pkt.header::<Ipv4Hdr>(ETH_HLEN)?;
            if ip.ttl() <= 1 {
                return None;
            }
            params.family = AF_INET;
            params.l4_protocol = ip.proto();
            params.__bindgen_anon_1.tot_len = ip.tot_len();
            params.__bindgen_anon_2.tos = ip.tos();
            params.__bindgen_anon_3.ipv4_src = ip.src();
            params.__bindgen_anon_4.ipv4_dst = ip.dst();
            // The lookup moves no packet data: `ip` stays valid across it.
            lookup(pkt, &mut params, site.lan_ifindex)?;
            let before = ip.ttl_proto();
            ip.set_ttl(ip.ttl() - 1);
            ip.set_check(checksum::replace2(ip.check(), before, ip.ttl_proto()));
        }
        Family::V6 => {
            let ip = pkt.header::<Ipv6Hdr>(ETH_HLEN)?;
            if ip.hop_limit() <= 1 {
                return None;
            }
            params.family = AF_INET6;
            params.l4_protocol = ip.next_hdr();
            params.__bindgen_anon_1.tot_len = ip.payload_len() + Ipv6Hdr::LEN as u16;
            params.__bindgen_anon_3.ipv6_src = ip.src();
            params.__bindgen_anon_4.ipv6_dst = ip.dst();
            lookup(pkt, &mut params, site.lan_ifindex)?;
            ip.set_hop_limit(ip.hop_limit() - 1);
        }
    }
    pkt.header::<EthHdr>(0)?
        .set_addrs(Mac::new(&params.dmac), Mac::new(&params.smac));
    Some(site.lan_ifindex)
}

/// Route and neighbour lookup; `Some` only for a resolved next hop on the LAN.
#[inline(always)]
fn lookup(pkt: &Packet<XdpContext>, params: &mut bpf_fib_lookup, lan: u32) -> Option<()> {
    // SAFETY: the context is the program's own; `params` is a live,
    // initialised struct of the size passed.
    let ret = unsafe { fib_lookup(pkt.ctx().ctx.cast(), params, FIB_PARAMS_LEN, 0) };
    (ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS) && params.ifindex == lan).then_some(())
}
