//! Packet access: the only place packet bytes are read or written.
//!
//! [`Packet::header`] checks that a whole header lies inside the linear
//! area, in the form the verifier tracks (`data + offset + size <=
//! data_end`), and hands out a [`Header`]; its typed accessors read and
//! write single fields at constant offsets inside it, so no access can leave
//! the checked range. Multi-byte fields are raw wire-order loads (addresses,
//! checksum words) unless an accessor says "host order".

use core::{marker::PhantomData, mem::offset_of};

use ovpn_lb_common::probe::Payload as ProbePayload;

use crate::{
    hook::Hook,
    layout::{EthHdr, Ipv4Hdr, Ipv6ExtHdr, Ipv6FragHdr, Ipv6Hdr, TcpHdr, UdpHdr},
};

/// Headers we may need in the linear area: Ethernet, IPv6 with a few extension
/// headers, and a TCP header.
const MAX_HEADER_BYTES: u32 = 256;

pub struct Packet<'a, C: Hook> {
    ctx: &'a C,
}

impl<'a, C: Hook> Packet<'a, C> {
    /// Wraps the context, pulling headers into the linear area if the sender
    /// left them in fragments (rare; GRO'd and locally built skbs usually do not).
    #[inline(always)]
    pub fn new(ctx: &'a C) -> Self {
        let pkt = Self::unpulled(ctx);
        pkt.pull_headers();
        pkt
    }

    /// Wraps the context as it is, for a program that looks at a fixed
    /// header first and pulls only for the packets it works on.
    #[inline(always)]
    pub fn unpulled(ctx: &'a C) -> Self {
        Self { ctx }
    }

    /// Makes the first [`MAX_HEADER_BYTES`] bytes (or the whole packet)
    /// linear. Every [`Header`] made before is invalid afterwards.
    #[inline(always)]
    pub fn pull_headers(&self) {
        let len = self.ctx.len();
        let want = if len < MAX_HEADER_BYTES {
            len
        } else {
            MAX_HEADER_BYTES
        };
        if ((self.ctx.data_end() - self.ctx.data()) as u32) < want {
            self.ctx.pull(want);
        }
    }

    /// The hook context, for helpers.
    #[inline(always)]
    pub fn ctx(&self) -> &'a C {
        self.ctx
    }

    /// Total length of the packet, including any non-linear part.
    #[inline(always)]
    pub fn len(&self) -> u32 {
        self.ctx.len()
    }

    /// `read` of the fixed header `T` at `offset`, pulling once if the sender
    /// left it outside the linear area; `None` for a packet too short to
    /// hold it. For programs that look at one header of every packet and
    /// pull only when they must.
    #[inline(always)]
    pub fn read_fixed<T, R>(&self, offset: usize, read: impl Fn(&Header<'_, T>) -> R) -> Option<R> {
        if let Some(hdr) = self.header::<T>(offset) {
            return Some(read(&hdr));
        }
        self.pull_headers();
        self.header::<T>(offset).map(|hdr| read(&hdr))
    }

    /// The `T` at `offset`, or `None` if it does not lie wholly in the linear area.
    #[inline(always)]
    pub fn header<T>(&self, offset: usize) -> Option<Header<'_, T>> {
        let start = self.ctx.data();
        let end = self.ctx.data_end();
        let at = start + offset;
        if at + size_of::<T>() > end {
            return None;
        }
        Some(Header {
            ptr: at as *mut u8,
            _layout: PhantomData,
        })
    }
}

/// A header of layout `T` inside the packet, bounds-checked when made.
///
/// Valid until a helper that may move packet data runs (pull, tail change,
/// checksum helpers): the verifier then invalidates every packet pointer
/// and refuses a program that uses one, so a stale `Header` cannot load.
pub struct Header<'p, T> {
    ptr: *mut u8,
    _layout: PhantomData<&'p T>,
}

/// What [`Header`] loads and stores: plain integers, one instruction each.
/// Arrays are built from them by the accessors: an array copy from or to
/// packet memory (alignment 1) becomes a byte-wise copy or a `memmove`
/// call, several times the cost.
pub trait Scalar: Copy {}
impl Scalar for u8 {}
impl Scalar for u16 {}
impl Scalar for u32 {}
impl Scalar for u64 {}

