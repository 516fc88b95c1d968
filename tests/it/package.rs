//! The Debian package: packaging/deb/build.sh builds it from the debug binaries (seconds, the same
//! script and layout as the release package), then it is inspected with dpkg-deb and installed
//! into a throwaway root with `dpkg --root` (maintainer scripts run chrootless, honouring
//! $DPKG_ROOT), removed and purged there.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;

use crate::support::{Run, CITRUSD};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Builds the package from the test's own binaries into `out`; returns its path.
fn build_deb(out: &Path) -> PathBuf {
    let bin_dir = Path::new(CITRUSD).parent().unwrap();
    let run = Run::from_command(
        Command::new(Path::new(REPO).join("packaging/deb/build.sh"))
            .arg("--bin-dir")
            .arg(bin_dir)
            .arg("--out")
            .arg(out)
            .args(["--compress", "none"]),
    );
    run.code(0);
    let deb = PathBuf::from(run.stdout.trim());
    assert!(deb.is_file(), "{}", run.stdout);
    deb
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let run = Run::from_command(Command::new("dpkg-deb").args(args).arg(deb));
    run.code(0);
    run.stdout.clone()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn deb_holds_the_binaries_unit_conffile_man_pages_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(&dir.path().join("out"));
    assert_eq!(
        deb.file_name().unwrap().to_str().unwrap(),
        format!("citrus_{}_amd64.deb", env!("CARGO_PKG_VERSION"))
    );

    // Control: fields, the conffile, the maintainer scripts (executable).
    let field = |f: &str| {
        dpkg_deb(&["-f"], &deb)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{f}: ")).map(str::to_string))
    };
    assert_eq!(field("Package").as_deref(), Some("citrus"));
    assert_eq!(field("Version").as_deref(), Some(env!("CARGO_PKG_VERSION")));
    let depends = field("Depends").expect("Depends");
    assert!(depends.contains("libc6 (>="), "{depends}");
    let control = dir.path().join("control");
    Run::from_command(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control)).code(0);
    assert_eq!(
        fs::read_to_string(control.join("conffiles")).unwrap(),
        "/etc/citrus/citrusd.toml\n"
    );
    for script in ["postinst", "prerm", "postrm"] {
        assert_eq!(mode(&control.join(script)), 0o755, "{script}");
        let sh = Run::from_command(Command::new("sh").arg("-n").arg(control.join(script)));
        sh.code(0);
    }

    // Every file owned by root, whoever built it.
    let listing = dpkg_deb(&["-c"], &deb);
    assert!(
        listing.lines().all(|l| l.contains(" root/root ")),
        "{listing}"
    );

    // The files and their modes.
    let root = dir.path().join("root");
    Run::from_command(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root)).code(0);
    for bin in ["citrusd", "citrusctl", "citrus-engine"] {
        let path = root.join("usr/bin").join(bin);
        assert_eq!(mode(&path), 0o755, "{bin}");
        Run::from_command(Command::new(&path).arg("--version"))
            .code(0)
            .stdout_has(&[bin, env!("CARGO_PKG_VERSION")]);
    }
    // The unit is the repository's, for /usr/bin.
    let unit_path = root.join("usr/lib/systemd/system/citrusd.service");
    assert_eq!(mode(&unit_path), 0o644);
    let unit = fs::read_to_string(&unit_path).unwrap();
    let source = fs::read_to_string(Path::new(REPO).join("systemd/citrusd.service")).unwrap();
    assert_eq!(unit, source.replace("/usr/local/bin", "/usr/bin"));
    assert!(!unit.contains("/usr/local"), "{unit}");
    assert!(unit.contains("\nExecStart=/usr/bin/citrusd --config /etc/citrus/citrusd.toml\n"));
    // The conffile is a valid config.
    let conf = root.join("etc/citrus/citrusd.toml");
    assert_eq!(mode(&conf), 0o644);
    citrus::config::Config::load(&conf, None)
        .unwrap_or_else(|e| panic!("the packaged citrusd.toml is invalid:\n{e}"));
    // A man page per binary and per citrusctl subcommand.
    let man = root.join("usr/share/man/man1");
    let mut pages = vec![
        "citrusd".to_string(),
        "citrusctl".into(),
        "citrus-engine".into(),
    ];
    pages.extend(
        citrus::ctl::Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| format!("citrusctl-{}", s.get_name())),
    );
    for page in pages {
        let path = man.join(format!("{page}.1.gz"));
        assert_eq!(mode(&path), 0o644, "{page}");
        let text = Run::from_command(Command::new("gzip").arg("-dc").arg(&path));
        text.code(0).stdout_has(&[".SH NAME"]);
    }
    for (dir, file) in [
        ("usr/share/bash-completion/completions", "citrusctl"),
        ("usr/share/bash-completion/completions", "citrusd"),
        ("usr/share/zsh/vendor-completions", "_citrusctl"),
        ("usr/share/fish/vendor_completions.d", "citrusctl.fish"),
        ("usr/share/doc/citrus", "copyright"),
    ] {
        assert_eq!(mode(&root.join(dir).join(file)), 0o644, "{dir}/{file}");
    }
}

