//! The kernel's `netdev` generic-netlink family (Linux 6.3+): what each
//! driver can do with XDP, and notifications when that changes (a veth's
//! `ndo-xmit` comes and goes with its peer's GRO or XDP program).

use std::{collections::HashMap, fmt::Debug, io};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
    Nla as _, NlasIterator, Parseable, ParseableParametrized,
};
use netlink_packet_generic::{
    GenlFamily, GenlHeader, GenlMessage,
    ctrl::{
        GenlCtrl, GenlCtrlCmd,
        nlas::{GenlCtrlAttrs, McastGrpAttrs},
    },
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};
use tokio::io::{Interest, unix::AsyncFd};

/// Runs XDP programs natively (`NETDEV_XDP_ACT_BASIC`).
pub const BASIC: u64 = 1 << 0;
/// Native programs may return `XDP_REDIRECT`.
pub const REDIRECT: u64 = 1 << 1;
/// Transmits frames other devices' XDP programs redirect to it (`ndo_xdp_xmit`).
pub const NDO_XMIT: u64 = 1 << 2;

const CMD_DEV_GET: u8 = 1;
const CMD_DEV_ADD_NTF: u8 = 2;
const CMD_DEV_CHANGE_NTF: u8 = 4;
const A_DEV_IFINDEX: u16 = 1;
const A_DEV_XDP_FEATURES: u16 = 3;

/// Names of the feature bits, as `ip -d link` and the kernel's YAML spec say them.
#[must_use]
pub fn describe(features: u64) -> String {
    let names = [
        (BASIC, "basic"),
        (REDIRECT, "redirect"),
        (NDO_XMIT, "ndo-xmit"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| features & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        "none".to_owned()
    } else {
        set.join(", ")
    }
}

/// One `netdev` family message: a command and its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Netdev {
    cmd: u8,
    attrs: Vec<DefaultNla>,
}

impl GenlFamily for Netdev {
    fn family_name() -> &'static str {
        "netdev"
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for Netdev {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer);
    }
}

impl ParseableParametrized<[u8], GenlHeader> for Netdev {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = NlasIterator::new(buf)
            .map(|nla| nla.and_then(|nla| DefaultNla::parse(&nla)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            cmd: header.cmd,
            attrs,
        })
    }
}

impl Netdev {
    /// (ifindex, features) of a device message.
    fn device(&self) -> Option<(u32, u64)> {
        let mut ifindex = None;
        let mut features = None;
        for a in &self.attrs {
            let mut value = vec![0; a.value_len()];
            a.emit_value(&mut value);
            match a.kind() {
                A_DEV_IFINDEX => ifindex = value.get(..4)?.try_into().ok().map(u32::from_ne_bytes),
                A_DEV_XDP_FEATURES => {
                    features = value.get(..8)?.try_into().ok().map(u64::from_ne_bytes);
                }
                _ => {}
            }
        }
        Some((ifindex?, features?))
    }
}

fn socket() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_GENERIC)?;
    s.bind_auto()?;
    Ok(s)
}

/// Sends one request and collects the answers (to `NLMSG_DONE` for a dump).
fn request<F>(s: &Socket, family: u16, payload: F, dump: bool) -> io::Result<Vec<F>>
where
    F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + Debug,
{
    let mut genl = GenlMessage::from_payload(payload);
    genl.set_resolved_family_id(family);
    let mut msg = NetlinkMessage::from(genl);
    msg.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    s.send_to(&buf, &SocketAddr::new(0, 0), 0)?;
    let mut answers = Vec::new();
    loop {
        let (data, _) = s.recv_from_full()?;
        let mut offset = 0;
        while offset < data.len() {
            let m = NetlinkMessage::<GenlMessage<F>>::deserialize(&data[offset..])
                .map_err(|e| io::Error::other(format!("netlink: {e}")))?;
            offset += m.header.length as usize;
            match m.payload {
                NetlinkPayload::InnerMessage(genl) => {
                    answers.push(genl.payload);
                    if !dump {
                        return Ok(answers);
                    }
                }
                NetlinkPayload::Done(_) => return Ok(answers),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(io::Error::from_raw_os_error(-e.raw_code()));
                }
                _ => {}
            }
            if m.header.length == 0 {
                break;
            }
        }
    }
}

