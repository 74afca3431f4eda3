//! ICMP echo messages, as the loader's pinger (plain peers' tunnels) and the
//! test bed's ping send and match them. Raw sockets: an IPv4 one hands
//! received packets over with their IP header, an IPv6 one without; the
//! kernel computes ICMPv6's checksum, ICMPv4's is ours.

/// Bytes of an echo request: the 8-byte header and a short payload.
pub const REQUEST_LEN: usize = 16;

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;

/// Echo request `seq` of identifier `id`, ready for a raw socket's `sendto`.
#[must_use]
pub fn request(v6: bool, id: u16, seq: u16) -> [u8; REQUEST_LEN] {
    let mut msg = [0u8; REQUEST_LEN];
    msg[0] = if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 };
    msg[4..6].copy_from_slice(&id.to_be_bytes());
    msg[6..8].copy_from_slice(&seq.to_be_bytes());
    msg[8..16].copy_from_slice(b"ovpn-lb\0");
    if !v6 {
        let sum = crate::checksum::fold(
            msg.chunks(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                .sum(),
        );
        msg[2..4].copy_from_slice(&(!sum).to_be_bytes());
    }
    msg
}

/// The sequence number of `received` (what a raw socket of family `v6`
/// read) if it is an echo reply with identifier `id`.
#[must_use]
pub fn reply_seq(v6: bool, received: &[u8], id: u16) -> Option<u16> {
    let icmp = if v6 {
        received
    } else {
        let ihl = usize::from(*received.first()? & 0x0f) * 4;
        received.get(ihl..)?
    };
    let reply = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
    (icmp.len() >= 8 && icmp[0] == reply && u16::from_be_bytes([icmp[4], icmp[5]]) == id)
        .then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_request_checksums_to_zero() {
        let msg = request(false, 0x1234, 7);
        let sum: u32 = msg
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        assert_eq!(crate::checksum::fold(sum), 0xffff);
        assert_eq!(msg[0], ECHO_REQUEST_V4);
        assert_eq!(&msg[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn an_ipv6_request_leaves_the_checksum_to_the_kernel() {
        let msg = request(true, 1, 2);
        assert_eq!(msg[0], ECHO_REQUEST_V6);
        assert_eq!(&msg[2..4], &[0, 0]);
    }

    #[test]
    fn replies_match_by_family_type_and_identifier() {
        let mut v6 = request(true, 9, 300);
        v6[0] = ECHO_REPLY_V6;
        assert_eq!(reply_seq(true, &v6, 9), Some(300));
        assert_eq!(reply_seq(true, &v6, 8), None, "another pinger's");
        assert_eq!(
            reply_seq(true, &request(true, 9, 300), 9),
            None,
            "a request"
        );
        // IPv4: behind a 24-byte header (IHL 6, options included).
        let mut v4 = [0u8; 24 + REQUEST_LEN];
        v4[0] = 0x46;
        v4[24..].copy_from_slice(&request(false, 9, 5));
        v4[24] = ECHO_REPLY_V4;
        assert_eq!(reply_seq(false, &v4, 9), Some(5));
        assert_eq!(reply_seq(false, &v4[..30], 9), None, "truncated");
        assert_eq!(reply_seq(false, &[], 9), None);
    }
}
