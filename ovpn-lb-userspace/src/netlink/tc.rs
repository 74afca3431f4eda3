//! Legacy tc, for kernels without tcx (before Linux 6.6): the `clsact`
//! qdisc and `cls_bpf` filters in direct-action mode, over a plain
//! rtnetlink socket (synchronous: attaching is a start-up step).
//!
//! A filter is found again by where it sits (device, direction, priority,
//! handle). Sending a filter where one already sits replaces its program in
//! place (`cls_bpf` swaps it under RCU): no packet passes unprocessed, the
//! tc counterpart of a tcx link update.

use std::{io, os::fd::RawFd};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// `ETH_P_ALL` in network byte order: the filter sees every protocol.
const ALL_PROTOCOLS: u16 = 0x0003_u16.to_be();
const CLSACT: &str = "clsact";

/// Which hook of the `clsact` qdisc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn parent(self) -> TcHandle {
        TcHandle {
            major: TcHandle::CLSACT.major,
            minor: match self {
                Direction::Ingress => TcHandle::MIN_INGRESS,
                Direction::Egress => TcHandle::MIN_EGRESS,
            },
        }
    }
}

/// A `cls_bpf` filter as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    pub handle: u32,
    /// The program's name as given when attaching (`TCA_BPF_NAME`).
    pub name: String,
    pub program_id: u32,
}

/// Where one of our filters sits on a device's hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub ifindex: u32,
    pub direction: Direction,
    pub priority: u16,
    pub handle: u32,
}

fn socket() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind_auto()?;
    Ok(s)
}

/// Sends `message` and collects the answers: the messages of a dump, or
/// none for an acknowledged request.
fn request(message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<TcMessage>> {
    let s = socket()?;
    let mut msg = NetlinkMessage::from(message);
    msg.header.flags = NLM_F_REQUEST | flags;
    msg.header.sequence_number = 1;
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    s.send_to(&buf, &SocketAddr::new(0, 0), 0)?;
    let mut answers = Vec::new();
    loop {
        let (data, _) = s.recv_from_full()?;
        let mut offset = 0;
        while offset < data.len() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(|e| io::Error::other(format!("rtnetlink: {e}")))?;
            let length = m.header.length as usize;
            match m.payload {
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewTrafficFilter(tc)
                    | RouteNetlinkMessage::NewQueueDiscipline(tc),
                ) => answers.push(tc),
                NetlinkPayload::Done(_) => return Ok(answers),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        Some(_) => Err(io::Error::from_raw_os_error(-e.raw_code())),
                        // The acknowledgement.
                        None => Ok(answers),
                    };
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

fn index(ifindex: u32) -> io::Result<i32> {
    i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn clsact_message(ifindex: u32) -> io::Result<TcMessage> {
    let mut m = TcMessage::with_index(index(ifindex)?);
    m.header.parent = TcHandle::CLSACT;
    m.header.handle = TcHandle {
        major: TcHandle::CLSACT.major,
        minor: 0,
    };
    m.attributes.push(TcAttribute::Kind(CLSACT.to_owned()));
    Ok(m)
}

/// Whether device `ifindex` has a `clsact` qdisc.
///
/// # Errors
/// If netlink fails.
pub fn has_clsact(ifindex: u32) -> io::Result<bool> {
    let mut m = TcMessage::default();
    m.header.index = index(ifindex)?;
    Ok(
        request(RouteNetlinkMessage::GetQueueDiscipline(m), NLM_F_DUMP)?
            .iter()
            .any(|q| {
                q.header.index == index(ifindex).unwrap_or(-1)
                    && q.attributes
                        .iter()
                        .any(|a| matches!(a, TcAttribute::Kind(k) if k == CLSACT))
            }),
    )
}

/// Adds a `clsact` qdisc to device `ifindex`; false if it had one.
///
/// # Errors
/// If netlink fails otherwise (no such device, no `sch_ingress` module).
pub fn add_clsact(ifindex: u32) -> io::Result<bool> {
    match request(
        RouteNetlinkMessage::NewQueueDiscipline(clsact_message(ifindex)?),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes device `ifindex`'s `clsact` qdisc, and with it every filter on it.
///
/// # Errors
/// If netlink fails (there is none included).
pub fn delete_clsact(ifindex: u32) -> io::Result<()> {
    request(
        RouteNetlinkMessage::DelQueueDiscipline(clsact_message(ifindex)?),
        NLM_F_ACK,
    )
    .map(drop)
}

/// The BPF filters on one hook of device `ifindex` (none without `clsact`).
///
/// # Errors
/// If netlink fails.
pub fn filters(ifindex: u32, direction: Direction) -> io::Result<Vec<Filter>> {
    let mut m = TcMessage::with_index(index(ifindex)?);
    m.header.parent = direction.parent();
    let answers = match request(RouteNetlinkMessage::GetTrafficFilter(m), NLM_F_DUMP) {
        Ok(a) => a,
        // No clsact qdisc: no hook, no filters.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(answers
        .into_iter()
        .filter_map(|f| {
            let options = f.attributes.iter().find_map(|a| match a {
                TcAttribute::Options(o) => Some(o),
                _ => None,
            })?;
            let mut name = String::new();
            let mut program_id = None;
            for o in options {
                match o {
                    TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name.clone_from(n),
                    TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => program_id = Some(*id),
                    _ => {}
                }
            }
            Some(Filter {
                // The priority is the upper half.
                priority: (f.header.info >> 16) as u16,
                handle: u32::from(f.header.handle),
                name,
                program_id: program_id?,
            })
        })
        .collect())
}

/// Puts program `fd` (named `name`) in `slot` as a direct-action filter:
/// a new filter where there is none, the program replaced in place where
/// there is one.
///
/// # Errors
/// If netlink fails.
pub fn set_filter(slot: Slot, fd: RawFd, name: &str) -> io::Result<()> {
    let mut m = TcMessage::with_index(index(slot.ifindex)?);
    m.header.parent = slot.direction.parent();
    m.header.handle = TcHandle::from(slot.handle);
    m.header.info = (u32::from(slot.priority) << 16) | u32::from(ALL_PROTOCOLS);
    m.attributes.push(TcAttribute::Kind("bpf".to_owned()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(
            u32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        )),
        TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_owned())),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ]));
    request(
        RouteNetlinkMessage::NewTrafficFilter(m),
        NLM_F_ACK | NLM_F_CREATE,
    )
    .map(drop)
}

/// Removes the filter in `slot`; false if there was none.
///
/// # Errors
/// If netlink fails otherwise.
pub fn delete_filter(slot: Slot) -> io::Result<bool> {
    let mut m = TcMessage::with_index(index(slot.ifindex)?);
    m.header.parent = slot.direction.parent();
    m.header.handle = TcHandle::from(slot.handle);
    m.header.info = (u32::from(slot.priority) << 16) | u32::from(ALL_PROTOCOLS);
    m.attributes.push(TcAttribute::Kind("bpf".to_owned()));
    match request(RouteNetlinkMessage::DelTrafficFilter(m), NLM_F_ACK) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => Ok(false),
        Err(e) => Err(e),
    }
}
