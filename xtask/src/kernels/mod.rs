//! `cargo xtask kernels`: the kernels operators run, each booted in a QEMU
//! guest over this tree (see `vm`), running what shows whether ovpn-lb
//! works there: what the loader detects in the kernel (`ovpn-lb kernel`),
//! the datapath fixtures, the loader tests and one lab flow through real
//! OpenVPN tunnels. The running kernel runs the same steps in place.
//!
//! Kernels come from Debian's archive (the suite's current kernel,
//! `linux-image-amd64`'s dependency), cached under the tool cache.

mod debian;

use debian::Distribution;

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    build, setup,
    tools::{cache_dir, cmd, exec, is_root, workspace_root},
    vm::{self, Accel, GUEST_RUN_DIR, Guest},
};

/// Guest memory: the tests, OpenVPN and the overlay's upper layer (guest
/// memory too) with room to spare.
const GUEST_MEMORY_MIB: u32 = 3072;
/// Guest processors: the machine's two cores.
const GUEST_CPUS: u32 = 2;

#[derive(clap::Args, Clone, Debug)]
pub struct KernelsArgs {
    /// Only these kernels (labels: debian-11, ubuntu-22.04, debian-12, ubuntu-24.04,
    /// debian-13, running).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Ask the archive for each suite's current kernel instead of using the
    /// cached one.
    #[arg(long)]
    pub refresh: bool,
    /// Leave out the running kernel (`cargo xtask test` has just run every
    /// test on it).
    #[arg(long)]
    pub no_running: bool,
    /// Only these steps (kernel, fixtures, loader, lab).
    #[arg(long, value_delimiter = ',')]
    pub steps: Vec<String>,
    /// Guest memory.
    #[arg(long, default_value_t = GUEST_MEMORY_MIB)]
    pub memory_mib: u32,
    /// Guest processors.
    #[arg(long, default_value_t = GUEST_CPUS)]
    pub cpus: u32,
}

impl Default for KernelsArgs {
    fn default() -> Self {
        Self {
            only: Vec::new(),
            refresh: false,
            no_running: false,
            steps: Vec::new(),
            memory_mib: GUEST_MEMORY_MIB,
            cpus: GUEST_CPUS,
        }
    }
}

/// What a kernel is expected to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Every step passes.
    Works,
    /// The loader refuses to start, naming the kernel; nothing else runs.
    Refused,
}

/// A kernel of the list: a Debian or Ubuntu suite's current kernel.
struct Target {
    label: &'static str,
    distribution: &'static str,
    archive: Distribution,
    suites: &'static [&'static str],
    expect: Expect,
}

/// The kernels operators run, oldest first by version. No Debian suite has
/// a 6.6-6.8 kernel; Ubuntu 24.04 LTS's 6.8 fills that gap.
const TARGETS: &[Target] = &[
    Target {
        label: "debian-11",
        distribution: "Debian 11 (bullseye)",
        archive: Distribution::Debian,
        suites: &["bullseye", "bullseye-security"],
        expect: Expect::Refused,
    },
    Target {
        label: "ubuntu-22.04",
        distribution: "Ubuntu 22.04 LTS (jammy)",
        archive: Distribution::Ubuntu,
        suites: &["jammy", "jammy-updates", "jammy-security"],
        expect: Expect::Works,
    },
    Target {
        label: "debian-12",
        distribution: "Debian 12 (bookworm)",
        archive: Distribution::Debian,
        suites: &["bookworm", "bookworm-security"],
        expect: Expect::Works,
    },
    Target {
        label: "ubuntu-24.04",
        distribution: "Ubuntu 24.04 LTS (noble)",
        archive: Distribution::Ubuntu,
        suites: &["noble", "noble-updates", "noble-security"],
        expect: Expect::Works,
    },
    Target {
        label: "debian-13",
        distribution: "Debian 13 (trixie)",
        archive: Distribution::Debian,
        suites: &["trixie", "trixie-security"],
        expect: Expect::Works,
    },
];

