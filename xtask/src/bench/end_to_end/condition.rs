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
    /// Every tunnel shaped to --shaper bytes/s by gateway A's OpenVPN:
    /// equal tunnels.
    Shaped,
    /// Tunnel k shaped to the k-th of --unequal-shapers: unequal tunnels.
    Unequal,
}

impl Condition {
    /// The name `--conditions` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Quota => "quota",
            Self::QuotaA => "quota-a",
            Self::Shaped => "shaped",
            Self::Unequal => "unequal",
        }
    }

    /// A letter for its labs' namespace names.
    pub fn letter(self) -> char {
        match self {
            Self::Quota => 'q',
            Self::QuotaA => 'a',
            Self::Shaped => 's',
            Self::Unequal => 'u',
        }
    }

    /// What it is, for the report.
    pub fn describe(self, args: &BenchArgs) -> String {
        let q = args.cpu_quota;
        match self {
            Self::Quota => format!(
                "each OpenVPN process (both gateways) held to {q}% of a CPU (cgroup cpu quota, 10 ms period)"
            ),
            Self::QuotaA => format!(
                "gateway A's OpenVPN processes held to {q}% of a CPU (cgroup cpu quota, 10 ms period), gateway B's free"
            ),
            Self::Shaped => format!(
                "each tunnel shaped to {} B/s by gateway A's OpenVPN (`--shaper`): equal tunnels",
                thousands(args.shaper)
            ),
            Self::Unequal => format!(
                "unequal tunnels: gateway A's OpenVPN `--shaper` {} B/s on tun0, tun1, ... (at N tunnels, the first N)",
                args.unequal_shapers
                    .iter()
                    .map(|&r| thousands(r))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Whether the tunnels differ, so that the baseline is every single
    /// tunnel's goodput rather than one tunnel's.
    pub fn unequal(self) -> bool {
        self == Self::Unequal
    }

    /// Whether the modes are also measured on GSO aggregates (wire segments
    /// off): where the tunnels are CPU-bound, the CPU that segments cost
    /// matters.
    pub fn with_aggregates(self) -> bool {
        matches!(self, Self::Quota | Self::QuotaA)
    }

    /// The lab options every lab of this condition shares (`tunnels` of
    /// them, wire segments on).
    pub fn options(self, args: &BenchArgs, tunnels: usize) -> Options {
        let (quota, a_only, shaper) = match self {
            Self::Quota => (Some(args.cpu_quota), false, Vec::new()),
            Self::QuotaA => (Some(args.cpu_quota), true, Vec::new()),
            Self::Shaped => (None, false, vec![args.shaper]),
            Self::Unequal => (None, false, args.unequal_shapers.clone()),
        };
        Options {
            tunnels,
            cpu_quota_percent: quota,
            cpu_quota_a_only: a_only,
            shaper,
            wire_segments: true,
            ..Options::default()
        }
    }
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
