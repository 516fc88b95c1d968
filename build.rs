//! Build script: optimised builds on Linux lay out the hot functions of citrusd and citrusctl
//! together at the start of their text (`link/<bin>.<profile>.ld`, made by `bench/hot-code.sh`
//! for each profile, since `release` and `dist` inline differently). The kernel maps a binary in
//! runs of 64 KiB or more around each page it touches, so gathering the ~1 MB citrusd runs keeps
//! ~4 MB of its text out of its resident memory (and citrusctl starts with fewer page faults).
//! Nothing else changes: each script only adds an output section of already-compiled functions
//! before `.text` (`INSERT BEFORE`).
//!
//! The linker also writes `<target>/<profile>/<bin>.map`, where each function went, which
//! `bench/hot-code.sh` reads to name what ran, even in a stripped binary.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=link");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    let optimised = std::env::var("PROFILE").as_deref() == Ok("release");
    if !(linux && optimised) {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    // Cargo tells a build script only whether its profile inherits from `release`, but puts its
    // output in `<target>/<profile>/build/<unit>/out`.
    let Some(profile_dir) = Path::new(&out).ancestors().nth(3) else {
        return;
    };
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("release");
    for bin in ["citrusd", "citrusctl"] {
        let script = format!("link/{bin}.{profile}.ld");
        if Path::new(&dir).join(&script).exists() {
            println!("cargo:rustc-link-arg-bin={bin}=-Wl,-T,{dir}/{script}");
        } else {
            println!(
                "cargo:warning={script} is missing (BENCH_PROFILE={profile} bench/hot-code.sh makes it): {bin}'s text keeps the linker's layout"
            );
        }
        let map = profile_dir.join(format!("{bin}.map"));
        println!("cargo:rustc-link-arg-bin={bin}=-Wl,-Map={}", map.display());
    }
}
