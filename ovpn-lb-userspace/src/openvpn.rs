//! OpenVPN's management interface: one connection per tunnel, held open,
//! reporting the process's state (CONNECTED, RECONNECTING, EXITING, ...).
//! TCP or a unix socket (which file permissions can restrict to root), with
//! OpenVPN's password prompt answered from a file. A hostile or stuck peer
//! cannot hold the loader: lines are bounded, every wait has a timeout, and
//! a connection that stops answering is dropped and made again.

use std::{io, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpStream, UnixStream},
    sync::mpsc::UnboundedSender,
    time::{Instant, sleep, timeout, timeout_at},
};

use crate::{
    config::{Management, ManagementTarget},
    tunnel::TunnelId,
};

/// Longest line accepted from the interface (its state lines are ~100 bytes).
pub const MAX_LINE: usize = 4096;
/// Pause between connection attempts.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the state is asked for, which also proves the peer alive...
const POLL_EVERY: Duration = Duration::from_secs(5);
/// ...and how long it has to say anything at all.
const SILENCE_LIMIT: Duration = Duration::from_secs(8);

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

/// A watcher's report: `Some(state)` on each state, `None` when the
/// connection is lost.
pub type Report = (TunnelId, Option<String>);

/// Watches tunnel `id`'s management interface until `events` is closed.
pub async fn watch(id: TunnelId, management: Management, events: UnboundedSender<Report>) {
    loop {
        let password = match &management.password_file {
            Some(path) => match tokio::fs::read_to_string(path).await {
                Ok(text) => Some(text.lines().next().unwrap_or_default().to_owned()),
                Err(e) => {
                    log::warn!("tunnel {id}: cannot read {}: {e}", path.display());
                    None
                }
            },
            None => None,
        };
        let result = match &management.target {
            ManagementTarget::Tcp(addr) => {
                match timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                    Ok(Ok(stream)) => Some(follow(id, stream, password, &events).await),
                    _ => None,
                }
            }
            ManagementTarget::Unix(path) => {
                match timeout(CONNECT_TIMEOUT, UnixStream::connect(path)).await {
                    Ok(Ok(stream)) => Some(follow(id, stream, password, &events).await),
                    _ => None,
                }
            }
        };
        if let Some(result) = result {
            if let Err(e) = result {
                log::debug!("tunnel {id}: management connection ended: {e}");
            }
            if events.send((id, None)).is_err() {
                return;
            }
        }
        if events.is_closed() {
            return;
        }
        sleep(RECONNECT_EVERY).await;
    }
}

/// Bounded line reader over the raw stream; also sees OpenVPN's password
/// prompt, which has no newline.
struct Lines<S> {
    stream: S,
    buf: Vec<u8>,
}

enum Item {
    Line(String),
    PasswordPrompt,
}