/// The family's id and its `mgmt` notification group.
fn resolve(s: &Socket) -> io::Result<(u16, Option<u32>)> {
    let ctrl = GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(Netdev::family_name().to_owned())],
    };
    let answer = request(s, 0, ctrl, false).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("the kernel has no netdev netlink family ({e})"),
        )
    })?;
    let mut id = None;
    let mut group = None;
    for attr in answer.iter().flat_map(|a| &a.nlas) {
        match attr {
            GenlCtrlAttrs::FamilyId(i) => id = Some(*i),
            GenlCtrlAttrs::McastGroups(groups) => {
                for g in groups {
                    let named_mgmt = g
                        .iter()
                        .any(|a| matches!(a, McastGrpAttrs::Name(n) if n == "mgmt"));
                    if named_mgmt {
                        group = g.iter().find_map(|a| match a {
                            McastGrpAttrs::Id(id) => Some(*id),
                            McastGrpAttrs::Name(_) => None,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    let id = id.ok_or_else(|| io::Error::other("the kernel has no netdev netlink family"))?;
    Ok((id, group))
}

/// Whether the kernel reports drivers' XDP features: it has the `netdev`
/// family (Linux 6.3+).
#[must_use]
pub fn available() -> bool {
    socket().and_then(|s| resolve(&s)).is_ok()
}

/// The `NETDEV_XDP_ACT_*` bits of every device, by ifindex (empty before
/// Linux 6.3).
///
/// # Errors
/// If the socket fails.
pub fn features() -> io::Result<HashMap<u32, u64>> {
    let s = socket()?;
    let Ok((family, _)) = resolve(&s) else {
        return Ok(HashMap::new());
    };
    let query = Netdev {
        cmd: CMD_DEV_GET,
        attrs: Vec::new(),
    };
    Ok(request(&s, family, query, true)?
        .iter()
        .filter_map(Netdev::device)
        .collect())
}

/// Follows devices' XDP feature changes.
pub struct Watcher {
    socket: AsyncFd<Socket>,
}

impl Watcher {
    /// Subscribes to the family's notifications; needs a tokio runtime.
    ///
    /// # Errors
    /// If the kernel has no netdev family or refuses the subscription.
    pub fn open() -> io::Result<Self> {
        let s = socket()?;
        let (_, group) = resolve(&s)?;
        let group = group.ok_or_else(|| io::Error::other("the netdev family has no mgmt group"))?;
        s.add_membership(group)?;
        s.set_non_blocking(true)?;
        // SAFETY: the socket owns its descriptor and keeps it open and the
        // same for as long as the AsyncFd holds it.
        let socket = unsafe { AsyncFd::register_with_interest(s, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { socket })
    }

    /// Waits for the next notifications: (ifindex, features) pairs.
    ///
    /// # Errors
    /// If the socket fails (an overrun included: the caller should assume
    /// the worst and look again).
    pub async fn next(&self) -> io::Result<Vec<(u32, u64)>> {
        loop {
            let mut guard = self.socket.readable().await?;
            match guard.try_io(|s| s.get_ref().recv_from_full()) {
                Ok(Ok((data, _))) => return Ok(notifications(&data)),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }
}

fn notifications(mut data: &[u8]) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    while let Ok(m) = NetlinkMessage::<GenlMessage<Netdev>>::deserialize(data) {
        let len = m.header.length as usize;
        if let NetlinkPayload::InnerMessage(genl) = m.payload
            && matches!(genl.payload.cmd, CMD_DEV_ADD_NTF | CMD_DEV_CHANGE_NTF)
            && let Some(device) = genl.payload.device()
        {
            out.push(device);
        }
        if len == 0 || len >= data.len() {
            break;
        }
        data = &data[len..];
    }
    out
}

/// Parses one attribute buffer; for the unit tests.
#[cfg(test)]
fn nla(kind: u16, value: &[u8]) -> DefaultNla {
    use netlink_packet_core::NlaBuffer;
    let mut buf = vec![0; 4 + value.len().next_multiple_of(4)];
    let nla = DefaultNla::new(kind, value.to_vec());
    nla.emit(&mut buf);
    DefaultNla::parse(&NlaBuffer::new(&buf[..])).expect("valid attribute")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_message_gives_ifindex_and_features() {
        let m = Netdev {
            cmd: CMD_DEV_CHANGE_NTF,
            attrs: vec![
                nla(A_DEV_IFINDEX, &7u32.to_ne_bytes()),
                nla(A_DEV_XDP_FEATURES, &(BASIC | NDO_XMIT).to_ne_bytes()),
            ],
        };
        assert_eq!(m.device(), Some((7, BASIC | NDO_XMIT)));
        assert_eq!(describe(BASIC | NDO_XMIT), "basic, ndo-xmit");
        assert_eq!(describe(0), "none");
    }

    #[test]
    fn the_running_kernel_answers_for_loopback() {
        // Every namespace has lo, ifindex 1; it has no native XDP.
        match features() {
            Ok(all) if !all.is_empty() => assert_eq!(all.get(&1).map(|f| f & BASIC), Some(0)),
            Ok(_) => eprintln!("kernel without the netdev family (older than 6.3)"),
            Err(e) => panic!("netdev query failed: {e}"),
        }
    }
}
