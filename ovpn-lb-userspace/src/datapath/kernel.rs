//! What the running kernel offers the datapath, found out at start, and
//! the fallbacks that follow: the loader logs them, `status` and `doctor`
//! show them, the metrics export them, and `ovpn-lb kernel` prints them.
//!
//! - tc programs attach through tcx (Linux 6.6+) or legacy tc filters
//!   ([`TcHook`]);
//! - `bpf_l4_csum_replace` takes `BPF_F_IPV6` from Linux 6.16; before, the
//!   tc programs call it again without the flag (decided per call in the
//!   datapath; reported here from the version);
//! - packet spray's ring accounting may fail to attach: round robin then
//!   (the daemon decides; see `run::daemon`);
//! - a kernel whose verifier refuses the programs is refused at start, with
//!   its version and the helper it lacks named.

use std::{fmt, fs};

use ovpn_lb_common::queue::RingHooks;
use serde::{Deserialize, Serialize};

use super::{attach::TcHook, rings};

/// The oldest kernel ovpn-lb has been seen to work on (`cargo xtask kernels`).
pub const OLDEST_WORKING: &str = "5.15";

/// `BPF_F_IPV6` for `bpf_l4_csum_replace` came with this version.
const CSUM_IPV6_FLAG: (u32, u32) = (6, 16);

/// The running kernel's release (`uname -r`).
#[must_use]
pub fn release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
}

/// `(major, minor)` of a release string such as `6.1.0-57-amd64`.
#[must_use]
pub fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// What the loader found and chose, as the state file records it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub release: String,
    /// "tcx" or "legacy-tc".
    pub tc_hook: String,
    /// Packet spray's ring accounting runs.
    pub ring_accounting: bool,
    /// Each fallback in force, in words, with its reason.
    pub fallbacks: Vec<Fallback>,
}

/// Every fallback's name (its metric label), in force or not: the metrics
/// say 0 for the ones not in force, so an alert can watch each.
pub const FALLBACKS: [&str; 4] = ["legacy_tc", "round_robin", "csum_retry", "no_xdp"];

/// A feature the kernel lacks and what ovpn-lb does instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fallback {
    /// Metric label: one of [`FALLBACKS`].
    pub name: String,
    pub what: String,
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

impl Report {
    /// The report for this kernel with `hook` chosen; the ring accounting
    /// is added by whoever tries it ([`Report::accounting`]).
    #[must_use]
    pub fn new(hook: TcHook, hook_reason: &str, xdp_unavailable: Option<&str>) -> Self {
        let release = release();
        let mut fallbacks = Vec::new();
        if let Some(why) = xdp_unavailable {
            fallbacks.push(Fallback {
                name: "no_xdp".into(),
                what: format!("no XDP hook: {why}; tc carries everything"),
            });
        }
        if hook == TcHook::Legacy {
            fallbacks.push(Fallback {
                name: "legacy_tc".into(),
                what: format!(
                    "tc programs attach as cls_bpf filters on a clsact qdisc ({hook_reason})"
                ),
            });
        }
        if !csum_ipv6_flag(&release) {
            fallbacks.push(Fallback {
                name: "csum_retry".into(),
                what: "IPv6 checksums: bpf_l4_csum_replace refuses BPF_F_IPV6 before Linux 6.16, so the tc programs call it again without the flag".into(),
            });
        }
        Self {
            release,
            tc_hook: hook.name().into(),
            ring_accounting: false,
            fallbacks,
        }
    }

    /// Records whether the ring accounting runs; `why_not` is the reason
    /// packet spray walks the round-robin slots instead.
    pub fn accounting(&mut self, running: bool, why_not: Option<&str>) {
        self.ring_accounting = running;
        self.fallbacks.retain(|f| f.name != "round_robin");
        if let Some(why) = why_not {
            self.fallbacks.push(Fallback {
                name: "round_robin".into(),
                what: format!("packet spray sprays round robin: {why}"),
            });
        }
    }