impl<T> Header<'_, T> {
    /// The `F` at byte `OFFSET` of the header.
    #[inline(always)]
    fn load<F: Scalar, const OFFSET: usize>(&self) -> F {
        const { assert!(OFFSET + size_of::<F>() <= size_of::<T>()) };
        // SAFETY: `ptr..ptr + size_of::<T>()` was checked to lie inside the
        // packet's linear area, and `OFFSET + size_of::<F>()` lies inside `T`
        // (asserted at compile time). Unaligned: packet data has no
        // alignment; the BPF target is built with
        // `allows-misaligned-mem-access`, which this kernel's verifier
        // permits for packet access, so this is one load instruction.
        unsafe { self.ptr.add(OFFSET).cast::<F>().read_unaligned() }
    }

    /// Writes `value` at byte `OFFSET` of the header.
    #[inline(always)]
    fn store<F: Scalar, const OFFSET: usize>(&self, value: F) {
        const { assert!(OFFSET + size_of::<F>() <= size_of::<T>()) };
        // SAFETY: as in `load`; packet data is writable for tc and XDP
        // programs (the verifier checks the program type), and no Rust
        // reference to packet memory exists to alias it.
        unsafe { self.ptr.add(OFFSET).cast::<F>().write_unaligned(value) }
    }
}

/// A 16-bit word of the packet, e.g. an L4 checksum field.
pub type Word = [u8; 2];

impl Header<'_, Word> {
    /// The word as stored (wire order).
    #[inline(always)]
    pub fn get(&self) -> u16 {
        self.load::<u16, 0>()
    }

    #[inline(always)]
    pub fn set(&self, value: u16) {
        self.store::<u16, 0>(value);
    }
}

/// A 32-bit word of the packet: IPv4 options, TCP/UDP ports.
pub type Quad = [u8; 4];

impl Header<'_, Quad> {
    /// The word as stored.
    #[inline(always)]
    pub fn get(&self) -> u32 {
        self.load::<u32, 0>()
    }
}

/// A MAC address as three stored 16-bit words: how it is compared and
/// copied. (Not a 32-bit and a 16-bit word: a MAC at an offset that is only
/// 2-aligned on the stack, as in `bpf_fib_lookup`, would make a misaligned
/// 32-bit stack load, which the verifier refuses.)
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mac([u16; 3]);

impl Mac {
    #[inline(always)]
    #[expect(
        clippy::trivially_copy_pass_by_ref,
        reason = "read in place from a map value or the stack, never copied whole"
    )]
    pub fn new(bytes: &[u8; 6]) -> Self {
        Self([
            u16::from_ne_bytes([bytes[0], bytes[1]]),
            u16::from_ne_bytes([bytes[2], bytes[3]]),
            u16::from_ne_bytes([bytes[4], bytes[5]]),
        ])
    }
}

impl Header<'_, EthHdr> {
    #[inline(always)]
    pub fn dst(&self) -> Mac {
        const AT: usize = offset_of!(EthHdr, dst_addr);
        Mac([
            self.load::<u16, AT>(),
            self.load::<u16, { AT + 2 }>(),
            self.load::<u16, { AT + 4 }>(),
        ])
    }

    #[inline(always)]
    pub fn src(&self) -> Mac {
        const AT: usize = offset_of!(EthHdr, src_addr);
        Mac([
            self.load::<u16, AT>(),
            self.load::<u16, { AT + 2 }>(),
            self.load::<u16, { AT + 4 }>(),
        ])
    }

    /// Ethertype, host order.
    #[inline(always)]
    pub fn ether_type(&self) -> u16 {
        u16::from_be(self.load::<u16, { offset_of!(EthHdr, ether_type) }>())
    }

    #[inline(always)]
    pub fn set_addrs(&self, dst: Mac, src: Mac) {
        const DST: usize = offset_of!(EthHdr, dst_addr);
        const SRC: usize = offset_of!(EthHdr, src_addr);
        self.store::<u16, DST>(dst.0[0]);
        self.store::<u16, { DST + 2 }>(dst.0[1]);
        self.store::<u16, { DST + 4 }>(dst.0[2]);
        self.store::<u16, SRC>(src.0[0]);
        self.store::<u16, { SRC + 2 }>(src.0[1]);
        self.store::<u16, { SRC + 4 }>(src.0[2]);
    }
}

