#!/bin/bash
# make lint: checkpatch.pl --strict on the kernel code (checkpatch comes
# from Debian's linux-source-6.12 tarball), sparse through kbuild (C=2) and
# ShellCheck over every script; cppcheck and a -Werror build of the
# userspace C.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${STREAM_CACHE:-$HOME/.cache/dm-stream}
fail=0

cp_dir=$CACHE/checkpatch
if [ ! -x "$cp_dir/scripts/checkpatch.pl" ]; then
	for tarball in /usr/src/linux-source-6.12.tar.*; do :; done
	mkdir -p "$cp_dir"
	tar -xf "$tarball" -C "$cp_dir" --strip-components=1 \
		linux-source-6.12/scripts/checkpatch.pl \
		linux-source-6.12/scripts/spelling.txt \
		linux-source-6.12/scripts/const_structs.checkpatch
fi
echo "== checkpatch --strict"
if ! "$cp_dir/scripts/checkpatch.pl" --strict --no-tree --terse --show-types \
	--ignore SPDX_LICENSE_TAG,FILE_PATH_CHANGES \
	-f "$top"/kernel/*.c "$top"/kernel/*.h "$top"/tests/kmod/*.c; then
	fail=1
fi
# uapi headers cannot use BIT(): it is not part of the uapi.
if ! "$cp_dir/scripts/checkpatch.pl" --strict --no-tree --terse --show-types \
	--ignore SPDX_LICENSE_TAG,FILE_PATH_CHANGES,BIT_MACRO \
	-f "$top"/kernel/uapi/*.h; then
	fail=1
fi

echo "== sparse"
kdir=${KDIR:-/usr/src/linux-headers-$(cat "$CACHE/kernel-6.12/kver")}
dir=$top/build/sparse
rm -rf "$dir" && mkdir -p "$dir"
mkdir -p "$dir/kernel/uapi"
cp "$top"/kernel/*.[ch] "$dir/kernel/"
cp "$top"/kernel/uapi/*.h "$dir/kernel/uapi/"
cp "$top/Kbuild" "$dir/"
# without the caller's make flags: "make -s lint" would hide the CHECK lines
env -u MAKEFLAGS -u MAKELEVEL make -C "$kdir" M="$dir" C=2 modules \
	>"$dir/log" 2>&1 || { cat "$dir/log"; fail=1; }
if grep -E "warning|error" "$dir/log"; then fail=1; fi
# A sparse run that checked nothing is not a clean one.
checked=$(grep -c "^  CHECK" "$dir/log" || true)
echo "sparse checked $checked files"
[ "$checked" -ge 3 ] || { echo "sparse did not run"; fail=1; }

echo "== cppcheck (userspace C)"
if ! cppcheck --enable=warning,portability,performance --error-exitcode=1 \
	--inline-suppr --std=c11 -q -D__GNUC__ -I "$top/userspace/lib" \
	-I "$top/kernel" "$top"/userspace/*.c "$top/userspace/lib" \
	"$top/tests/tools"; then
	fail=1
fi
echo "== userspace builds with -Werror"
make -s -C "$top" WERROR=1 programs || fail=1

echo "== shellcheck"
shellcheck -x "$top"/scripts/*.sh "$top"/tests/*.sh "$top"/.ci/run || fail=1
(cd "$top/tests/guest" && shellcheck -x -s sh ./*.sh init) || fail=1
shellcheck -x "$top"/tests/boot/mkimage.sh "$top"/tests/boot/run.sh \
	"$top"/tests/boot/bench.sh "$top"/tests/boot/lib.sh || fail=1
shellcheck -s sh "$top"/tests/boot/guest-setup.sh "$top"/dracut/90stream/[ps]*.sh || fail=1
shellcheck -s bash "$top"/dracut/90stream/module-setup.sh || fail=1

[ $fail = 0 ] && echo "lint: clean"
exit $fail
