//! `{ path = DIR }` sources: a directory tree copied into the release. The walk holds each
//! source directory open and steps by name (`fstatat(AT_SYMLINK_NOFOLLOW)`,
//! `openat(O_NOFOLLOW)`), so it never follows a symlink: symlinks are copied as symlinks when
//! they point inside the tree, and refused otherwise, without reading what they point to.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::{Dir, Type};
use nix::fcntl::{readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode};

use super::{dir_flags, io_err, Limits, RelPath, Release, SourceError, Stats, MAX_DEPTH};

/// Copies the directory tree `src` into `dest`, an existing empty directory.
///
/// Regular files (data and mode minus setuid/setgid/sticky; `copy_file_range` where the
/// kernel allows), directories, and symlinks that stay inside `src`. A symlink leaving `src`
/// (absolute, or `..` above it), a device, fifo or socket is refused with an error naming it.
pub fn copy_tree(src: &Path, dest: &Path, limits: &Limits) -> Result<Stats, SourceError> {
    let root = Dir::open(
        src,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open source directory", src, e))?;
    let mut release = Release::open(dest, limits, "path", src)?;
    copy_dir(src, &mut release, root, &RelPath::default(), 0)?;
    release.finish()
}

fn copy_dir(
    src: &Path,
    release: &mut Release,
    mut dir: Dir,
    rel: &RelPath,
    depth: usize,
) -> Result<(), SourceError> {
    let here = |rel: &RelPath| src.join(rel.display());
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| io_err("read directory", &here(rel), e))?;
        let name = entry.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        release.count_entry(&|| format!("source directory {}", src.display()))?;
        names.push((name.to_owned(), entry.file_type()));
    }
    // Files before subdirectories: the release keeps this directory open meanwhile.
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut subdirs: Vec<(CString, RelPath, u32)> = Vec::new();
    for (name, dtype) in names {
        let child = rel.join(&name);
        // The type readdir reports saves an `fstatat` for files and symlinks; a file is
        // checked again on the descriptor it is read from.
        let kind = match dtype {
            Some(Type::File) => libc::S_IFREG,
            Some(Type::Symlink) => libc::S_IFLNK,
            _ => 0,
        };
        let (kind, mode) = match kind {
            0 => {
                let st = fstatat(&dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err("inspect", &here(&child), e))?;
                (st.st_mode & libc::S_IFMT, st.st_mode)
            }
            kind => (kind, 0),
        };
        match kind {
            libc::S_IFREG => {
                // O_NONBLOCK: should the file be swapped for a fifo, opening it does not hang.
                let flags =
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
                let fd = nix::fcntl::openat(&dir, name.as_c_str(), flags, Mode::empty())
                    .map_err(|e| io_err("open", &here(&child), e))?;
                let st = fstat(&fd).map_err(|e| io_err("inspect", &here(&child), e))?;
                if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                    return Err(release.refused(&child, "changed type while being copied"));
                }
                release.file(&child, st.st_mode, st.st_size as u64, File::from(fd))?;
            }
            libc::S_IFDIR => subdirs.push((name, child, mode)),
            libc::S_IFLNK => {
                let target = readlinkat(&dir, name.as_c_str())
                    .map_err(|e| io_err("read symlink", &here(&child), e))?;
                release.symlink(&child, target.as_bytes())?;
            }
            kind => {
                let kind = match kind {
                    libc::S_IFIFO => "a fifo",
                    libc::S_IFSOCK => "a socket",
                    libc::S_IFCHR => "a character device",
                    libc::S_IFBLK => "a block device",
                    _ => "of an unknown type",
                };
                return Err(release.refused(
                    &child,
                    format!("is {kind}: only files, directories and symlinks are copied"),
                ));
            }
        }
    }
    for (name, child, mode) in subdirs {
        if depth + 1 > MAX_DEPTH {
            return Err(release.refused(
                &child,
                format!("nested deeper than {MAX_DEPTH} directories"),
            ));
        }
        release.dir(&child, mode)?;
        let sub = Dir::openat(&dir, name.as_c_str(), dir_flags(), Mode::empty())
            .map_err(|e| io_err("open directory", &here(&child), e))?;
        copy_dir(src, release, sub, &child, depth + 1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::time::{Duration, Instant};

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode()
    }

    #[test]
    fn a_tree_is_copied_with_modes_and_inside_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("src"), t.path().join("dest"));
        std::fs::create_dir_all(src.join("bin")).unwrap();
        std::fs::create_dir_all(dest.as_path()).unwrap();
        std::fs::write(src.join("bin/run"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(src.join("bin/run"), PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::write(src.join("app.js"), "console.log(1)").unwrap();
        std::fs::create_dir_all(src.join("lib/deep")).unwrap();
        symlink("../../app.js", src.join("lib/deep/app")).unwrap();
        symlink("bin/run", src.join("start")).unwrap();
        symlink("lib", src.join("libs")).unwrap();
        let stats = copy_tree(&src, &dest, &Limits::default()).unwrap();
        assert_eq!(
            stats,
            Stats {
                files: 2,
                bytes: 10 + 14
            }
        );
        assert_eq!(mode(&dest.join("bin/run")) & 0o777, 0o755);
        assert_eq!(mode(&dest.join("app.js")) & 0o777, 0o644);
        assert_eq!(
            std::fs::read_link(dest.join("lib/deep/app")).unwrap(),
            Path::new("../../app.js")
        );
        assert_eq!(
            std::fs::read_to_string(dest.join("lib/deep/app")).unwrap(),
            "console.log(1)"
        );
        assert_eq!(
            std::fs::read_link(dest.join("start")).unwrap(),
            Path::new("bin/run")
        );
        assert_eq!(
            std::fs::read_link(dest.join("libs")).unwrap(),
            Path::new("lib")
        );
    }

    #[test]
    fn a_symlink_out_of_the_tree_is_refused_and_its_target_not_copied() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("src"), t.path().join("dest"));
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::write(t.path().join("secret"), "do not copy").unwrap();
        for (link, target, why) in [
            ("sub/secret", "../../secret", "leaves the release"),
            ("abs", "/etc/passwd", "absolute link target"),
        ] {
            symlink(target, src.join(link)).unwrap();
            let err = copy_tree(&src, &dest, &Limits::default()).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(&src.join(link).display().to_string()), "{msg}");
            assert!(msg.contains(why), "{msg}");
            let copied = std::process::Command::new("grep")
                .args(["-r", "do not copy"])
                .arg(&dest)
                .status()
                .unwrap();
            assert!(!copied.success(), "the secret was copied");
            std::fs::remove_file(src.join(link)).unwrap();
            std::fs::remove_dir_all(&dest).unwrap();
            std::fs::create_dir(&dest).unwrap();
        }
    }

    #[test]
    fn fifos_and_sockets_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("src"), t.path().join("dest"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dest).unwrap();
        nix::unistd::mkfifo(&src.join("pipe"), Mode::from_bits_truncate(0o600)).unwrap();
        let err = copy_tree(&src, &dest, &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("is a fifo"), "{err}");
        std::fs::remove_file(src.join("pipe")).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
        let err = copy_tree(&src, &dest, &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("is a socket"), "{err}");
    }

    #[test]
    fn ten_thousand_small_files_copy_in_well_under_a_second() {
        let t = tempfile::tempdir().unwrap();
        // On a tmpfs, so that the time measured is the copy's, not a busy disk's (`cp -r` of
        // this tree takes seconds on a loaded CI disk, 0.2 s on a tmpfs).
        let mount = super::super::tests::tmpfs(t.path(), "256m");
        let (src, dest) = (t.path().join("src"), t.path().join("dest"));
        for d in 0..100 {
            let dir = src.join(format!("d{d}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..100 {
                std::fs::write(dir.join(format!("f{f}")), format!("{d}/{f}")).unwrap();
            }
        }
        std::fs::create_dir_all(&dest).unwrap();
        let start = Instant::now();
        let stats = copy_tree(&src, &dest, &Limits::default()).unwrap();
        let took = start.elapsed();
        assert_eq!(stats.files, 10_000);
        assert_eq!(
            std::fs::read_to_string(dest.join("d42/f7")).unwrap(),
            "42/7"
        );
        if mount.is_none() {
            eprintln!("timing not checked: no tmpfs ({took:?} on this disk)");
            return;
        }
        // About 0.2 s when idle; generous for a loaded 2-core CI box.
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }

    #[test]
    fn the_entry_limit_counts_before_copying() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("src"), t.path().join("dest"));
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::create_dir_all(&dest).unwrap();
        let limits = Limits {
            max_entries: 1,
            ..Limits::default()
        };
        let err = copy_tree(&src, &dest, &limits).unwrap_err();
        assert!(err.to_string().contains("more than 1 entries"), "{err}");
    }

    #[test]
    fn a_full_disk_fails_with_storage_full() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("src"), t.path().join("dest"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("big"), vec![7u8; 1 << 20]).unwrap();
        let Some(_mount) = super::super::tests::tmpfs(&dest, "256k") else {
            return;
        };
        let err = copy_tree(&src, &dest, &Limits::default()).unwrap_err();
        assert!(err.is_storage_full(), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("write file") && msg.contains("No space left"),
            "{msg}"
        );
        assert!(
            msg.contains(&dest.join("big").display().to_string()),
            "{msg}"
        );
    }
}