impl<S: AsyncRead + Unpin> Lines<S> {
    async fn next(&mut self) -> io::Result<Item> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Ok(Item::Line(
                    String::from_utf8_lossy(&line).trim_end().to_owned(),
                ));
            }
            if self.buf.starts_with(b"ENTER PASSWORD:") {
                self.buf.drain(..b"ENTER PASSWORD:".len());
                return Ok(Item::PasswordPrompt);
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a line longer than {MAX_LINE} bytes"),
                ));
            }
            let mut chunk = [0u8; 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

async fn follow<S: AsyncRead + AsyncWrite + Unpin>(
    id: TunnelId,
    stream: S,
    password: Option<String>,
    events: &UnboundedSender<Report>,
) -> io::Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = Lines {
        stream: read,
        buf: Vec::new(),
    };
    // With a password, OpenVPN takes the first line it reads as the password:
    // commands wait for its prompt (or for its greeting, if it asks none).
    let mut commands_sent = password.is_none();
    if commands_sent {
        write.write_all(b"state on\nstate\n").await?;
    }
    let mut next_poll = Instant::now() + POLL_EVERY;
    // Silence counts from the last thing heard, across our polls (a timeout
    // per wait would start over at every poll, which comes sooner).
    let mut heard = Instant::now();
    loop {
        let item = tokio::select! {
            item = timeout_at(heard + SILENCE_LIMIT, lines.next()) => item
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the management interface went silent"))??,
            () = tokio::time::sleep_until(next_poll) => {
                write.write_all(b"state\n").await?;
                next_poll = Instant::now() + POLL_EVERY;
                continue;
            }
        };
        heard = Instant::now();
        match item {
            Item::PasswordPrompt => {
                let Some(pw) = &password else {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "the management interface asks for a password: set management_password_file",
                    ));
                };
                write.write_all(format!("{pw}\n").as_bytes()).await?;
                write.write_all(b"state on\nstate\n").await?;
                commands_sent = true;
            }
            Item::Line(line) if line.starts_with("ERROR: bad password") => {
                log::warn!("tunnel {id}: the management interface refused the password");
                return Err(io::ErrorKind::PermissionDenied.into());
            }
            Item::Line(line) => {
                if !commands_sent {
                    write.write_all(b"state on\nstate\n").await?;
                    commands_sent = true;
                }
                if let Some(state) = parse_state(&line)
                    && events.send((id, Some(state))).is_err()
                {
                    return Ok(());
                }
            }
        }
    }
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

    /// A stand-in management server on a unix socket: asks for a password,
    /// then reports states; the watcher must answer and relay them.
    #[tokio::test]
    async fn unix_socket_with_password() {
        let dir = std::env::temp_dir().join(format!("ovpnlb-mgmt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("mgmt.sock");
        let pw = dir.join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"ENTER PASSWORD:").await.unwrap();
            let mut got = vec![0u8; 7];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"s3cret\n");
            s.write_all(b"SUCCESS: password is correct\r\n>STATE:1,CONNECTED,SUCCESS,,,,,\r\n")
                .await
                .unwrap();
            // A line without end, longer than the limit: the client must hang up.
            s.write_all(&vec![b'x'; MAX_LINE * 2]).await.unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watcher = tokio::spawn(watch(
            TunnelId::new(3),
            Management {
                target: ManagementTarget::Unix(sock),
                password_file: Some(pw),
            },
            tx,
        ));
        let first = timeout(Duration::from_secs(5), rx.recv()).await.unwrap();
        assert_eq!(first, Some((TunnelId::new(3), Some("CONNECTED".into()))));
        let second = timeout(Duration::from_secs(5), rx.recv()).await.unwrap();
        assert_eq!(
            second,
            Some((TunnelId::new(3), None)),
            "overlong line drops the connection"
        );
        server.await.unwrap();
        watcher.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A management interface that answers once, then reads our polls and
    /// says nothing more (a hung OpenVPN): the client hangs up once
    /// `SILENCE_LIMIT` has passed since the last line, polls or not.
    #[tokio::test(start_paused = true)]
    async fn a_silent_management_interface_is_dropped() {
        let dir = std::env::temp_dir().join(format!("ovpnlb-mgmt-silent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("mgmt.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b">STATE:1,CONNECTED,SUCCESS,,,,,\r\n")
                .await
                .unwrap();
            let mut polls = Vec::new();
            let _ = s.read_to_end(&mut polls).await;
            polls
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        let watcher = tokio::spawn(watch(
            TunnelId::new(0),
            Management {
                target: ManagementTarget::Unix(sock),
                password_file: None,
            },
            tx,
        ));
        let first = rx.recv().await;
        assert_eq!(first, Some((TunnelId::new(0), Some("CONNECTED".into()))));
        let second = timeout(Duration::from_mins(1), rx.recv())
            .await
            .expect("no hang-up within a minute of silence");
        assert_eq!(second, Some((TunnelId::new(0), None)), "silence drops it");
        let took = start.elapsed();
        assert!(
            took >= SILENCE_LIMIT && took < SILENCE_LIMIT + POLL_EVERY,
            "{took:?}"
        );
        watcher.abort();
        let polls = server.await.unwrap();
        assert!(
            String::from_utf8_lossy(&polls).matches("state\n").count() >= 2,
            "the client polled meanwhile"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