/// Modules loaded in the guest before anything runs; the rest (veth,
/// clsact, `cls_bpf`, nftables) the kernel requests itself.
const GUEST_MODULES: &[&str] = &["tun"];

/// One step: a test executable of the tests crate (or the loader), with
/// arguments.
struct Step {
    name: &'static str,
    /// The integration test target; `None`: the `ovpn-lb` binary.
    test: Option<&'static str>,
    args: &'static [&'static str],
}

const STEPS: &[Step] = &[
    Step {
        name: "kernel",
        test: None,
        args: &["kernel"],
    },
    Step {
        name: "fixtures",
        test: Some("datapath_fixtures"),
        args: &[],
    },
    // The loader tests that depend on the kernel: attaching and detaching
    // (tcx or legacy tc, nothing left behind), in-place replacement on
    // restart, refusal before attaching, the ring hooks that run (or the
    // round-robin fallback). The rest test the daemon's own
    // timing (the 100 ms health bound, hostile metrics clients), which
    // emulation would only blur.
    Step {
        name: "loader",
        test: Some("loader"),
        args: &[
            "attach_then_detach_leaves_nothing",
            "restarts_lose_no_pings",
            "bad_configuration_is_refused_before_anything_is_attached",
            "every_set_of_ring_hooks_accounts_the_rings_and_says_which_runs",
            "--exact",
            // Its lines name the ring hooks that run on this kernel.
            "--nocapture",
        ],
    },
    Step {
        name: "lab",
        test: Some("e2e"),
        args: &["two_tunnels_carry_ten_megabytes_v4_and_v6", "--exact"],
    },
];

/// How one step went.
#[derive(Clone, Debug, Default)]
struct StepResult {
    /// Exit code; `None`: it never finished.
    code: Option<i32>,
    passed: u32,
    failed: u32,
    /// The step's output.
    log: String,
}

/// How one kernel went.
struct Row {
    label: String,
    distribution: String,
    release: String,
    expect: Expect,
    steps: Vec<(&'static str, StepResult)>,
    elapsed: Duration,
    /// Why the guest did not finish, if it did not.
    trouble: Option<String>,
}

impl Row {
    /// The step's result; `None`: it was not asked for (`--steps`).
    fn step(&self, name: &str) -> Option<StepResult> {
        self.steps
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r.clone())
    }

    fn ok(&self) -> bool {
        if self.trouble.is_some() {
            return false;
        }
        match self.expect {
            Expect::Works => self.steps.iter().all(|(_, r)| r.code == Some(0)),
            Expect::Refused => self
                .step("kernel")
                .is_some_and(|k| k.code == Some(1) && k.log.contains(&self.release)),
        }
    }
}

