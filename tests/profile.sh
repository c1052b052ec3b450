#!/bin/bash
# make profile: the benchmark's miss-path scenarios under perf in one VM
# run on Debian's 6.12 kernel (tests/guest/profile.sh); PROFILE_WHAT
# picks scenarios (rand,nbdrand,seq4k,seq64k,fill,nbdcopy,filltime,
# fill_ra0,present,slowlink); PROFILE_ENV adds words (VAR=value) to the
# kernel command line, which the guest's scripts see as variables.  A
# developer's tool: nothing is asserted.
set -euo pipefail
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
tag=${STREAM_BENCH_KERNEL:-6.12}
command -v perf >/dev/null || die "perf missing (apt-get install linux-perf)"
export STREAM_PROFILE=1
build_tools
ko=$(build_module "$tag")
initrd=$(build_initramfs "$tag" "$ko")
# PROFILE_EXTRA=<dir>: its files added to the initramfs as they are (the
# kernel takes concatenated archives), e.g. another streamd to compare.
if [ -n "${PROFILE_EXTRA:-}" ]; then
	(cd "$PROFILE_EXTRA" && find . | cpio -o -H newc --quiet | gzip -1) >>"$initrd"
fi
d=$WORK/profile-disks
mkdir -p "$d"
head -c $((64 << 20)) /dev/urandom >"$d/image.raw"
truncate -s 0 "$d/data.raw" "$d/meta.raw" "$d/tiny.raw" "$d/scratch.raw"
truncate -s 64M "$d/data.raw" "$d/scratch.raw"
truncate -s 4M "$d/meta.raw"
truncate -s 64K "$d/tiny.raw"
log=$WORK/profile.log
run_vm "$tag" "$initrd" "$log" \
	"stream.suite=profile PROFILE_WHAT=${PROFILE_WHAT:-rand,nbdrand,fill,nbdcopy} ${PROFILE_ENV:-}" -- \
	"$d/image.raw" "$d/data.raw" "$d/meta.raw" "$d/tiny.raw" "$d/scratch.raw"
sed -n '/^STREAMTEST-BEGIN/,/^STREAMTEST-END/p' "$log" | tr -d '\r'