    /// Logs each fallback, once, at start.
    pub fn log(&self) {
        log::info!(
            "kernel {}: tc programs attach through {}",
            self.release,
            self.tc_hook
        );
        for f in &self.fallbacks {
            log::warn!("kernel {}: {}", self.release, f.what);
        }
    }
}

/// Whether this release takes `BPF_F_IPV6`.
#[must_use]
pub fn csum_ipv6_flag(release: &str) -> bool {
    version(release).is_some_and(|v| v >= CSUM_IPV6_FLAG)
}

/// Why packet spray's ring accounting cannot run here, if it cannot: it
/// reads kernel memory at offsets from BTF and tells tun functions by
/// their addresses. Which hooks run is known only once they are tried
/// ([`ring_hooks_blocker`] names the sets this kernel lacks).
#[must_use]
pub fn ring_accounting_blocker() -> Option<String> {
    rings::kernel_layout().err().map(|e| format!("{e:#}"))
}

/// Why ring hooks `h` cannot run on this kernel, if known before trying:
/// the tracepoint sets tell OpenVPN's reads by `consume_skb`'s location
/// argument (Linux 6.3+); `fexit` on `tun_do_read` needs none.
#[must_use]
pub fn ring_hooks_blocker(h: RingHooks) -> Option<String> {
    let release = release();
    (h != RingHooks::Fexit && version(&release).is_some_and(|v| v < (6, 3))).then(|| {
        format!("Linux {release}'s consume_skb tracepoint has no location argument (6.3+)")
    })
}

/// Helpers the programs call that came late, by number (the verifier of
/// a kernel that lacks one knows only the number).
const LATE_HELPERS: &[(u32, &str)] = &[
    (163, "bpf_check_mtu (Linux 5.12)"),
    (189, "bpf_xdp_load_bytes (Linux 5.18)"),
];

/// Turns the kernel's refusal of a BPF program into the reason ovpn-lb
/// cannot run here: the kernel's version, the helper it lacks or else the
/// verifier's last words, and the oldest kernel known to work.
#[must_use]
pub fn refusal(program: &str, error: &str) -> String {
    format!(
        "Linux {} refused BPF program {program}{}; ovpn-lb runs on Linux {OLDEST_WORKING} or later",
        release(),
        why_refused(error)
    )
}

/// Why the XDP hook is missing where the verifier refuses one of its
/// programs (the tc programs passed): the kernel, the program, the
/// verifier's words.
#[must_use]
pub fn xdp_refusal(program: &str, error: &str) -> String {
    format!(
        "Linux {}'s verifier refuses the XDP program {program}{}",
        release(),
        why_refused(error)
    )
}