impl Header<'_, Ipv4Hdr> {
    /// Version and IHL.
    #[inline(always)]
    pub fn vihl(&self) -> u8 {
        self.load::<u8, { offset_of!(Ipv4Hdr, vihl) }>()
    }

    #[inline(always)]
    pub fn tos(&self) -> u8 {
        self.load::<u8, { offset_of!(Ipv4Hdr, tos) }>()
    }

    /// Total length, host order.
    #[inline(always)]
    pub fn tot_len(&self) -> u16 {
        u16::from_be(self.load::<u16, { offset_of!(Ipv4Hdr, tot_len) }>())
    }

    /// Flags and fragment offset, host order.
    #[inline(always)]
    pub fn frags(&self) -> u16 {
        u16::from_be(self.load::<u16, { offset_of!(Ipv4Hdr, frags) }>())
    }

    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        self.load::<u8, { offset_of!(Ipv4Hdr, ttl) }>()
    }

    #[inline(always)]
    pub fn proto(&self) -> u8 {
        self.load::<u8, { offset_of!(Ipv4Hdr, proto) }>()
    }

    /// The header word holding TTL and protocol, as stored.
    #[inline(always)]
    pub fn ttl_proto(&self) -> u16 {
        self.load::<u16, { offset_of!(Ipv4Hdr, ttl) }>()
    }

    /// Header checksum, as stored.
    #[inline(always)]
    pub fn check(&self) -> u16 {
        self.load::<u16, { offset_of!(Ipv4Hdr, check) }>()
    }

    /// The five 32-bit words of the fixed header, as stored (for its checksum).
    #[inline(always)]
    pub fn words(&self) -> [u32; 5] {
        [
            self.load::<u32, 0>(),
            self.load::<u32, 4>(),
            self.load::<u32, 8>(),
            self.load::<u32, 12>(),
            self.load::<u32, 16>(),
        ]
    }

    /// Source address, as stored (see `ovpn_lb_common::prefix`).
    #[inline(always)]
    pub fn src(&self) -> u32 {
        self.load::<u32, { offset_of!(Ipv4Hdr, src_addr) }>()
    }

    #[inline(always)]
    pub fn dst(&self) -> u32 {
        self.load::<u32, { offset_of!(Ipv4Hdr, dst_addr) }>()
    }

    #[inline(always)]
    pub fn set_ttl(&self, ttl: u8) {
        self.store::<u8, { offset_of!(Ipv4Hdr, ttl) }>(ttl);
    }

    #[inline(always)]
    pub fn set_check(&self, check: u16) {
        self.store::<u16, { offset_of!(Ipv4Hdr, check) }>(check);
    }

    #[inline(always)]
    pub fn set_src(&self, addr: u32) {
        self.store::<u32, { offset_of!(Ipv4Hdr, src_addr) }>(addr);
    }

    #[inline(always)]
    pub fn set_dst(&self, addr: u32) {
        self.store::<u32, { offset_of!(Ipv4Hdr, dst_addr) }>(addr);
    }
}

/// The IPv6 address at byte `$at` of a header, as four word loads.
macro_rules! address {
    ($hdr:expr, $at:expr) => {
        [
            $hdr.load::<u32, { $at }>(),
            $hdr.load::<u32, { $at + 4 }>(),
            $hdr.load::<u32, { $at + 8 }>(),
            $hdr.load::<u32, { $at + 12 }>(),
        ]
    };
}

/// Writes an IPv6 address at byte `$at` of a header, as four word stores.
macro_rules! set_address {
    ($hdr:expr, $at:expr, $addr:expr) => {
        $hdr.store::<u32, { $at }>($addr[0]);
        $hdr.store::<u32, { $at + 4 }>($addr[1]);
        $hdr.store::<u32, { $at + 8 }>($addr[2]);
        $hdr.store::<u32, { $at + 12 }>($addr[3]);
    };
}

impl Header<'_, Ipv6Hdr> {
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.load::<u8, { offset_of!(Ipv6Hdr, vcf) }>() >> 4
    }

    /// Payload length, host order.
    #[inline(always)]
    pub fn payload_len(&self) -> u16 {
        u16::from_be(self.load::<u16, { offset_of!(Ipv6Hdr, payload_len) }>())
    }

    #[inline(always)]
    pub fn next_hdr(&self) -> u8 {
        self.load::<u8, { offset_of!(Ipv6Hdr, next_hdr) }>()
    }

    #[inline(always)]
    pub fn hop_limit(&self) -> u8 {
        self.load::<u8, { offset_of!(Ipv6Hdr, hop_limit) }>()
    }

    /// Source address as four stored words (see `ovpn_lb_common::prefix`).
    #[inline(always)]
    pub fn src(&self) -> [u32; 4] {
        address!(self, offset_of!(Ipv6Hdr, src_addr))
    }

    #[inline(always)]
    pub fn dst(&self) -> [u32; 4] {
        address!(self, offset_of!(Ipv6Hdr, dst_addr))
    }

    #[inline(always)]
    pub fn set_hop_limit(&self, hop_limit: u8) {
        self.store::<u8, { offset_of!(Ipv6Hdr, hop_limit) }>(hop_limit);
    }

    #[inline(always)]
    pub fn set_src(&self, addr: &[u32; 4]) {
        set_address!(self, offset_of!(Ipv6Hdr, src_addr), addr);
    }

    #[inline(always)]
    pub fn set_dst(&self, addr: &[u32; 4]) {
        set_address!(self, offset_of!(Ipv6Hdr, dst_addr), addr);
    }
}