pub fn run(args: &KernelsArgs) -> Result<()> {
    if !is_root() {
        bail!("cargo xtask kernels needs root (QEMU, apt-get, and the tests inside)");
    }
    setup::run()?;
    setup::debian_packages(vm::PACKAGES)?;
    build::ebpf()?;
    let out = workspace_root().join("target/kernels");
    fs::create_dir_all(&out)?;
    // One snapshot per run: runs of other kernels may go on beside this one.
    sweep_snapshots(&out);
    let snapshot_dir = RemovedOnDrop(out.join(format!("exe-{}", std::process::id())));
    let executables = snapshot(&test_executables()?, &snapshot_dir.0)?;
    let loader = loader_binary(&executables);
    let wanted = |label: &str| args.only.is_empty() || args.only.iter().any(|o| o == label);
    let (accel, why) = Accel::choose();
    eprintln!("kernels: guests run {why}");

    let mut rows = Vec::new();
    if wanted("running") && !args.no_running {
        rows.push(running(
            &executables,
            &loader,
            &out.join("running"),
            &args.steps,
        )?);
    }
    for target in TARGETS.iter().filter(|t| wanted(t.label)) {
        let kernel = debian::kernel(
            &cache_dir().join("kernels").join(target.label),
            target.archive,
            target.suites,
            args.refresh,
        )?;
        let dir = out.join(target.label);
        let guest = Guest {
            kernel: &kernel,
            accel,
            memory_mib: args.memory_mib,
            cpus: args.cpus,
            timeout: timeout(accel),
            modules: GUEST_MODULES,
            dir: dir.clone(),
            cwd: workspace_root(),
            env: guest_env(accel, &loader),
        };
        eprintln!(
            "kernels: {} ({}): booting {}",
            target.label, target.distribution, kernel.release
        );
        let label = target.label;
        // A kernel the loader refuses runs its report alone.
        let steps = match target.expect {
            Expect::Works => args.steps.clone(),
            Expect::Refused => vec!["kernel".to_owned()],
        };
        let script = script(
            &executables,
            Path::new(GUEST_RUN_DIR),
            target.expect,
            &steps,
        );
        let outcome = guest.run(&script, |line| eprintln!("[{label}] {line}"))?;
        let trouble = outcome.code.is_none().then(|| {
            format!(
                "the guest did not finish (see {})",
                outcome.console.display()
            )
        });
        rows.push(Row {
            label: target.label.into(),
            distribution: target.distribution.into(),
            release: kernel.release.clone(),
            expect: target.expect,
            steps: results(&dir, &steps),
            elapsed: outcome.elapsed,
            trouble,
        });
    }
    // The guests are gone: their copies with them.
    drop(snapshot_dir);
    let table = table(&rows);
    fs::write(out.join("report.md"), &table)?;
    eprintln!("\n{table}\n(kernels: {})", out.join("report.md").display());
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.ok())
        .map(|r| r.label.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("kernels: {} did not do what they should", failed.join(", "));
    }
    Ok(())
}

/// The kernel `cargo xtask test` boots under emulation: Debian 12's, the
/// oldest Debian kernel that works, and one that needs the legacy tc and round-robin
/// fallbacks.
const TEST_KERNEL: &str = "debian-12";
/// Its steps there: the lab flow alone takes 7 minutes emulated.
const TEST_STEPS: &[&str] = &["kernel", "fixtures", "loader"];

/// What `cargo xtask test` boots (the running kernel has just run every
/// test): every kernel and step where KVM runs the guests; under emulation,
/// where one kernel's steps take 15-20 minutes on two cores, only
/// [`TEST_KERNEL`]'s [`TEST_STEPS`], with a line naming what is left to
/// `cargo xtask kernels`.
///
/// # Errors
/// If a kernel does not do what it should.
pub fn for_tests() -> Result<()> {
    let (accel, why) = Accel::choose();
    let mut args = KernelsArgs {
        no_running: true,
        ..KernelsArgs::default()
    };
    if accel == Accel::Tcg {
        args.only = vec![TEST_KERNEL.to_owned()];
        args.steps = TEST_STEPS.iter().map(|&s| s.to_owned()).collect();
    }
    let left = left_out(&args);
    let note = |when: &str| {
        if let Some(left) = &left {
            eprintln!(
                "xtask test: kernels {when}: guests run {why}, so only {TEST_KERNEL} ({}) boots here; left to `cargo xtask kernels`: {left}",
                TEST_STEPS.join(", ")
            );
        }
    };
    note("(before)");
    let ran = run(&args);
    note("(after)");
    ran
}

/// What `args` leaves out of the whole matrix (the running kernel apart),
/// in words; `None`: nothing.
fn left_out(args: &KernelsArgs) -> Option<String> {
    let mut left = Vec::new();
    for t in TARGETS {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == t.label) {
            left.push(format!("{} (every step)", t.label));
            continue;
        }
        let steps: Vec<&str> = STEPS
            .iter()
            .map(|s| s.name)
            .filter(|s| !asked(&args.steps, s))
            .collect();
        if t.expect == Expect::Works && !steps.is_empty() {
            left.push(format!("{}'s {}", t.label, steps.join(", ")));
        }
    }
    (!left.is_empty()).then(|| left.join("; "))
}

/// Time a guest gets: booting and the steps under emulation take minutes.
fn timeout(accel: Accel) -> Duration {
    match accel {
        Accel::Kvm => Duration::from_mins(15),
        Accel::Tcg => Duration::from_mins(45),
    }
}