/// The helper a refused program lacks, or else the verifier's last words,
/// as a tail for a sentence ("" if the error says neither).
fn why_refused(error: &str) -> String {
    // Newer verifiers name the helper ("unknown func bpf_check_mtu#163"),
    // older ones only number it ("invalid func unknown#163").
    let named = error
        .split("unknown func ")
        .nth(1)
        .and_then(|rest| rest.split('#').next())
        .map(str::to_owned);
    let numbered = error
        .split("invalid func unknown#")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u32>()
                .ok()
        })
        .map(|id| {
            LATE_HELPERS
                .iter()
                .find(|(n, _)| *n == id)
                .map_or_else(|| format!("#{id}"), |(_, name)| (*name).to_owned())
        });
    named
        .or(numbered)
        .map(|helper| format!(": it lacks the helper {helper}"))
        .or_else(|| {
            // The verifier's verdict: the words before its statistics, not
            // the instructions it walked.
            let lines: Vec<&str> = error.lines().map(str::trim).collect();
            let end = lines
                .iter()
                .position(|l| l.starts_with("verification time") || l.starts_with("processed "))?;
            let words: Vec<&str> = lines[..end]
                .iter()
                .rev()
                .take_while(|l| {
                    !l.is_empty()
                        && !l.starts_with(';')
                        && !l.starts_with(|c: char| c.is_ascii_digit())
                })
                .copied()
                .collect();
            (!words.is_empty()).then(|| {
                let mut words = words;
                words.reverse();
                format!(" (verifier: {})", words.join("; "))
            })
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_distribution_releases() {
        assert_eq!(version("6.1.0-57-amd64"), Some((6, 1)));
        assert_eq!(version("6.12.117+deb13-amd64"), Some((6, 12)));
        assert_eq!(version("6.18.44-fc-v1272"), Some((6, 18)));
        assert_eq!(version("5.10.0-35-amd64"), Some((5, 10)));
        assert_eq!(version("garbage"), None);
        assert!(!csum_ipv6_flag("6.12.117+deb13-amd64"));
        assert!(csum_ipv6_flag("6.16.3+deb13-amd64"));
        assert!(csum_ipv6_flag("7.0.4"));
    }

    #[test]
    fn a_refusal_names_the_missing_helper() {
        let verifier = "load program: permission denied\n0: (85) call bpf_check_mtu#163\nunknown func bpf_check_mtu#163\nprocessed 12 insns";
        let r = refusal("lan_ingress", verifier);
        assert!(
            r.contains("refused BPF program lan_ingress: it lacks the helper bpf_check_mtu;"),
            "{r}"
        );
        assert!(r.contains("runs on Linux 5.15 or later"), "{r}");
        assert!(!refusal("x", "something else").contains("lacks"));
        let old = "0: (85) call unknown#163\ninvalid func unknown#163\nprocessed 9 insns";
        assert!(
            refusal("lan_ingress", old).contains("it lacks the helper bpf_check_mtu (Linux 5.12);"),
            "{}",
            refusal("lan_ingress", old)
        );
        let walked = "Verifier output: Validating f() func#2...\n1826: (0f) r1 += r9\n1827: (71) r1 = *(u8 *)(r1 +0)\ninvalid access to map value, value_size=4680 off=4680 size=1\nR1 min value is outside of the allowed memory range\nverification time 3079142 usec\nprocessed 28205 insns";
        let r = refusal("lan_ingress", walked);
        assert!(
            r.ends_with("refused BPF program lan_ingress (verifier: invalid access to map value, value_size=4680 off=4680 size=1; R1 min value is outside of the allowed memory range); ovpn-lb runs on Linux 5.15 or later"),
            "{r}"
        );
    }

    #[test]
    fn a_refused_xdp_program_is_a_missing_hook_not_a_refused_kernel() {
        // Ubuntu 24.04's 6.8 (6.8.0-151-generic) on lan_ingress_xdp.
        let walked = "Verifier output: 1204: (bf) r4 = r2\n1205: (0f) r4 += r1\nR4 min value is negative, either use unsigned or 'var &= const'\nverification time 8123456 usec\nprocessed 40213 insns";
        let r = xdp_refusal("lan_ingress_xdp", walked);
        assert!(
            r.ends_with("'s verifier refuses the XDP program lan_ingress_xdp (verifier: R4 min value is negative, either use unsigned or 'var &= const')"),
            "{r}"
        );
        assert!(!r.contains("runs on Linux"), "{r}");
    }

    #[test]
    fn fallbacks_follow_the_hook_and_the_accounting() {
        let mut r = Report::new(TcHook::Legacy, "no tcx", None);
        assert!(r.fallbacks.iter().any(|f| f.name == "legacy_tc"));
        r.accounting(false, Some("no BTF"));
        r.accounting(false, Some("still no BTF"));
        let rr: Vec<_> = r
            .fallbacks
            .iter()
            .filter(|f| f.name == "round_robin")
            .collect();
        assert_eq!(rr.len(), 1);
        assert!(rr[0].what.contains("still no BTF"));
        r.accounting(true, None);
        assert!(r.fallbacks.iter().all(|f| f.name != "round_robin"));
        assert!(r.ring_accounting);
    }
}