impl Header<'_, Ipv6ExtHdr> {
    #[inline(always)]
    pub fn next_hdr(&self) -> u8 {
        self.load::<u8, { offset_of!(Ipv6ExtHdr, next_hdr) }>()
    }

    #[inline(always)]
    pub fn len(&self) -> u8 {
        self.load::<u8, { offset_of!(Ipv6ExtHdr, len) }>()
    }
}

impl Header<'_, Ipv6FragHdr> {
    #[inline(always)]
    pub fn next_hdr(&self) -> u8 {
        self.load::<u8, { offset_of!(Ipv6FragHdr, next_hdr) }>()
    }

    /// Offset and M flag, host order.
    #[inline(always)]
    pub fn frag_off(&self) -> u16 {
        u16::from_be(self.load::<u16, { offset_of!(Ipv6FragHdr, frag_off) }>())
    }
}

impl Header<'_, TcpHdr> {
    /// Header length in bytes (data offset).
    #[inline(always)]
    pub fn header_len(&self) -> u32 {
        // The data offset is the top nibble of the flags word.
        u32::from(self.load::<u8, { offset_of!(TcpHdr, _bitfield_1) }>() >> 4) * 4
    }
}

impl Header<'_, UdpHdr> {
    /// Destination port, host order.
    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        u16::from_be(self.load::<u16, { offset_of!(UdpHdr, dst) }>())
    }
}

impl Header<'_, ProbePayload> {
    /// The whole payload, as on the wire, field by field.
    #[inline(always)]
    pub fn get(&self) -> ProbePayload {
        ProbePayload {
            magic: self.load::<u32, { offset_of!(ProbePayload, magic) }>(),
            version: self.load::<u8, { offset_of!(ProbePayload, version) }>(),
            kind: self.load::<u8, { offset_of!(ProbePayload, kind) }>(),
            tunnel: self.load::<u16, { offset_of!(ProbePayload, tunnel) }>(),
            seq: self.load::<u32, { offset_of!(ProbePayload, seq) }>(),
            sender_flags: self.load::<u16, { offset_of!(ProbePayload, sender_flags) }>(),
            reflector_flags: self.load::<u16, { offset_of!(ProbePayload, reflector_flags) }>(),
            sent_ns: self.load::<u64, { offset_of!(ProbePayload, sent_ns) }>(),
            reflected_ns: self.load::<u64, { offset_of!(ProbePayload, reflected_ns) }>(),
            sender_view: self.load::<u64, { offset_of!(ProbePayload, sender_view) }>(),
            reflector_view: self.load::<u64, { offset_of!(ProbePayload, reflector_view) }>(),
        }
    }

    /// Magic, host order.
    #[inline(always)]
    pub fn magic(&self) -> u32 {
        u32::from_be(self.load::<u32, { offset_of!(ProbePayload, magic) }>())
    }

    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.load::<u8, { offset_of!(ProbePayload, version) }>()
    }

    #[inline(always)]
    pub fn kind(&self) -> u8 {
        self.load::<u8, { offset_of!(ProbePayload, kind) }>()
    }

    /// The sender's tunnel id, host order.
    #[inline(always)]
    pub fn tunnel(&self) -> u16 {
        u16::from_be(self.load::<u16, { offset_of!(ProbePayload, tunnel) }>())
    }

    /// Turns the probe into its answer: kind, reflect time, our view and
    /// our flags, the last three given in host order.
    #[inline(always)]
    pub fn answer(&self, kind: u8, reflected_ns: u64, view: u64, flags: u16) {
        self.store::<u8, { offset_of!(ProbePayload, kind) }>(kind);
        self.store::<u64, { offset_of!(ProbePayload, reflected_ns) }>(reflected_ns.to_be());
        self.store::<u64, { offset_of!(ProbePayload, reflector_view) }>(view.to_be());
        self.store::<u16, { offset_of!(ProbePayload, reflector_flags) }>(flags.to_be());
    }
}