/// How much longer the test bed waits for things under emulation.
const EMULATED_SLOWDOWN: u32 = 10;

/// What the tests read from the environment, passed on to the guest, and
/// the test bed's slowdown under emulation.
fn guest_env(accel: Accel, loader: &Path) -> Vec<(String, String)> {
    let mut env = vec![
        ("RUST_BACKTRACE".to_owned(), "1".to_owned()),
        (LOADER_ENV.to_owned(), loader.display().to_string()),
    ];
    if accel == Accel::Tcg {
        env.push((
            ovpn_lb_tests::SLOWDOWN_ENV.to_owned(),
            EMULATED_SLOWDOWN.to_string(),
        ));
    }
    for key in ["CI", "RUST_LOG", "OVPN_LB_TC_HOOK", "OVPN_LB_VERIFIER_LOG"] {
        if let Ok(v) = std::env::var(key) {
            env.push((key.to_owned(), v));
        }
    }
    env
}

/// The running kernel: the same steps, in place.
fn running(
    executables: &[(String, PathBuf)],
    loader: &Path,
    dir: &Path,
    steps: &[String],
) -> Result<Row> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    let release = String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout)
        .trim()
        .to_owned();
    eprintln!("kernels: running ({release}): in place");
    let started = Instant::now();
    let script = script(executables, dir, Expect::Works, steps);
    let status = cmd("sh")
        .arg("-c")
        .arg(&script)
        .env(LOADER_ENV, loader)
        .status()?;
    let trouble = (!status.success()).then(|| format!("the steps' script failed ({status})"));
    Ok(Row {
        label: "running".into(),
        distribution: "this machine".into(),
        release,
        expect: Expect::Works,
        steps: results(dir, steps),
        elapsed: started.elapsed(),
        trouble,
    })
}

/// Where the tests find the `ovpn-lb` binary they run.
const LOADER_ENV: &str = "OVPN_LB_BIN";

/// A directory removed when the run ends, by error or by success.
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Removes the snapshots (`exe-PID`) of runs whose process is gone: a run
/// killed by a signal has no chance to remove its own.
fn sweep_snapshots(out: &Path) {
    let Ok(entries) = fs::read_dir(out) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("exe-")) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Copies of `executables` in `dir` (emptied first), which the steps run.
/// A guest reads the host's tree over 9p with `cache=loose`: an executable
/// rebuilt in `target/` while a guest runs (a build in the same worktree)
/// reaches it as the old file's cached pages mixed with the new file's
/// others, a binary that was never built (seen: every `ovpn-lb` start on
/// 6.12 stopped on a failed `offset_from_unsigned` precondition after the
/// loader was rebuilt during the fixtures step). Copies nothing rebuilds.
fn snapshot(executables: &[(String, PathBuf)], dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    fs::create_dir_all(dir)?;
    executables
        .iter()
        .map(|(name, exe)| {
            let file = exe
                .file_name()
                .with_context(|| format!("{} has no file name", exe.display()))?;
            let copy = dir.join(file);
            fs::copy(exe, &copy)
                .with_context(|| format!("copying {} to {}", exe.display(), copy.display()))?;
            Ok((name.clone(), copy))
        })
        .collect()
}

/// The `ovpn-lb` binary among the executables (its test target is "").
fn loader_binary(executables: &[(String, PathBuf)]) -> PathBuf {
    executables
        .iter()
        .find(|(n, _)| n.is_empty())
        .map(|(_, p)| p.clone())
        .unwrap_or_default()
}

