//! QEMU guests that boot a given kernel over this machine's own tree, for
//! running the project's programs and tests on kernels other than the
//! running one. Any task can use it: give it a [`Kernel`] (an extracted
//! Debian kernel package, see `kernels`) and a shell script; the script runs
//! as root inside the guest, in the same directory as here, with the same
//! binaries, and its exit code comes back.
//!
//! The guest's root is the host's `/` shared read-only over 9p, under an
//! overlay whose upper layer is guest memory: the guest may write anywhere
//! and nothing reaches the host except through the run directory, shared
//! read-write at [`GUEST_RUN_DIR`]. The kernel's own modules are shared at
//! `/lib/modules/<release>`, so `modprobe` (and the kernel's own module
//! requests) find them. A tiny initramfs (busybox, and the modules that 9p
//! and the overlay need) mounts all that and hands over to the script.
//!
//! KVM is used where the processor offers hardware virtualization; a `/dev/kvm`
//! without it (a paravirtualized KVM such as PVM, which boots only kernels
//! built for it) gets emulation (TCG), which is slower but boots any kernel.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Host packages a guest needs: QEMU, a static busybox for the initramfs,
/// kmod (module dependencies here, `modprobe` in the guest), and gpg and
/// curl for Ubuntu's archive key.
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "gpg",
    "curl",
    "xz-utils",
    "zstd",
];

/// Where the run directory appears inside the guest.
pub const GUEST_RUN_DIR: &str = "/run/vm";
/// Directories a guest mounts afresh (tmpfs) over the host's tree: what
/// the host has there, the guest does not see.
const GUEST_OWN_DIRS: [&str; 2] = ["/run", "/tmp"];

/// Whether the guest sees the host's `dir`; why not, if not.
fn visible_in_guest(dir: &Path) -> Result<()> {
    if let Some(own) = GUEST_OWN_DIRS.iter().find(|d| dir.starts_with(d)) {
        bail!(
            "{} is under {own}, which a guest mounts afresh (its own tmpfs), so the guest cannot run there: use a checkout outside {own}",
            dir.display()
        );
    }
    Ok(())
}

/// Modules the initramfs loads (with their dependencies) when the kernel
/// does not have them built in: the virtio transport, 9p and the overlay.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// 9p message size: larger messages, fewer round trips per read.
const MSIZE: u32 = 512 * 1024;

/// A bootable kernel: an extracted kernel package.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `uname -r` of the kernel.
    pub release: String,
    /// The package's extracted tree (`boot/vmlinuz-<release>`,
    /// `lib/modules/<release>` with `modules.dep`).
    pub root: PathBuf,
}

impl Kernel {
    #[must_use]
    pub fn image(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.release))
    }

    #[must_use]
    pub fn modules(&self) -> PathBuf {
        self.root.join(format!("lib/modules/{}", self.release))
    }

    /// The files to `insmod`, in order, for `module` and what it depends
    /// on; none if it is built in. Asks the host's `modprobe`, which reads
    /// the tree's `modules.dep` (`depmod` makes it).
    fn load_order(&self, module: &str) -> Result<Vec<PathBuf>> {
        let out = Command::new("modprobe")
            .arg("-d")
            .arg(&self.root)
            .args(["-S", &self.release, "--show-depends", module])
            .output()
            .context("running modprobe --show-depends (Debian package kmod)")?;
        if !out.status.success() {
            bail!(
                "{} has no module {module}: {}",
                self.release,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("insmod "))
            .map(|p| PathBuf::from(p.trim()))
            .collect())
    }
}

/// How QEMU runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Emulation: every instruction translated; several times slower.
    Tcg,
}

impl Accel {
    /// KVM where `/dev/kvm` opens and the processor has VMX or SVM;
    /// emulation otherwise, with the reason.
    #[must_use]
    pub fn choose() -> (Self, &'static str) {
        let hardware = fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        });
        let kvm = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        match (kvm, hardware) {
            (true, true) => (Accel::Kvm, "KVM"),
            (true, false) => (
                Accel::Tcg,
                "emulated (TCG): /dev/kvm is here but the processor offers no VMX/SVM, so this KVM (paravirtualized, e.g. PVM) boots only kernels built for it",
            ),
            (false, _) => (Accel::Tcg, "emulated (TCG): no usable /dev/kvm"),
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => &["-accel", "tcg,thread=multi,tb-size=1024", "-cpu", "max"],
        }
    }
}

