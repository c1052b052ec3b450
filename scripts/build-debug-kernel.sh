#!/bin/bash
# Build the KUnit/KASAN/lockdep debug kernel from Debian's linux-source-6.12,
# tinyconfig + tests/debug-kernel.config. Cached outside the repo under
# $STREAM_CACHE/debug-<hash of fragment>; prints the build directory.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${STREAM_CACHE:-$HOME/.cache/dm-stream}
frag=$top/tests/debug-kernel.config
hash=$(sha256sum "$frag" | cut -c1-16)
out=$CACHE/debug-$hash
mkdir -p "$CACHE"
# One build at a time: concurrent callers wait for it, then reuse it.
exec 9>"$CACHE/debug-$hash.lock"
flock 9
if [ -e "$out/.done" ]; then
	echo "$out/src"
	exit 0
fi
tarball=""
for t in /usr/src/linux-source-6.12.tar.*; do
	[ -e "$t" ] && tarball=$t
done
[ -n "$tarball" ] || { echo "build-debug-kernel: linux-source-6.12 missing (run scripts/setup.sh)" >&2; exit 1; }
rm -rf "$out" && mkdir -p "$out"
echo "build-debug-kernel: extracting $tarball" >&2
tar -xf "$tarball" -C "$out"
mv "$out"/linux-source-6.12 "$out/src"
cd "$out/src"
make -s tinyconfig >&2
scripts/kconfig/merge_config.sh -m .config "$frag" >/dev/null
make -s olddefconfig >&2
# Every line of the fragment must have survived Kconfig's dependency checks.
fail=0
while IFS= read -r l; do
	case $l in CONFIG_*=n) continue ;; CONFIG_*) ;; *) continue ;; esac
	grep -qx "$l" .config || { echo "build-debug-kernel: $l dropped by Kconfig" >&2; fail=1; }
done <"$frag"
[ $fail = 0 ] || exit 1
echo "build-debug-kernel: building (several minutes)" >&2
make -s -j"$(nproc)" bzImage modules_prepare >&2
make -s -j"$(nproc)" modules >&2 || true
touch "$out/.done"
echo "$out/src"
