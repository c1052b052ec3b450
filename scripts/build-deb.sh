#!/bin/bash
# make deb: build the Debian packages (debian/) in a scratch copy of the
# tree, so that debhelper's state and staging trees never land in the
# working tree, then check them with lintian.  No network access needed.
#
# Usage: scripts/build-deb.sh
# Env:   DEB_OUT   where the .deb, .buildinfo and .changes files go
#                  (default build/deb; earlier dm-stream ones there are
#                  replaced)
#        DEB_WORK  scratch directory, emptied first (default build/deb-work)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${DEB_OUT:-$top/build/deb}")
work=$(realpath -m "${DEB_WORK:-$top/build/deb-work}")

die() { echo "deb: $*" >&2; exit 1; }

cd "$top"
version=$(dpkg-parsechangelog -S Version)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
changes=dm-stream_${version}_${arch}.changes

rm -rf "$work"
mkdir -p "$work/src" "$out"

# The files git would commit, tracked (less those deleted since) or not
# ignored yet, so that build directories, objects and binaries stay
# behind.  Outside a git checkout: everything but the build directories.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	git ls-files -z --cached --others --exclude-standard |
		while IFS= read -r -d '' f; do
			if [ -e "$f" ] || [ -L "$f" ]; then
				printf '%s\0' "$f"
			fi
		done |
		tar -c --null -T - -f - | tar -x -f - -C "$work/src"
else
	tar -c --exclude=./.git --exclude='./build*' -f - . |
		tar -x -f - -C "$work/src"
fi

# No -dbgsym package: build/deb is for apt install ./build/deb/*.deb.
export DEB_BUILD_OPTIONS="noautodbgsym${DEB_BUILD_OPTIONS:+ $DEB_BUILD_OPTIONS}"
echo "deb: building dm-stream $version in $work (log: $work/build.log)"
if ! (cd "$work/src" && dpkg-buildpackage -b -us -uc) >"$work/build.log" 2>&1; then
	tail -n 40 "$work/build.log" >&2
	die "dpkg-buildpackage failed (log: $work/build.log)"
fi

rm -f "$out"/dm-stream-*_*.deb "$out"/dm-stream_*.buildinfo \
	"$out"/dm-stream_*.changes
mv "$work"/*.deb "$work"/*.buildinfo "$work/$changes" "$out"/

echo "deb: lintian"
lintian --fail-on error "$out/$changes" || die "lintian found errors"
ls -l "$out"
