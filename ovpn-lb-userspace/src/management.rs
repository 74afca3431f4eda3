//! `OpenVPN`'s management interface: a connection per tunnel that reports the
//! process's state (CONNECTED, RECONNECTING, EXITING, ...). The connection is
//! held and re-made when it drops; while it is down, health falls back to
//! link events.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    sync::mpsc::Sender,
    thread,
    time::Duration,
};

/// Pause between connection attempts.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What a management line says about the state, if anything.
///
/// Real-time notifications look like `>STATE:1700000000,CONNECTED,SUCCESS,...`;
/// the reply to the `state` command is the same without the `>STATE:` prefix.
#[must_use]
pub fn parse_state(line: &str) -> Option<String> {
    let line = line.trim_end();
    let body = line.strip_prefix(">STATE:").unwrap_or(line);
    let mut fields = body.split(',');
    let time = fields.next()?;
    let state = fields.next()?;
    let is_state = !time.is_empty()
        && time.bytes().all(|b| b.is_ascii_digit())
        && !state.is_empty()
        && state.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
    is_state.then(|| state.to_owned())
}

/// Events a watcher sends: `Some(state)` on each state, `None` when the
/// connection is lost.
pub type Report = (usize, Option<String>);

/// Watches tunnel `k`'s management interface on a thread of its own, forever.
///
/// # Panics
/// If the thread cannot be spawned.
pub fn watch(k: usize, addr: SocketAddr, events: Sender<Report>) {
    thread::Builder::new()
        .name(format!("mgmt-{k}"))
        .spawn(move || {
            loop {
                if let Ok(stream) = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                    let _ = follow(k, stream, &events);
                    if events.send((k, None)).is_err() {
                        return;
                    }
                }
                thread::sleep(RECONNECT_EVERY);
            }
        })
        .expect("spawn a management thread");
}

fn follow(k: usize, mut stream: TcpStream, events: &Sender<Report>) -> std::io::Result<()> {
    stream.write_all(b"state on\nstate\n")?;
    for line in BufReader::new(stream).lines() {
        if let Some(state) = parse_state(&line?)
            && events.send((k, Some(state))).is_err()
        {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_notifications_and_replies() {
        assert_eq!(
            parse_state(">STATE:1700000000,CONNECTED,SUCCESS,10.8.0.1,192.0.2.1,1194,,\r\n")
                .as_deref(),
            Some("CONNECTED")
        );
        assert_eq!(
            parse_state("1700000001,RECONNECTING,ping-restart,,,,,").as_deref(),
            Some("RECONNECTING")
        );
        assert_eq!(
            parse_state(">STATE:1700000002,EXITING,SIGTERM,,,,,").as_deref(),
            Some("EXITING")
        );
        assert_eq!(
            parse_state(">STATE:1700000003,GET_CONFIG,,,,,,").as_deref(),
            Some("GET_CONFIG")
        );
    }

    #[test]
    fn ignores_everything_else() {
        for line in [
            ">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info",
            "SUCCESS: real-time state notification set to ON",
            "END",
            ">LOG:1700000000,I,Initialization Sequence Completed",
            "",
        ] {
            assert_eq!(parse_state(line), None, "{line}");
        }
    }
}