/// One guest: a kernel, its size, and where its files go.
pub struct Guest<'a> {
    pub kernel: &'a Kernel,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    /// The guest is killed past this.
    pub timeout: Duration,
    /// Modules loaded before the script runs (`modprobe`).
    pub modules: &'a [&'a str],
    /// The run directory: the initramfs, the console log, the script and
    /// whatever it writes to [`GUEST_RUN_DIR`]. Emptied first.
    pub dir: PathBuf,
    /// Working directory of the script.
    pub cwd: PathBuf,
    /// Environment of the script (besides `PATH` and `HOME`).
    pub env: Vec<(String, String)>,
}

/// How a guest ended.
#[derive(Debug)]
pub struct Outcome {
    /// The script's exit code; `None` if it never finished (the guest
    /// failed to boot, crashed, or ran out of time).
    pub code: Option<i32>,
    /// Everything the guest printed.
    pub console: PathBuf,
    pub elapsed: Duration,
}

impl Guest<'_> {
    /// Boots the guest, runs `script` (POSIX shell) in it, and powers it
    /// off. Every console line is handed to `echo` as it comes.
    ///
    /// # Errors
    /// If the guest cannot be prepared or QEMU cannot start; a script that
    /// fails or a guest that dies is an [`Outcome`], not an error.
    pub fn run(&self, script: &str, mut echo: impl FnMut(&str)) -> Result<Outcome> {
        visible_in_guest(&self.cwd)?;
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir)
                .with_context(|| format!("emptying {}", self.dir.display()))?;
        }
        fs::create_dir_all(&self.dir)?;
        let initramfs = self.dir.join("initramfs.cpio");
        fs::write(&initramfs, self.initramfs()?).context("writing the initramfs")?;
        fs::write(self.dir.join("stage2.sh"), self.stage2())?;
        fs::write(self.dir.join("script.sh"), script)?;
        let console = self.dir.join("console.log");
        let mut log = fs::File::create(&console)?;

        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(self.accel.args())
            .args(["-machine", "q35", "-nodefaults", "-no-reboot"])
            .args(["-display", "none", "-serial", "stdio", "-nic", "none"])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .arg("-kernel")
            .arg(self.kernel.image())
            .arg("-initrd")
            .arg(&initramfs)
            .args([
                "-append",
                "console=ttyS0 rdinit=/init panic=-1 loglevel=4 net.ifnames=0",
            ])
            .args(["-virtfs", &share("/", "host", true)])
            .args(["-virtfs", &share(self.kernel.modules(), "kmods", true)])
            .args(["-virtfs", &share(&self.dir, "run", false)])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = qemu
            .spawn()
            .context("starting qemu-system-x86_64 (Debian package qemu-system-x86)")?;
        let (tx, rx) = mpsc::channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                    let text = String::from_utf8_lossy(&line);
                    if tx.send(text.trim_end_matches('\r').to_owned()).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let deadline = started + self.timeout;
        let mut timed_out = false;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    writeln!(log, "{line}")?;
                    echo(&line);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() > deadline && !timed_out {
                timed_out = true;
                writeln!(log, "vm: timed out after {:?}; killing QEMU", self.timeout)?;
                echo(&format!(
                    "vm: timed out after {:?}; killing QEMU",
                    self.timeout
                ));
                // Our own child, by its PID.
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        let code = fs::read_to_string(self.dir.join("status"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Ok(Outcome {
            code: if timed_out { None } else { code },
            console,
            elapsed: started.elapsed(),
        })
    }

    /// busybox, the boot modules (decompressed: busybox's `insmod` takes
    /// plain ELF) and the first stage, as a newc cpio archive.
    fn initramfs(&self) -> Result<Vec<u8>> {
        let mut cpio = Cpio::default();
        for dir in [
            "bin", "dev", "modules", "proc", "sys", "lower", "rw", "newroot",
        ] {
            cpio.dir(dir);
        }
        cpio.node("dev/console", 0o020_600, (5, 1));
        let busybox = fs::read("/bin/busybox")
            .context("reading /bin/busybox (Debian package busybox-static)")?;
        cpio.file("bin/busybox", 0o100_755, &busybox);
        let mut loaded: Vec<PathBuf> = Vec::new();
        for module in BOOT_MODULES {
            for path in self.kernel.load_order(module)? {
                if !loaded.contains(&path) {
                    loaded.push(path);
                }
            }
        }
        for (k, path) in loaded.iter().enumerate() {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split(".ko").next())
                .unwrap_or("module");
            cpio.file(
                &format!("modules/{k:02}-{name}.ko"),
                0o100_644,
                &decompressed(path)?,
            );
        }
        cpio.file("init", 0o100_755, self.stage1().as_bytes());
        Ok(cpio.finish())
    }

    /// The initramfs's `/init`: modules, the host's tree under an overlay,
    /// the kernel's modules and the run directory, then stage 2 on the new
    /// root.
    fn stage1(&self) -> String {
        let release = &self.kernel.release;
        let p9 = format!("trans=virtio,version=9p2000.L,msize={MSIZE}");
        format!(
            r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() {{ echo "vm: $*"; echo o > /proc/sysrq-trigger; sleep 60; }}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in /modules/*.ko; do insmod "$m" || fail "insmod $m failed"; done
mount -t 9p -o {p9},ro,cache=loose host /lower || fail "mounting the host's tree failed"
mount -t tmpfs -o mode=0755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work root /newroot || fail "overlay failed"
mkdir -p /newroot/lib/modules/{release}
mount -t 9p -o {p9},ro kmods /newroot/lib/modules/{release} || fail "mounting the modules failed"
mount -t tmpfs -o mode=0755 run /newroot/run
mount -t tmpfs -o mode=1777 tmp /newroot/tmp
mkdir -p /newroot{GUEST_RUN_DIR}
mount -t 9p -o {p9} run /newroot{GUEST_RUN_DIR} || fail "mounting the run directory failed"
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh {GUEST_RUN_DIR}/stage2.sh
fail "switch_root failed"
"#
        )
    }

    /// Stage 2, PID 1 on the host's tree: the pseudo file systems the
    /// project uses, loopback, the modules, then the script; its exit code
    /// goes to `status` and the guest powers off.
    fn stage2(&self) -> String {
        let mut env = String::new();
        for (k, v) in &self.env {
            let _ = writeln!(env, "export {k}='{}'", v.replace('\'', r"'\''"));
        }
        let modules = self.modules.join(" ");
        let cwd = self.cwd.display();
        format!(
            r#"#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
{env}mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs shm /dev/shm
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ip link set lo up
for m in {modules}; do modprobe "$m" || echo "vm: modprobe $m failed"; done
echo "vm: $(uname -r) up; running the script"
cd {cwd} && sh {GUEST_RUN_DIR}/script.sh
echo $? > {GUEST_RUN_DIR}/status
sync
# At once, from memory: the host's tree goes with the guest.
exec /bin/busybox poweroff -f
"#
        )
    }
}

/// A `-virtfs` argument sharing `path` as `tag`.
fn share(path: impl AsRef<Path>, tag: &str, readonly: bool) -> String {
    let mut s = format!(
        "local,path={},mount_tag={tag},security_model=none,multidevs=remap",
        path.as_ref().display()
    );
    if readonly {
        s.push_str(",readonly=on");
    }
    s
}

/// A module file's ELF contents (Debian compresses modules with xz or zstd
/// since 6.x).
fn decompressed(path: &Path) -> Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => return fs::read(path).with_context(|| format!("reading {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!("{tool} could not decompress {}", path.display());
    }
    Ok(out.stdout)
}

/// A newc ("070701") cpio archive, the format the kernel unpacks as its
/// initramfs.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.inode += 1;
        let name_len = u32::try_from(name.len() + 1).expect("short names");
        let size = u32::try_from(data.len()).expect("an initramfs file under 4 GiB");
        let nlink = if mode & 0o040_000 != 0 { 2 } else { 1 };
        let fields = [
            self.inode, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name_len, 0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for f in fields {
            self.bytes.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, mode, (0, 0), data);
    }

    fn node(&mut self, name: &str, mode: u32, rdev: (u32, u32)) {
        self.entry(name, mode, rdev, &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_working_directory_the_guest_mounts_over_is_refused() {
        for dir in ["/tmp/ci-1234", "/run/user/0/w"] {
            let e = visible_in_guest(Path::new(dir)).unwrap_err().to_string();
            assert!(e.contains("use a checkout outside"), "{dir}: {e}");
        }
        for dir in ["/work/main", "/tmpfoo/x", "/home/u/runner"] {
            assert!(visible_in_guest(Path::new(dir)).is_ok(), "{dir}");
        }
    }

    #[test]
    fn cpio_entries_are_newc_and_aligned() {
        let mut c = Cpio::default();
        c.file("init", 0o100_755, b"#!/bin/sh\n");
        let bytes = c.finish();
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        // Header (110) + "init\0" padded to 116, then 10 data bytes padded to 12.
        assert_eq!(&bytes[110..114], b"init");
        assert_eq!(&bytes[116..126], b"#!/bin/sh\n");
        assert_eq!(&bytes[128..134], b"070701");
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
