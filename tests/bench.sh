#!/bin/bash
# make bench: one VM run on Debian's 6.12 kernel, then the boot benchmark
# (STREAM_BENCH_BOOT=0: not); prints ratios only.
set -euo pipefail
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
tag=${STREAM_BENCH_KERNEL:-6.12}
# dm-clone over the kernel's NBD client beside the stream target
# (tests/guest/bench-clone.sh): built out of tree for the stock kernels,
# which have dm-persistent-data; STREAM_BENCH_CLONE=0 leaves it out.
if [ "$tag" = debug ]; then
	STREAM_BENCH_CLONE=0
fi
export STREAM_BENCH_CLONE=${STREAM_BENCH_CLONE:-1}
build_tools
ko=$(build_module "$tag")
initrd=$(build_initramfs "$tag" "$ko")
d=$WORK/bench-disks
mkdir -p "$d"
head -c $((64 << 20)) /dev/urandom >"$d/image.raw"
truncate -s 0 "$d/data.raw" "$d/meta.raw" "$d/tiny.raw" "$d/scratch.raw" \
	"$d/big.raw" "$d/bigmeta.raw"
truncate -s 64M "$d/data.raw" "$d/scratch.raw"
truncate -s 4M "$d/meta.raw"
truncate -s 64K "$d/tiny.raw"
# the in-core memory measurement: a sparse 64 GiB data disk
truncate -s 64G "$d/big.raw"
truncate -s 32M "$d/bigmeta.raw"
log=$WORK/bench.log
# STREAM_BENCH_ONLY: sections of tests/guest/bench.sh joined by +, e.g.
# fill+present (default: all of them).
only=${STREAM_BENCH_ONLY:+ BENCH_ONLY=$STREAM_BENCH_ONLY}
run_vm "$tag" "$initrd" "$log" "stream.suite=bench BENCH_RUNS=${BENCH_RUNS:-5}$only" -- \
	"$d/image.raw" "$d/data.raw" "$d/meta.raw" "$d/tiny.raw" "$d/scratch.raw" \
	"$d/big.raw" "$d/bigmeta.raw"
echo "dm-stream benchmark, kernel $tag under QEMU/TCG, $(grep -ac "^BENCHRUN " "$log") timed pairs"
echo "(ratio = stream time / reference time, per run, measured side by side, order alternating; 1.00 = same speed)"
awk -f "$TOP/tests/bench-report.awk" "$log"
grep -aq "^STREAMTEST-END" "$log" || { echo "bench: guest did not finish, see $log"; exit 1; }

# Issue 9: time-to-ready of a real Debian system, streamed vs copied vs
# local (tests/boot/bench.sh).  STREAM_BENCH_BOOT=0 leaves it out.
[ "${STREAM_BENCH_BOOT:-1}" = 0 ] && exit 0
echo
make -C "$TOP" -s deb DEB_OUT="$WORK/deb" >"$WORK/deb.log" 2>&1 ||
	die "make deb failed (see $WORK/deb.log)"
"$TOP/tests/boot/bench.sh" "$WORK/deb" "$WORK/bootbench"
