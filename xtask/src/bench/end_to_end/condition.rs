//! The conditions one TCP flow is measured under: what limits each tunnel.

use ovpn_lb_tests::lab::Options;

use crate::bench::BenchArgs;

/// What limits the tunnels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Condition {
    /// Every OpenVPN process, on both gateways, held to --cpu-quota percent
    /// of a CPU: single-threaded OpenVPN on a busy core.
    Quota,
    /// Gateway A's OpenVPN processes only at --cpu-quota.
    QuotaA,
    /// Every tunnel shaped to --shaper bytes/s by both gateways' OpenVPN
    /// (gateway A's only with --one-sided-shaping): equal tunnels.
    Shaped,
    /// Tunnel k shaped to the k-th of --unequal-shapers: unequal tunnels.
    Unequal,
    /// Tunnels shaped as in `shaped`, tunnel k's WAN path delayed by the
    /// k-th of --path-delays ms each way (a UDP relay on the WAN): bonded
    /// links of different kinds.
    Delay,
}

impl Condition {
    /// Every condition, as `--matrix` runs them.
    pub const ALL: [Self; 5] = [
        Self::Quota,
        Self::QuotaA,
        Self::Shaped,
        Self::Unequal,
        Self::Delay,
    ];

    /// The name `--conditions` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Quota => "quota",
            Self::QuotaA => "quota-a",
            Self::Shaped => "shaped",
            Self::Unequal => "unequal",
            Self::Delay => "delay",
        }
    }

    /// A letter for its labs' namespace names.
    pub fn letter(self) -> char {
        match self {
            Self::Quota => 'q',
            Self::QuotaA => 'a',
            Self::Shaped => 's',
            Self::Unequal => 'u',
            Self::Delay => 'd',
        }
    }

    /// What it is, for the report.
    pub fn describe(self, args: &BenchArgs) -> String {
        let settings = format!(
            "; shaping on {}; OpenVPN {}",
            if args.one_sided_shaping {
                "gateway A only"
            } else {
                "both gateways"
            },
            if args.tuned_openvpn {
                "with the generator's txqueuelen, sndbuf and rcvbuf"
            } else {
                "with its own queue and socket buffer defaults"
            }
        );
        format!("{}{settings}", self.what(args))
    }

    fn what(self, args: &BenchArgs) -> String {
        let q = args.cpu_quota;
        match self {
            Self::Quota => format!(
                "each OpenVPN process (both gateways) held to {q}% of a CPU (cgroup cpu quota, 10 ms period)"
            ),
            Self::QuotaA => format!(
                "gateway A's OpenVPN processes held to {q}% of a CPU (cgroup cpu quota, 10 ms period), gateway B's free"
            ),
            Self::Shaped => format!(
                "each tunnel shaped to {} B/s by OpenVPN (`--shaper`): equal tunnels",
                thousands(args.shaper)
            ),
            Self::Unequal => format!(
                "unequal tunnels: OpenVPN `--shaper` {} B/s on tun0, tun1, ... (at N tunnels, the first N)",
                list(&args.unequal_shapers, thousands)
            ),
            Self::Delay => format!(
                "each tunnel shaped to {} B/s, its WAN path delayed {} ms each way on tun0, tun1, ... (a UDP relay; at N tunnels, the first N); the loaders' path_delay_max_ms: {}",
                thousands(args.shaper),
                list(&args.path_delays, |d| d.to_string()),
                args.path_delay_max_ms.map_or_else(
                    || format!(
                        "{} (default)",
                        ovpn_lb::config::file::DEFAULT_PATH_DELAY_MAX_MS
                    ),
                    |m| m.to_string()
                )
            ),
        }
    }

    /// What sets tunnel `k` apart, for a single-tunnel row of a condition
    /// whose tunnels differ.
    pub fn tunnel_note(self, args: &BenchArgs, k: usize) -> String {
        let nth = |v: &[u32]| v.get(k).or(v.last()).copied();
        match self {
            Self::Delay => {
                nth(&args.path_delays).map_or_else(|| "?".to_owned(), |d| format!("{d} ms"))
            }
            _ => nth(&args.unequal_shapers)
                .map_or_else(|| "?".to_owned(), |r| format!("{} B/s", thousands(r))),
        }
    }

    /// Whether the tunnels differ, so that the baseline is every single
    /// tunnel's goodput rather than one tunnel's.
    pub fn unequal(self) -> bool {
        matches!(self, Self::Unequal | Self::Delay)
    }

    /// The lab options every lab of this condition shares (`tunnels` of
    /// them, wire segments on; each run sets the hosts).
    pub fn options(self, args: &BenchArgs, tunnels: usize) -> Options {
        let (quota, a_only, shaper, delays) = match self {
            Self::Quota => (Some(args.cpu_quota), false, Vec::new(), Vec::new()),
            Self::QuotaA => (Some(args.cpu_quota), true, Vec::new(), Vec::new()),
            Self::Shaped => (None, false, vec![args.shaper], Vec::new()),
            Self::Unequal => (None, false, args.unequal_shapers.clone(), Vec::new()),
            Self::Delay => (None, false, vec![args.shaper], args.path_delays.clone()),
        };
        Options {
            tunnels,
            cpu_quota_percent: quota,
            cpu_quota_a_only: a_only,
            shaper,
            shaper_both: !args.one_sided_shaping,
            path_delay_ms: delays,
            path_delay_max_ms: args.path_delay_max_ms,
            openvpn_defaults: !args.tuned_openvpn,
            wire_segments: true,
            ..Options::default()
        }
    }
}

fn list<T: Copy>(v: &[T], f: impl Fn(T) -> String) -> String {
    v.iter().map(|&x| f(x)).collect::<Vec<_>>().join(", ")
}

/// 1000000 as `1,000,000`.
pub fn thousands(n: u32) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
