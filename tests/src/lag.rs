//! The machine's own scheduling lag, measured beside a timing check.
//!
//! A bound the loader keeps on a quiet machine (a tunnel out of the rotation
//! within the detection time) is stretched on a loaded one by as much as any
//! runnable thread waits for a CPU: a 2-core CI machine that delays the test's
//! threads delays the loader's too. [`Lag`] runs a thread that sleeps a short
//! tick over and over and keeps how late it woke at worst; a check compares
//! the time it measured, less that lateness, with its bound, and says both.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// How long the watching thread sleeps between looks at the clock.
const TICK: Duration = Duration::from_millis(2);

/// A running watch of this machine's scheduling lag.
pub struct Lag {
    worst_ns: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Lag {
    /// Starts watching.
    #[must_use]
    pub fn watch() -> Self {
        let worst_ns = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (worst_ns, stop) = (Arc::clone(&worst_ns), Arc::clone(&stop));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let asleep = Instant::now();
                    thread::sleep(TICK);
                    let late = asleep.elapsed().saturating_sub(TICK);
                    let late = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX);
                    worst_ns.fetch_max(late, Ordering::Relaxed);
                }
            })
        };
        Self {
            worst_ns,
            stop,
            thread: Some(thread),
        }
    }

    /// The worst lateness since the last call (or the start), and a fresh
    /// start for the next.
    #[must_use]
    pub fn take(&self) -> Duration {
        Duration::from_nanos(self.worst_ns.swap(0, Ordering::Relaxed))
    }
}

impl Drop for Lag {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
