//! The loader's log: one line per event on standard error, `ovpn-lb: ...`,
//! for journald or a terminal. The level comes from `OVPN_LB_LOG` (`error`,
//! `warn`, `info`, `debug`; default `info`). Messages of the BPF programs
//! (aya-log, rare paths only) arrive here too.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let from_bpf = record.target().starts_with("ovpn_lb_ebpf");
        let prefix = match (record.level(), from_bpf) {
            (_, true) => "bpf: ",
            (Level::Error, _) => "error: ",
            (Level::Warn, _) => "warning: ",
            (Level::Debug | Level::Trace, _) => "debug: ",
            (Level::Info, _) => "",
        };
        eprintln!("ovpn-lb: {prefix}{}", record.args());
    }

    fn flush(&self) {}
}

/// Installs the logger; a second call does nothing.
pub fn init() {
    let level = match std::env::var("OVPN_LB_LOG").as_deref() {
        Ok("error") => LevelFilter::Error,
        Ok("warn") => LevelFilter::Warn,
        Ok("debug") => LevelFilter::Debug,
        Ok("trace") => LevelFilter::Trace,
        _ => LevelFilter::Info,
    };
    if log::set_logger(&Stderr).is_ok() {
        log::set_max_level(level);
    }
}
