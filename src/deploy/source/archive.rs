//! `{ archive = FILE }` sources: a gzip'd tar archive, each entry checked before anything is
//! written (never `tar::Archive::unpack`). Regular files, directories, symlinks and hard links
//! are extracted through the release writer; every other kind of entry is refused.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use tar::EntryType;

use super::{io_err, Limits, RelPath, Release, SourceError, Stats};

/// PAX records for one entry are read into memory up to this size.
const MAX_PAX: u64 = 64 << 10;

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
    let read_err = |e| io_err("read archive", archive, e);
    // Raw: the GNU long names and PAX records are read here, with a bound (the `tar` crate
    // would read one of any size into memory).
    let entries = tar.entries().map_err(read_err)?.raw(true);
    let mut ext = Extensions::default();
    for entry in entries {
        let mut entry = entry.map_err(read_err)?;
        release.count_entry(&|| format!("archive {}", archive.display()))?;
        let header_path = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        let bounded = |entry: &mut tar::Entry<'_, _>, max: u64, what: &str| {
            if entry.size() > max {
                return Err(SourceError::Refused {
                    what: "archive entry",
                    name: String::from_utf8_lossy(&header_path).into_owned(),
                    reason: format!("{what} of {} bytes (the limit is {max})", entry.size()),
                });
            }
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(read_err)?;
            Ok(buf)
        };
        let max_name = limits.max_path_len as u64 + 1;
        match kind {
            EntryType::GNULongName => {
                ext.path = Some(nul_trimmed(bounded(&mut entry, max_name, "long name")?));
                continue;
            }
            EntryType::GNULongLink => {
                ext.link = Some(nul_trimmed(bounded(&mut entry, max_name, "long link")?));
                continue;
            }
            EntryType::XHeader => {
                let pax = bounded(&mut entry, MAX_PAX, "PAX header")?;
                // Other tools might read records this parser skips: refuse instead.
                if tar::PaxExtensions::new(&pax).any(|r| r.is_err()) {
                    return Err(SourceError::Refused {
                        what: "archive entry",
                        name: String::from_utf8_lossy(&header_path).into_owned(),
                        reason: "malformed PAX header".into(),
                    });
                }
                ext.pax = Some(pax);
                continue;
            }
            // Global PAX records carry defaults (comments, times), nothing to write.
            EntryType::XGlobalHeader => continue,
            _ => {}
        }
        let ext = std::mem::take(&mut ext);
        let raw = ext
            .pax_value("path")
            .or(ext.path.clone())
            .unwrap_or(header_path);
        let refuse = |reason: String| SourceError::Refused {
            what: "archive entry",
            name: String::from_utf8_lossy(&raw).into_owned(),
            reason,
        };
        if let Some(size) = ext.pax_value("size") {
            // The data was framed by the header's size: a PAX size that disagrees would make
            // this archive read differently elsewhere.
            let size = std::str::from_utf8(&size).ok().and_then(|s| s.parse().ok());
            if size != Some(entry.size()) {
                return Err(refuse("its PAX size disagrees with its header".into()));
            }
        }
        let rel = RelPath::parse(&raw).map_err(refuse)?;
        let link = ext
            .pax_value("linkpath")
            .or(ext.link)
            .or_else(|| entry.link_name_bytes().map(|l| l.into_owned()));
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
                let target = link.ok_or_else(|| refuse("symlink without a target".into()))?;
                release.symlink(&rel, &target)?;
            }
            EntryType::Link => {
                let target = link.ok_or_else(|| refuse("hard link without a target".into()))?;
                let target = RelPath::parse(&target).map_err(|why| {
                    refuse(format!(
                        "hard link target {:?}: {why}",
                        String::from_utf8_lossy(&target)
                    ))
                })?;
                release.hardlink(&rel, &target)?;
            }
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

/// The extension headers read for the next entry.
#[derive(Default)]
struct Extensions {
    /// GNU long name.
    path: Option<Vec<u8>>,
    /// GNU long link target.
    link: Option<Vec<u8>>,
    /// PAX records.
    pax: Option<Vec<u8>>,
}

