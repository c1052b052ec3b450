#!/bin/bash
# make profile: the benchmark's miss-path scenarios under perf in one VM
# run on Debian's 6.12 kernel (tests/guest/profile.sh); PROFILE_WHAT
# picks scenarios (rand,nbdrand,fill,nbdcopy).  A developer's tool:
# nothing is asserted.
set -euo pipefail
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
tag=${STREAM_BENCH_KERNEL:-6.12}
command -v perf >/dev/null || die "perf missing (apt-get install linux-perf)"
export STREAM_PROFILE=1
build_tools
ko=$(build_module "$tag")
initrd=$(build_initramfs "$tag" "$ko")
d=$WORK/profile-disks
mkdir -p "$d"
head -c $((64 << 20)) /dev/urandom >"$d/image.raw"
truncate -s 0 "$d/data.raw" "$d/meta.raw" "$d/tiny.raw" "$d/scratch.raw"
truncate -s 64M "$d/data.raw" "$d/scratch.raw"
truncate -s 4M "$d/meta.raw"
truncate -s 64K "$d/tiny.raw"
log=$WORK/profile.log
run_vm "$tag" "$initrd" "$log" \
	"stream.suite=profile PROFILE_WHAT=${PROFILE_WHAT:-rand,nbdrand,fill,nbdcopy}" -- \
	"$d/image.raw" "$d/data.raw" "$d/meta.raw" "$d/tiny.raw" "$d/scratch.raw"
sed -n '/^STREAMTEST-BEGIN/,/^STREAMTEST-END/p' "$log" | tr -d '\r'
