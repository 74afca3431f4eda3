//! One loader per datapath: `run.lock` in the run directory, held (flock)
//! for the life of the process. A second `run` (or `detach`) takes over: it
//! asks the holder to stop, which leaves the datapath attached, and waits for
//! the lock. A `run` asks with SIGUSR1, a hand-over: the holder exits at
//! once and leaves its announcement for the new one to keep. `detach` asks
//! with SIGTERM, a stop: the holder withdraws its announcement and drains
//! first (`announce.drain_ms`).

use std::{
    fs::File,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{pins::Layout, status::State};

/// How long a takeover waits for the holder to exit.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);

fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a descriptor we own; it is released when `file` closes.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// How a holder is asked to go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// SIGUSR1: hand over to a new `run`, announcement and all.
    HandOver,
    /// SIGTERM: stop (withdraw, drain, exit).
    Stop,
}

/// Holds `run.lock` until dropped. If a `run` holds it, that one is asked to
/// go (`ask`) and this one takes over once it has gone. `who` names the
/// caller in messages ("run", "detach").
///
/// # Errors
/// If the holder cannot be identified or does not exit in time.
pub async fn acquire(layout: &Layout, who: &str, ask: Ask) -> Result<File> {
    let path = layout.lock_file();
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    if try_lock(&file) {
        return Ok(file);
    }
    // Signal the running loader our state file names; if none is named (one
    // is starting and has not written its state yet), wait and look again,
    // without signalling a PID that may be stale.
    let mut deadline = Instant::now() + TAKEOVER_TIMEOUT;
    let mut signalled = false;
    let mut said_waiting = false;
    while !try_lock(&file) {
        if !signalled {
            match State::read(layout)
                .ok()
                .filter(State::loader_alive)
                // (Never a PID a stale state file names and the system has
                // since given to another process.)
            {
                Some(s) => {
                    let (signal, name) = match ask {
                        Ask::HandOver => (libc::SIGUSR1, "SIGUSR1, a hand-over"),
                        Ask::Stop => (libc::SIGTERM, "SIGTERM"),
                    };
                    log::info!(
                        "{who}: stopping `ovpn-lb run` pid {} ({name}) to take over",
                        s.pid
                    );
                    // A stop drains first: wait for that too.
                    if ask == Ask::Stop {
                        deadline += s.announce.as_ref().map_or(Duration::ZERO, |a| {
                            Duration::from_millis(a.drain_ms)
                        });
                    }
                    // SAFETY: a signal to the live ovpn-lb our own state file names.
                    unsafe { libc::kill(libc::pid_t::try_from(s.pid)?, signal) };
                    signalled = true;
                }
                None if !said_waiting => {
                    log::info!(
                        "{who}: {} is held by a loader that is starting; waiting",
                        path.display()
                    );
                    said_waiting = true;
                }
                None => {}
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} is still held: another `ovpn-lb run` did not stop in time (check `ovpn-lb status`)",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(file)
}
