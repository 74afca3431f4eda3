//! `ovpn-lb.service`, written once: the Debian package installs the generic
//! unit ([`packaged`]) and `ovpn-lb generate` writes each site's own, which
//! also pulls in the site's tunnels. Both are [`Unit::render`] of this one
//! text; only the values below differ.

use std::{fmt::Write as _, path::Path};

use super::{layout, plan::DEFAULT_BINARY};
use crate::cli::DEFAULT_CONFIG;

/// Where the package installs the generic unit. A site's unit from
/// `ovpn-lb generate` goes to `/etc/systemd/system/` ([`layout::UNIT`]) and
/// takes precedence over it.
pub const PACKAGED_UNIT: &str = "usr/lib/systemd/system/ovpn-lb.service";

/// What differs between one `ovpn-lb.service` and another.
#[derive(Clone, Debug)]
pub struct Unit<'a> {
    /// The first comment: who wrote the file and how it relates to others.
    pub origin: &'a str,
    pub description: &'a str,
    /// Units ovpn-lb starts after and pulls in: each tunnel's OpenVPN.
    pub tunnels: &'a [String],
    pub binary: &'a Path,
    pub config: &'a Path,
    /// OpenVPN's runtime directory: connecting to a management socket there
    /// needs write access.
    pub openvpn_run_dir: &'a Path,
}

impl Unit<'_> {
    /// The unit file: after the tunnels (it pulls them in), its
    /// configuration checked first, restarted on failure, with only the
    /// capabilities and paths loading BPF needs.
    #[must_use]
    pub fn render(&self) -> String {
        let mut t = String::new();
        for line in self.origin.lines() {
            let _ = writeln!(t, "# {line}");
        }
        let mut wants = vec!["network-online.target"];
        wants.extend(self.tunnels.iter().map(String::as_str));
        let wants = wants.join(" ");
        let (bin, config) = (self.binary.display(), self.config.display());
        let _ = write!(
            t,
            "[Unit]\n\
             Description={description}\n\
             Documentation=man:ovpn-lb(1) man:ovpn-lb-run(1) man:ovpn-lb-doctor(1)\n\
             Wants={wants}\n\
             After={wants}\n\
             \n\
             [Service]\n\
             Type=simple\n\
             ExecStartPre={bin} check --config {config}\n\
             ExecStart={bin} run --config {config}\n\
             # A stop leaves the datapath attached with its last schedule, so a restart\n\
             # drops nothing; `ovpn-lb detach` removes it.\n\
             Restart=on-failure\n\
             RestartSec=2s\n\
             # Loading and attaching BPF programs, netlink; the probes' packet and ICMP\n\
             # sockets (CAP_NET_RAW); /proc/kallsyms for the ring accounting where\n\
             # kernel.kptr_restrict hides it (CAP_SYSLOG). Not CAP_SYS_ADMIN: systemd\n\
             # mounts bpffs, and other programs on the devices go unnamed in the log.\n\
             CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_NET_RAW CAP_SYSLOG\n\
             NoNewPrivileges=yes\n\
             ProtectSystem=strict\n\
             ReadWritePaths=/sys/fs/bpf -{sockets}\n\
             RuntimeDirectory=ovpn-lb\n\
             RuntimeDirectoryPreserve=yes\n\
             ProtectHome=yes\n\
             PrivateTmp=yes\n\
             PrivateDevices=yes\n\
             ProtectKernelModules=yes\n\
             ProtectControlGroups=yes\n\
             ProtectClock=yes\n\
             ProtectHostname=yes\n\
             RestrictNamespaces=yes\n\
             RestrictRealtime=yes\n\
             RestrictSUIDSGID=yes\n\
             LockPersonality=yes\n\
             MemoryDenyWriteExecute=yes\n\
             SystemCallArchitectures=native\n\
             RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET\n\
             UMask=0077\n\
             LimitMEMLOCK=infinity\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n",
            description = self.description,
            sockets = self.openvpn_run_dir.display(),
        );
        t
    }
}

/// The generic unit of the Debian package: the packaged binary, the
/// default configuration, no tunnels of its own (each joins when its device
/// appears).
#[must_use]
pub fn packaged() -> String {
    Unit {
        origin: "ovpn-lb, as the Debian package installs it. It runs ovpn-lb from\n\
                 /etc/ovpn-lb/ovpn-lb.toml. The unit `ovpn-lb generate` writes for a site\n\
                 (/etc/systemd/system/ovpn-lb.service) replaces this one and also starts\n\
                 each tunnel's OpenVPN (openvpn@tunK.service).",
        description: "ovpn-lb: the LAN sprayed over OpenVPN tunnels",
        tunnels: &[],
        binary: Path::new(DEFAULT_BINARY),
        config: Path::new(DEFAULT_CONFIG),
        openvpn_run_dir: &Path::new("/").join(layout::RUN_DIR),
    }
    .render()
}
