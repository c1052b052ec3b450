#!/bin/bash
# make bench: one VM run on Debian's 6.12 kernel, then the boot benchmark
# (STREAM_BENCH_BOOT=0: not); prints ratios only.
set -euo pipefail
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
tag=${STREAM_BENCH_KERNEL:-6.12}
build_tools
ko=$(build_module "$tag")
initrd=$(build_initramfs "$tag" "$ko")
d=$WORK/bench-disks
mkdir -p "$d"
head -c $((64 << 20)) /dev/urandom >"$d/image.raw"
truncate -s 0 "$d/data.raw" "$d/meta.raw" "$d/tiny.raw" "$d/scratch.raw"
truncate -s 64M "$d/data.raw" "$d/scratch.raw"
truncate -s 4M "$d/meta.raw"
truncate -s 64K "$d/tiny.raw"
log=$WORK/bench.log
run_vm "$tag" "$initrd" "$log" "stream.suite=bench" -- \
	"$d/image.raw" "$d/data.raw" "$d/meta.raw" "$d/tiny.raw" "$d/scratch.raw"
echo "dm-stream benchmark, kernel $tag under QEMU/TCG (ratio = stream / reference; 1.00 = same speed)"
grep -a "^BENCH " "$log" | tr -d '\r' | awk '{printf "  %-48s %s\n", $2, $3}'
grep -a "^BENCHNOTE " "$log" | tr -d '\r' | sed 's/^BENCHNOTE /  note: /'
grep -aq "^STREAMTEST-END" "$log" || { echo "bench: guest did not finish, see $log"; exit 1; }

# Issue 9: time-to-ready of a real Debian system, streamed vs copied vs
# local (tests/boot/bench.sh).  STREAM_BENCH_BOOT=0 leaves it out.
[ "${STREAM_BENCH_BOOT:-1}" = 0 ] && exit 0
echo
make -C "$TOP" -s deb DEB_OUT="$WORK/deb" >"$WORK/deb.log" 2>&1 ||
	die "make deb failed (see $WORK/deb.log)"
"$TOP/tests/boot/bench.sh" "$WORK/deb" "$WORK/bootbench"