impl Extensions {
    fn pax_value(&self, key: &str) -> Option<Vec<u8>> {
        tar::PaxExtensions::new(self.pax.as_deref()?)
            .filter_map(Result::ok)
            .find(|r| r.key_bytes() == key.as_bytes())
            .map(|r| r.value_bytes().to_vec())
    }
}

fn nul_trimmed(mut name: Vec<u8>) -> Vec<u8> {
    while name.last() == Some(&0) {
        name.pop();
    }
    name
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
    fn long_names_and_pax_paths_are_checked_like_plain_ones() {
        let long = format!("{}file", "dir/".repeat(40));
        let scene = Scene::new();
        let name = format!("{long}\0");
        let entries = [
            E {
                path: "././@LongLink",
                kind: EntryType::GNULongName,
                mode: 0,
                link: "",
                data: name.as_bytes(),
            },
            file("truncated", b"long"),
        ];
        scene.extract(&entries).unwrap();
        assert_eq!(
            std::fs::read_to_string(scene.dest().join(&long)).unwrap(),
            "long"
        );
        assert!(!scene.dest().join("truncated").exists());

        let evil = E {
            path: "././@LongLink",
            kind: EntryType::GNULongName,
            mode: 0,
            link: "",
            data: b"../evil\0",
        };
        refused(&[evil, file("harmless", b"x")], "../evil", "`..`");
        let evil = E {
            path: "././@LongLink",
            kind: EntryType::GNULongLink,
            mode: 0,
            link: "",
            data: b"/etc\0",
        };
        refused(
            &[evil, link(EntryType::Symlink, "s", "x")],
            "s",
            "absolute link target \"/etc\"",
        );
        let evil = E {
            path: "p",
            kind: EntryType::XHeader,
            mode: 0,
            link: "",
            data: b"15 path=/abs/x\n",
        };
        refused(&[evil, file("harmless", b"x")], "/abs/x", "absolute path");
        let evil = E {
            path: "p",
            kind: EntryType::XHeader,
            mode: 0,
            link: "",
            data: b"16 path=/abs/x\n",
        };
        refused(&[evil, file("harmless", b"x")], "p", "malformed PAX header");
        let evil = E {
            path: "p",
            kind: EntryType::XHeader,
            mode: 0,
            link: "",
            data: b"11 size=99\n",
        };
        refused(&[evil, file("f", b"x")], "f", "PAX size disagrees");
        let huge = vec![b'a'; 5000];
        let evil = E {
            path: "././@LongLink",
            kind: EntryType::GNULongName,
            mode: 0,
            link: "",
            data: &huge,
        };
        refused(
            &[evil, file("f", b"x")],
            "././@LongLink",
            "long name of 5000 bytes",
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
    fn an_archive_made_by_gnu_tar_round_trips() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("src"), t.path().join("dest"));
        let long = format!("{}deep.txt", "nested-directory/".repeat(10));
        std::fs::create_dir_all(src.join(&long).parent().unwrap()).unwrap();
        std::fs::write(src.join(&long), "deep").unwrap();
        std::fs::write(src.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(src.join("run.sh"), PermissionsExt::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("run.sh", src.join("start")).unwrap();
        std::fs::create_dir(&dest).unwrap();
        let a = t.path().join("app.tar.gz");
        let made = std::process::Command::new("tar")
            .arg("-C")
            .arg(&src)
            .arg("-czf")
            .arg(&a)
            .arg(".")
            .status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipped: no working `tar` command");
            return;
        }
        let stats = extract_archive(&a, &dest, &Limits::default()).unwrap();
        assert_eq!(
            stats,
            Stats {
                files: 2,
                bytes: 4 + 10
            }
        );
        assert_eq!(std::fs::read_to_string(dest.join(&long)).unwrap(), "deep");
        let mode = std::fs::metadata(dest.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o750);
        assert_eq!(
            std::fs::read_link(dest.join("start")).unwrap(),
            Path::new("run.sh")
        );
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