#[test]
fn deb_installs_into_a_throwaway_root_enables_the_unit_and_removes_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(&dir.path().join("out"));
    let root = dir.path().join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for f in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
        fs::write(root.join(f), "").unwrap();
    }
    // The throwaway root has no libc6 package: --force-depends. Maintainer scripts run here,
    // not chrooted, with DPKG_ROOT set.
    let dpkg = |args: &[&str]| {
        Run::from_command(
            Command::new("dpkg")
                .arg(format!("--root={}", root.display()))
                .args([
                    "--force-script-chrootless",
                    "--force-depends",
                    "--force-not-root",
                    "--log=/dev/null",
                ])
                .args(args),
        )
    };
    dpkg(&["-i", deb.to_str().unwrap()]).code(0);

    assert_eq!(mode(&root.join("var/lib/citrus")), 0o755);
    assert_eq!(mode(&root.join("var/log/citrus")), 0o755);
    assert_eq!(mode(&root.join("usr/bin/citrusd")), 0o755);
    let wants = root.join("etc/systemd/system/multi-user.target.wants/citrusd.service");
    let systemctl =
        Path::new("/usr/bin/systemctl").exists() || Path::new("/bin/systemctl").exists();
    if systemctl {
        // Enabled (a symlink to the packaged unit), not started: nothing runs.
        assert_eq!(
            fs::read_link(&wants).unwrap(),
            Path::new("/usr/lib/systemd/system/citrusd.service")
        );
    }

    // An edited conffile survives removal; purge takes it.
    let conf = root.join("etc/citrus/citrusd.toml");
    fs::write(&conf, "# edited\n").unwrap();
    dpkg(&["-r", "citrus"]).code(0);
    assert!(!root.join("usr/bin/citrusd").exists());
    assert!(
        fs::symlink_metadata(&wants).is_err(),
        "still enabled after removal"
    );
    assert_eq!(fs::read_to_string(&conf).unwrap(), "# edited\n");
    // State and logs are the apps' data: kept.
    assert!(root.join("var/lib/citrus").is_dir());
    dpkg(&["-P", "citrus"]).code(0);
    assert!(!conf.exists());
}

#[test]
fn deb_build_without_binaries_names_them_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    Run::from_command(
        Command::new(Path::new(REPO).join("packaging/deb/build.sh"))
            .arg("--bin-dir")
            .arg(dir.path())
            .arg("--out")
            .arg(dir.path().join("out")),
    )
    .code(2)
    .stderr_has(&[
        "no executable",
        "citrusd",
        "cargo build --profile dist --bins",
    ]);
    Run::from_command(
        Command::new(Path::new(REPO).join("packaging/deb/build.sh")).args(["--compress", "lz4"]),
    )
    .code(2)
    .stderr_has(&["--compress takes xz or none, not 'lz4'"]);
}
