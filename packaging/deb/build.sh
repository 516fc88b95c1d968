#!/usr/bin/env bash
# Builds the citrus Debian package from already-built binaries, with dpkg-deb (no cargo-deb):
#
#   cargo build --profile dist --bins && packaging/deb/build.sh
#       → target/debian/citrus_<version>_<arch>.deb
#
#   packaging/deb/build.sh [--bin-dir DIR] [--out DIR] [--compress xz|none]
#
# DIR holds citrusd, citrusctl and citrus-engine (default target/dist). The package holds them in
# /usr/bin (stripped); systemd/citrusd.service with /usr/local/bin replaced by /usr/bin; this
# directory's citrusd.toml as the conffile /etc/citrus/citrusd.toml; the man pages and completion
# scripts that `citrusctl generate-docs` writes; postinst, prerm and postrm. The version is the
# binaries' own (`citrusctl --version`). Prints the package's path.
set -euo pipefail
umask 022

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin_dir=$repo/target/dist
out=$repo/target/debian
compress=xz

usage() { echo "usage: $0 [--bin-dir DIR] [--out DIR] [--compress xz|none]" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
        --bin-dir) [ $# -ge 2 ] || usage; bin_dir=$2; shift 2 ;;
        --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
        --compress) [ $# -ge 2 ] || usage; compress=$2; shift 2 ;;
        *) usage ;;
    esac
done
case $compress in xz|none) ;; *) echo "build.sh: --compress takes xz or none, not '$compress'" >&2; exit 2 ;; esac
for bin in citrusd citrusctl citrus-engine; do
    [ -x "$bin_dir/$bin" ] || {
        echo "build.sh: no executable $bin_dir/$bin; build it first: cargo build --profile dist --bins (or pass --bin-dir)" >&2
        exit 2
    }
done
for tool in dpkg-deb dpkg-shlibdeps strip gzip; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool not found; on Debian: apt-get install dpkg-dev binutils" >&2; exit 2; }
done

version=$("$bin_dir/citrusctl" --version | awk '{print $2}')
arch=$(dpkg --print-architecture)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$out" "$root/DEBIAN" "$root/usr/bin" "$root/etc/citrus" "$root/usr/lib/systemd/system" \
    "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
    "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d" \
    "$root/usr/share/doc/citrus"

for bin in citrusd citrusctl citrus-engine; do
    install -m 0755 "$bin_dir/$bin" "$root/usr/bin/$bin"
    strip --strip-unneeded "$root/usr/bin/$bin"
done
# The one unit, for /usr/bin: cloud-init installs the binaries in /usr/local/bin, the package
# in /usr/bin.
sed 's#/usr/local/bin#/usr/bin#g' "$repo/systemd/citrusd.service" > "$root/usr/lib/systemd/system/citrusd.service"
install -m 0644 "$here/citrusd.toml" "$root/etc/citrus/citrusd.toml"

"$bin_dir/citrusctl" generate-docs "$work/docs" >/dev/null
for page in "$work"/docs/man/*.1; do
    gzip -9n < "$page" > "$root/usr/share/man/man1/$(basename "$page").gz"
done
install -m 0644 "$work"/docs/completions/bash/* "$root/usr/share/bash-completion/completions/"
install -m 0644 "$work"/docs/completions/zsh/* "$root/usr/share/zsh/vendor-completions/"
install -m 0644 "$work"/docs/completions/fish/* "$root/usr/share/fish/vendor_completions.d/"
cat > "$root/usr/share/doc/citrus/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: citrus
License: MIT
COPYRIGHT

# Depends: the shared libraries the binaries link, from the system's shlibs/symbols files.
mkdir -p "$work/debian"
printf 'Source: citrus\n\nPackage: citrus\nArchitecture: any\n' > "$work/debian/control"
depends=$(cd "$work" && dpkg-shlibdeps -O root/usr/bin/citrusd root/usr/bin/citrusctl root/usr/bin/citrus-engine 2>/dev/null \
    | sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "build.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$root/DEBIAN/$script"
done
echo /etc/citrus/citrusd.toml > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/control" <<CONTROL
Package: citrus
Version: $version
Architecture: $arch
Maintainer: Citrus maintainers <citrus@localhost>
Depends: $depends
Section: admin
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Homepage: https://github.com/citrus/citrus
Description: per-host process supervisor, operator CLI and fleet engine
 citrusd supervises apps (restarts, logs, health checks, cron jobs, deployments)
 as a systemd service; citrusctl controls it; citrus-engine is the fleet hub.
CONTROL

deb=$out/citrus_${version}_${arch}.deb
if [ "$compress" = none ]; then
    dpkg-deb --root-owner-group -Znone --build "$root" "$deb" >/dev/null
else
    dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
fi
echo "$deb"
