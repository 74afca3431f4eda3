//! The Debian package from `cargo xtask deb` (`cargo xtask test` builds it
//! before the tests), installed as dpkg would unpack it but into a temporary
//! directory (`dpkg-deb -x`): no root, no namespace. Its `ovpn-lb` runs and
//! is this version, `doctor` refuses the packaged example (it names devices
//! this machine does not have) field by field, every man page is gzip with a
//! roff title, and the unit runs the packaged binary on the default
//! configuration.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use clap::CommandFactory as _;
use ovpn_lb::{cli::DEFAULT_CONFIG, generate::unit::PACKAGED_UNIT};
use ovpn_lb_tests::process::{all_output, run};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const BINARY: &str = "usr/sbin/ovpn-lb";
const EXAMPLE: &str = "usr/share/doc/ovpn-lb/examples/ovpn-lb.example.toml";
const MAN_DIR: &str = "usr/share/man/man1";
const DOCS: &str = "usr/share/doc/ovpn-lb/docs";

/// The package `cargo xtask deb` wrote for this version.
fn package() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    let prefix = format!("ovpn-lb_{VERSION}-1_");
    fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "deb")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix))
        })
        .unwrap_or_else(|| {
            panic!(
                "no {prefix}*.deb in {}: build it with `cargo xtask deb` (cargo xtask test does)",
                dir.display()
            )
        })
}

/// The package's files unpacked under a temporary root, removed on drop.
struct Unpacked(PathBuf);

impl Unpacked {
    /// Unpacks `deb` under a root named after `test` (tests run in parallel).
    fn new(deb: &Path, test: &str) -> Self {
        let root =
            std::env::temp_dir().join(format!("ovpnlb-package-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let unpacked = Self(root);
        run(
            "dpkg-deb",
            &["-x", &deb.to_string_lossy(), &unpacked.0.to_string_lossy()],
        );
        unpacked
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.0.join(relative)
    }

    fn ovpn_lb(&self, args: &[&str]) -> Output {
        Command::new(self.path(BINARY))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{BINARY}: {e}"))
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A field of the package's control file.
fn field(deb: &Path, name: &str) -> String {
    run("dpkg-deb", &["--field", &deb.to_string_lossy(), name])
        .trim()
        .to_owned()
}

#[test]
fn the_package_names_itself_and_what_it_needs() {
    let deb = package();
    assert_eq!(field(&deb, "Package"), "ovpn-lb");
    assert_eq!(field(&deb, "Version"), format!("{VERSION}-1"));
    assert!(
        field(&deb, "Depends").contains("libc6"),
        "Depends: {}",
        field(&deb, "Depends")
    );
    assert_eq!(field(&deb, "Recommends"), "openvpn");
}

/// A control member of the package (`conffiles`, `prerm`, ...).
fn control(deb: &Path, member: &str) -> String {
    run("dpkg-deb", &["--info", &deb.to_string_lossy(), member])
}

#[test]
fn the_example_is_a_conffile_and_the_maintainer_scripts_detach_and_restart() {
    let deb = package();
    assert_eq!(
        control(&deb, "conffiles").trim(),
        "/etc/ovpn-lb/ovpn-lb.example.toml",
        "the one file under /etc, which dpkg keeps on removal and takes on purge"
    );
    let prerm = control(&deb, "prerm");
    assert!(
        prerm.contains("remove|deconfigure)") && prerm.contains("/usr/sbin/ovpn-lb detach"),
        "{prerm}"
    );
    let postinst = control(&deb, "postinst");
    assert!(
        postinst.contains("systemctl restart ovpn-lb.service"),
        "{postinst}"
    );
    assert!(control(&deb, "postrm").contains("purge)"));
}

#[test]
fn the_unpacked_binary_is_this_version_and_its_doctor_names_the_examples_missing_devices() {
    let tree = Unpacked::new(&package(), "doctor");
    let out = tree.ovpn_lb(&["--version"]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ovpn-lb {VERSION}")
    );

    // The example's LAN interface is `eth1`, which this machine lacks
    // (its tunnel devices are missing too, which alone is a warning).
    assert!(
        !Path::new("/sys/class/net/eth1").exists(),
        "this test needs a machine without an eth1: the packaged example names it"
    );
    let example = tree.path(EXAMPLE);
    let out = tree.ovpn_lb(&["doctor", "--config", &example.to_string_lossy()]);
    let said = all_output(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    let errors: Vec<&str> = said.lines().filter(|l| l.starts_with("error: ")).collect();
    let prefix = format!("error: {}: ", example.display());
    assert!(!errors.is_empty(), "{said}");
    for error in &errors {
        let field = error
            .strip_prefix(&prefix)
            .and_then(|e| e.split_once(" = "));
        assert!(field.is_some(), "an error that names no field: {error}");
    }
    assert!(
        errors
            .iter()
            .any(|e| e.contains("lan.interface = \"eth1\": no such network interface")),
        "{said}"
    );
}

#[test]
fn every_man_page_is_gzipped_roff_and_the_unit_runs_the_packaged_binary() {
    let tree = Unpacked::new(&package(), "man");
    let top = ovpn_lb::cli::Cli::command();
    let mut expected: Vec<String> = top
        .get_subcommands()
        .map(|c| format!("ovpn-lb-{}.1.gz", c.get_name()))
        .collect();
    expected.push("ovpn-lb.1.gz".into());
    expected.sort();
    let mut pages: Vec<String> = fs::read_dir(tree.path(MAN_DIR))
        .unwrap_or_else(|e| panic!("{MAN_DIR}: {e}"))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    assert_eq!(pages, expected);
    for page in &pages {
        let path = tree.path(MAN_DIR).join(page);
        let bytes = fs::read(&path).unwrap();
        assert_eq!(
            bytes.get(..2),
            Some(&[0x1f, 0x8b][..]),
            "{page}: no gzip magic"
        );
        let roff = run("gzip", &["-dc", &path.to_string_lossy()]);
        let title = page.trim_end_matches(".1.gz");
        assert!(
            roff.lines()
                .any(|l| l.starts_with(".TH ") && l.contains(title)),
            "{page}: no .TH line naming {title}:\n{roff}"
        );
    }

    let unit = fs::read_to_string(tree.path(PACKAGED_UNIT)).unwrap();
    let exec_start = format!("ExecStart=/{BINARY} run --config {DEFAULT_CONFIG}");
    assert!(
        unit.lines().any(|l| l == exec_start),
        "no {exec_start:?} in\n{unit}"
    );
    assert!(tree.path(EXAMPLE).exists());
    // The README's links, and `ovpn-lb status --help`, lead here.
    assert!(tree.path(DOCS).join("deploying.md").exists());
}