/// The debug `ovpn-lb` (the tests run it) and the test executables of the
/// steps, built here: `(test target, executable)`.
fn test_executables() -> Result<Vec<(String, PathBuf)>> {
    exec(cmd("cargo").args(["build", "--package", "ovpn-lb-userspace", "--bins"]))?;
    let mut c = cmd("cargo");
    c.args([
        "test",
        "--package",
        "ovpn-lb-tests",
        "--no-run",
        "--message-format=json",
    ]);
    for step in STEPS {
        if let Some(test) = step.test {
            c.args(["--test", test]);
        }
    }
    let out = c.output().context("building the test executables")?;
    if !out.status.success() {
        bail!(
            "building the test executables failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut found = vec![(String::new(), workspace_root().join("target/debug/ovpn-lb"))];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), Some(name)) = (msg["executable"].as_str(), msg["target"]["name"].as_str())
        else {
            continue;
        };
        if msg["profile"]["test"].as_bool() == Some(true) {
            found.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    for step in STEPS {
        let name = step.test.unwrap_or_default();
        if !found.iter().any(|(n, _)| n == name) {
            bail!("cargo built no executable for test target {name:?}");
        }
    }
    Ok(found)
}

/// The steps as a shell script: each step's output goes to the console
/// and to `<dir>/<step>.log`, its exit code to `<dir>/<step>.rc`. A kernel
/// the loader refuses runs only the first step.
fn script(
    executables: &[(String, PathBuf)],
    dir: &Path,
    expect: Expect,
    only: &[String],
) -> String {
    let d = dir.display();
    let mut s = format!(
        "step() {{ name=$1; shift; echo \"=== kernels: $name\"; \
         {{ \"$@\"; echo $? > {d}/$name.rc; }} 2>&1 | tee {d}/$name.log; }}\n"
    );
    for step in STEPS {
        if !asked(only, step.name) {
            continue;
        }
        let exe = executables
            .iter()
            .find(|(n, _)| n == step.test.unwrap_or_default())
            .map(|(_, p)| p.display().to_string())
            .unwrap_or_default();
        let _ = writeln!(s, "step {} {exe} {}", step.name, step.args.join(" "));
        if expect == Expect::Refused {
            break;
        }
    }
    s
}

/// Whether `step` is among those asked for (none named: all).
fn asked(only: &[String], step: &str) -> bool {
    only.is_empty() || only.iter().any(|o| o == step)
}

/// The results of the steps asked for, from the files the script wrote.
fn results(dir: &Path, only: &[String]) -> Vec<(&'static str, StepResult)> {
    STEPS
        .iter()
        .filter(|step| asked(only, step.name))
        .map(|step| {
            let log =
                fs::read_to_string(dir.join(format!("{}.log", step.name))).unwrap_or_default();
            let code = fs::read_to_string(dir.join(format!("{}.rc", step.name)))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            let (passed, failed) = test_counts(&log);
            (
                step.name,
                StepResult {
                    code,
                    passed,
                    failed,
                    log,
                },
            )
        })
        .collect()
}

/// Passed and failed tests summed over libtest's `test result:` lines.
fn test_counts(log: &str) -> (u32, u32) {
    let mut sums = (0, 0);
    for line in log.lines().filter(|l| l.starts_with("test result:")) {
        let count = |word: &str| {
            line.split(';')
                .find_map(|part| {
                    part.trim()
                        .strip_suffix(word)?
                        .split_whitespace()
                        .last()?
                        .parse::<u32>()
                        .ok()
                })
                .unwrap_or(0)
        };
        sums.0 += count(" passed");
        sums.1 += count(" failed");
    }
    sums
}

/// A feature line of `ovpn-lb kernel`'s output: `name: value`.
fn feature(log: &str, name: &str) -> String {
    log.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}:")))
        .map_or_else(|| "?".to_owned(), |v| v.trim().to_owned())
}

fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| kernel | distribution | hook | XDP on TAP | spray modes | probes | l4 checksum | fixtures | loader tests | lab flow (2 tunnels, 10 MB v4+v6) | result |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        let k = r.step("kernel").unwrap_or_default();
        let tests = |name: &str| match r.step(name).map(|s| (s.code, s)) {
            None => "not asked for".to_owned(),
            Some((None, _)) if r.expect == Expect::Refused => "not run".to_owned(),
            Some((None, _)) => "did not finish".to_owned(),
            Some((Some(_), s)) => format!("{}/{} passed", s.passed, s.passed + s.failed),
        };
        let lab = match r.step("lab").map(|s| s.code) {
            None => "not asked for".to_owned(),
            Some(Some(0)) => "SHA-256 match".to_owned(),
            Some(Some(_)) => "failed".to_owned(),
            Some(None) if r.expect == Expect::Refused => "not run".to_owned(),
            Some(None) => "did not finish".to_owned(),
        };
        let result = match (r.ok(), r.expect) {
            (true, Expect::Works) => "works".to_owned(),
            (true, Expect::Refused) => format!("refused at start: {}", feature(&k.log, "refused")),
            (false, _) => r.trouble.clone().unwrap_or_else(|| "FAILED".to_owned()),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({:.0} s) |",
            r.release,
            r.distribution,
            feature(&k.log, "hook"),
            feature(&k.log, "xdp on tap"),
            feature(&k.log, "spray"),
            feature(&k.log, "probes"),
            feature(&k.log, "l4 checksum"),
            tests("fixtures"),
            tests("loader"),
            lab,
            result,
            r.elapsed.as_secs_f64(),
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_counts_add_up_every_result_line() {
        let log = "test a ... ok\n\
            test result: ok. 57 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.1s\n\
            test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 9 filtered out\n";
        assert_eq!(test_counts(log), (60, 2));
        assert_eq!(test_counts("no tests here"), (0, 0));
    }

    #[test]
    fn the_emulated_test_subset_names_what_it_leaves_out() {
        let subset = KernelsArgs {
            only: vec![TEST_KERNEL.to_owned()],
            steps: TEST_STEPS.iter().map(|&s| s.to_owned()).collect(),
            ..KernelsArgs::default()
        };
        assert_eq!(
            left_out(&subset).as_deref(),
            Some(
                "debian-11 (every step); ubuntu-22.04 (every step); debian-12's lab; ubuntu-24.04 (every step); debian-13 (every step)"
            )
        );
        assert_eq!(left_out(&KernelsArgs::default()), None);
    }

    #[test]
    fn copies_of_killed_runs_are_swept_and_a_live_runs_kept() {
        let root = std::env::temp_dir().join(format!("xtask-sweep-{}", std::process::id()));
        let live = root.join(format!("exe-{}", std::process::id()));
        // Above the kernel's pid_max (4194304 at most): no such process.
        let killed = root.join("exe-4194305");
        let other = root.join("debian-12");
        for d in [&live, &killed, &other] {
            fs::create_dir_all(d).unwrap();
        }
        sweep_snapshots(&root);
        assert!(live.exists() && other.exists());
        assert!(!killed.exists());
        {
            let _own = RemovedOnDrop(live.clone());
        }
        assert!(!live.exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn steps_run_copies_that_a_rebuild_leaves_alone() {
        let root = std::env::temp_dir().join(format!("xtask-snapshot-{}", std::process::id()));
        let built = root.join("target/debug");
        fs::create_dir_all(&built).unwrap();
        let exe = built.join("ovpn-lb");
        fs::write(&exe, b"the build the guest started with").unwrap();
        let copies = snapshot(&[(String::new(), exe.clone())], &root.join("exe")).unwrap();
        let copy = loader_binary(&copies);
        assert_eq!(copy, root.join("exe/ovpn-lb"));
        // A build in the worktree while the guest runs.
        fs::write(&exe, b"a later build").unwrap();
        assert_eq!(
            fs::read(&copy).unwrap(),
            b"the build the guest started with"
        );
        let s = script(
            &copies,
            Path::new("/run/vm"),
            Expect::Works,
            &["kernel".into()],
        );
        assert!(
            s.contains(&format!("step kernel {} kernel", copy.display())),
            "{s}"
        );
        assert!(!s.contains("target/debug"), "{s}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_refused_kernel_runs_only_the_kernel_step() {
        let exes = vec![(String::new(), PathBuf::from("/x/ovpn-lb"))];
        let s = script(&exes, Path::new("/run/vm"), Expect::Refused, &[]);
        assert!(s.contains("step kernel /x/ovpn-lb kernel"), "{s}");
        assert!(!s.contains("step fixtures"), "{s}");
    }
}
