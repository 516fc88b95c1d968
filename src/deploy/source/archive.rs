//! `{ archive = FILE }` sources: a gzip'd tar archive, each entry checked before anything is
//! written (never `tar::Archive::unpack`). Regular files, directories, symlinks and hard links
//! are extracted through the release writer; every other kind of entry is refused.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use tar::EntryType;

use super::{io_err, Limits, RelPath, Release, SourceError, Stats};

/// Extracts the `.tar.gz` `archive` into `dest`, an existing empty directory.
///
/// Refuses (naming the entry and why) absolute paths, `..`, symlinks leaving `dest`, hard
/// links to anything but a regular file extracted earlier, devices and fifos, and any path
/// through a symlink. Modes are kept minus setuid/setgid/sticky; owners are not.
pub fn extract_archive(archive: &Path, dest: &Path, limits: &Limits) -> Result<Stats, SourceError> {
    let file = File::open(archive).map_err(|e| io_err("open archive", archive, e))?;
    let mut release = Release::open(dest, limits, "archive entry", Path::new(""))?;
    let gz = flate2::read::MultiGzDecoder::new(BufReader::new(file));
    let mut tar = tar::Archive::new(gz);
    let entries = tar
        .entries()
        .map_err(|e| io_err("read archive", archive, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| io_err("read archive", archive, e))?;
        release.count_entry(&|| format!("archive {}", archive.display()))?;
        let raw = entry.path_bytes().into_owned();
        let refuse = |reason: String| SourceError::Refused {
            what: "archive entry",
            name: String::from_utf8_lossy(&raw).into_owned(),
            reason,
        };
        let rel = RelPath::parse(&raw).map_err(refuse)?;
        let kind = entry.header().entry_type();
        let mode = match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => entry
                .header()
                .mode()
                .map_err(|e| refuse(format!("unreadable mode: {e}")))?,
            _ => 0,
        };
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.size();
                release.file(&rel, mode, size, &mut entry)?;
            }
            EntryType::Directory if rel.is_root() => {}
            EntryType::Directory => release.dir(&rel, mode)?,
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refuse("symlink without a target".into()))?;
                release.symlink(&rel, &target)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refuse("hard link without a target".into()))?;
                let target = RelPath::parse(&target).map_err(|why| {
                    refuse(format!(
                        "hard link target {:?}: {why}",
                        String::from_utf8_lossy(&target)
                    ))
                })?;
                release.hardlink(&rel, &target)?;
            }
            // Global PAX headers carry defaults (comments, times), nothing to write.
            EntryType::XGlobalHeader => {}
            other => {
                return Err(refuse(format!(
                    "{} entries are not allowed (only files, directories and links)",
                    kind_name(other)
                )))
            }
        }
    }
    release.finish()
}

