//! Build script: in release builds on Linux, the hot functions of citrusd and citrusctl are laid
//! out together at the start of their text (`src/bin/<bin>-hot.ld`, made by `bench/hot-code.sh`).
//! The kernel maps a binary in runs of 64 KiB or more around each page it touches, so gathering the
//! ~1 MB citrusd runs keeps ~4 MB of its text out of its resident memory (and citrusctl starts with
//! fewer page faults). Nothing else changes: each script only adds an output section of
//! already-compiled functions before `.text` (`INSERT BEFORE`).

fn main() {
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    // "release" for every profile that inherits from it (`dist` too).
    let release = std::env::var("PROFILE").as_deref() == Ok("release");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    for bin in ["citrusd", "citrusctl"] {
        let script = format!("src/bin/{bin}-hot.ld");
        println!("cargo:rerun-if-changed={script}");
        if !(linux && release) {
            continue;
        }
        if std::path::Path::new(&dir).join(&script).exists() {
            println!("cargo:rustc-link-arg-bin={bin}=-Wl,-T,{dir}/{script}");
        } else {
            println!("cargo:warning={script} is missing (bench/hot-code.sh makes it): {bin}'s text keeps the linker's layout");
        }
    }
}