fn kind_name(kind: EntryType) -> String {
    match kind {
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Fifo => "fifo".into(),
        EntryType::GNUSparse => "sparse file".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// One entry of a test archive, written with raw header fields (the `tar` crate's
    /// `set_path` refuses the hostile names these tests need).
    struct E<'a> {
        path: &'a str,
        kind: EntryType,
        mode: u32,
        link: &'a str,
        data: &'a [u8],
    }

    fn file<'a>(path: &'a str, data: &'a [u8]) -> E<'a> {
        E {
            path,
            kind: EntryType::Regular,
            mode: 0o644,
            link: "",
            data,
        }
    }
    fn dir(path: &str) -> E<'_> {
        E {
            path,
            kind: EntryType::Directory,
            mode: 0o755,
            link: "",
            data: b"",
        }
    }
    fn link<'a>(kind: EntryType, path: &'a str, target: &'a str) -> E<'a> {
        E {
            path,
            kind,
            mode: 0o777,
            link: target,
            data: b"",
        }
    }

    fn archive(dir: &Path, entries: &[E<'_>]) -> PathBuf {
        let path = dir.join("a.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        for e in entries {
            let mut h = tar::Header::new_old();
            let old = h.as_old_mut();
            old.name[..e.path.len()].copy_from_slice(e.path.as_bytes());
            old.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
            h.set_entry_type(e.kind);
            h.set_mode(e.mode);
            h.set_size(e.data.len() as u64);
            h.set_cksum();
            b.append(&h, e.data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
        path
    }

    /// A temp dir with `dest` (empty) and a `sentinel` dir next to it.
    struct Scene {
        dir: tempfile::TempDir,
    }

    impl Scene {
        fn new() -> Scene {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("rel/dest")).unwrap();
            std::fs::create_dir(dir.path().join("rel/sentinel")).unwrap();
            std::fs::write(dir.path().join("rel/sentinel/keep"), "untouched").unwrap();
            Scene { dir }
        }
        fn dest(&self) -> PathBuf {
            self.dir.path().join("rel/dest")
        }
        fn extract(&self, entries: &[E<'_>]) -> Result<Stats, SourceError> {
            let a = archive(self.dir.path(), entries);
            extract_archive(&a, &self.dest(), &Limits::default())
        }
        /// Nothing was written outside `dest`.
        fn assert_outside_untouched(&self) {
            let names = |p: PathBuf| {
                let mut v: Vec<String> = std::fs::read_dir(p)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v
            };
            assert_eq!(names(self.dir.path().join("rel")), ["dest", "sentinel"]);
            assert_eq!(names(self.dir.path().join("rel/sentinel")), ["keep"]);
            assert_eq!(names(self.dir.path().to_owned()), ["a.tar.gz", "rel"]);
            let keep = std::fs::read_to_string(self.dir.path().join("rel/sentinel/keep"));
            assert_eq!(keep.unwrap(), "untouched");
            assert!(!Path::new("/abs").exists());
        }
    }

    #[track_caller]
    fn refused(entries: &[E<'_>], name: &str, why: &str) {
        let scene = Scene::new();
        let err = scene.extract(entries).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, SourceError::Refused { .. }), "{msg}");
        assert!(msg.contains(&format!("{name:?}")), "names {name}: {msg}");
        assert!(msg.contains(why), "says {why}: {msg}");
        scene.assert_outside_untouched();
    }

    #[test]
    fn hostile_paths_are_refused_and_nothing_is_written_outside() {
        refused(&[file("../x", b"evil")], "../x", "`..`");
        refused(&[file("/abs/x", b"evil")], "/abs/x", "absolute path");
        refused(&[dir("a"), file("a/../../x", b"evil")], "a/../../x", "`..`");
        refused(
            &[file("../sentinel/keep", b"evil")],
            "../sentinel/keep",
            "`..`",
        );
    }

    #[test]
    fn symlinks_leaving_the_release_are_refused() {
        refused(
            &[link(EntryType::Symlink, "etc", "/etc")],
            "etc",
            "absolute link target",
        );
        refused(
            &[dir("a"), link(EntryType::Symlink, "a/up", "../../x")],
            "a/up",
            "leaves the release",
        );
        refused(
            &[
                link(EntryType::Symlink, "s", "../sentinel"),
                file("s/keep", b"evil"),
            ],
            "s",
            "leaves the release",
        );
    }

    #[test]
    fn a_file_entry_through_an_inside_symlink_is_refused() {
        refused(
            &[
                dir("sub"),
                link(EntryType::Symlink, "s", "sub"),
                file("s/x", b"data"),
            ],
            "s/x",
            "is a symlink or a file",
        );
        // Also when the symlink is the last component: O_EXCL | O_NOFOLLOW does not follow it.
        refused(
            &[
                file("t", b"1"),
                link(EntryType::Symlink, "s", "t"),
                file("s", b"2"),
            ],
            "s",
            "already exists",
        );
    }

    #[test]
    fn hard_links_outside_or_to_non_files_are_refused() {
        refused(
            &[link(EntryType::Link, "pw", "/etc/passwd")],
            "pw",
            "absolute path",
        );
        refused(&[link(EntryType::Link, "x", "../x")], "x", "`..`");
        refused(
            &[link(EntryType::Link, "x", "missing")],
            "x",
            "not a file written earlier",
        );
        // A hard link to an inside symlink would move it and change what it points to.
        refused(
            &[
                dir("a"),
                dir("a/b"),
                link(EntryType::Symlink, "a/b/up", "../.."),
                link(EntryType::Link, "top", "a/b/up"),
            ],
            "top",
            "not a regular file",
        );
    }

    #[test]
    fn devices_and_fifos_are_refused() {
        refused(
            &[link(EntryType::Fifo, "p", "")],
            "p",
            "fifo entries are not allowed",
        );
        refused(
            &[link(EntryType::Char, "null", "")],
            "null",
            "character device",
        );
    }

    #[test]
    fn a_good_archive_extracts_to_the_exact_tree() {
        let scene = Scene::new();
        let script = b"#!/bin/sh\necho hi\n";
        let mut run = file("./bin/run", script);
        run.mode = 0o4755;
        let mut ro = dir("./ro");
        ro.mode = 0o555;
        let stats = scene
            .extract(&[
                dir("./"),
                dir("./bin"),
                run,
                file("./README", b"hello"),
                ro,
                file("./ro/inner", b"x"),
                file("./deep/er/file", b"implicit parents"),
                link(EntryType::Symlink, "./bin/readme", "../README"),
                link(EntryType::Symlink, "./here", "bin"),
                link(EntryType::Link, "./README.hard", "README"),
            ])
            .unwrap();
        assert_eq!(
            stats,
            Stats {
                files: 5,
                bytes: script.len() as u64 + 5 + 1 + 16
            }
        );
        let d = scene.dest();
        let mode = |p: &str| {
            std::fs::symlink_metadata(d.join(p))
                .unwrap()
                .permissions()
                .mode()
        };
        assert_eq!(mode("bin/run") & 0o7777, 0o755, "setuid dropped");
        assert_eq!(mode("README") & 0o777, 0o644);
        assert_eq!(mode("ro") & 0o777, 0o555);
        assert_eq!(std::fs::read_to_string(d.join("ro/inner")).unwrap(), "x");
        assert_eq!(
            std::fs::read_link(d.join("bin/readme")).unwrap(),
            Path::new("../README")
        );
        assert_eq!(
            std::fs::read_to_string(d.join("bin/readme")).unwrap(),
            "hello"
        );
        assert_eq!(
            std::fs::read_link(d.join("here")).unwrap(),
            Path::new("bin")
        );
        assert_eq!(
            std::fs::read_to_string(d.join("README.hard")).unwrap(),
            "hello"
        );
        assert_eq!(
            std::fs::read_to_string(d.join("deep/er/file")).unwrap(),
            "implicit parents"
        );
        scene.assert_outside_untouched();
    }

    #[test]
    fn limits_bound_entries_bytes_and_path_length() {
        let scene = Scene::new();
        let a = archive(
            scene.dir.path(),
            &[file("a", b"1"), file("b", b"2"), file("c", b"3")],
        );
        let limits = Limits {
            max_entries: 2,
            ..Limits::default()
        };
        let err = extract_archive(&a, &scene.dest(), &limits).unwrap_err();
        assert!(err.to_string().contains("more than 2 entries"), "{err}");

        let scene = Scene::new();
        let a = archive(scene.dir.path(), &[file("a", &[0; 600])]);
        let limits = Limits {
            max_bytes: 512,
            ..Limits::default()
        };
        let err = extract_archive(&a, &scene.dest(), &limits).unwrap_err();
        assert!(err.to_string().contains("more than 512 bytes"), "{err}");
        assert!(!scene.dest().join("a").exists());

        let scene = Scene::new();
        let a = archive(scene.dir.path(), &[file("aaaa/bbbb/cccc", b"")]);
        let limits = Limits {
            max_path_len: 10,
            ..Limits::default()
        };
        let err = extract_archive(&a, &scene.dest(), &limits).unwrap_err();
        assert!(err.to_string().contains("longer than 10 bytes"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_gzip_is_an_error_naming_it() {
        let scene = Scene::new();
        let a = scene.dir.path().join("a.tar.gz");
        std::fs::write(&a, "not an archive").unwrap();
        let err = extract_archive(&a, &scene.dest(), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("cannot read archive"), "{err}");
        assert!(err.to_string().contains("a.tar.gz"), "{err}");
    }

    #[test]
    fn a_full_disk_fails_with_storage_full() {
        let scene = Scene::new();
        let Some(_mount) = super::super::tests::tmpfs(&scene.dest(), "256k") else {
            return;
        };
        let big = vec![7u8; 1 << 20];
        let err = scene.extract(&[file("big", &big)]).unwrap_err();
        assert!(err.is_storage_full(), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("write file") && msg.contains("No space left"),
            "{msg}"
        );
    }
}
