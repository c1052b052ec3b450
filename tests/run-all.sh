#!/bin/bash
# Run every dm-stream suite: build, then for each kernel (Debian 6.1, Debian
# 6.12, the KUnit/KASAN/lockdep debug kernel) boot the main integration
# suite, the clean-reboot pair and the power-cut pairs (after fsync'd
# writes, and in the middle of a snapshot drain); on the debug kernel
# also collect the KUnit results; then the crash-point replay suite.  Ends
# with "N passed, N failed".
#
# Env: STREAM_KERNELS="6.1 6.12 debug" to choose kernels,
#      STREAM_SUITES="main reboot crash crashdrain replay" to choose boots.
set -uo pipefail
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"

KERNELS=${STREAM_KERNELS:-6.1 6.12 debug}
SUITES=" ${STREAM_SUITES:-main reboot crash crashdrain replay} "
want() { case $SUITES in *" $1 "*) return 0 ;; esac; return 1; }
PASS=0
FAIL=0
SKIP=0
SUMMARY=""

record() {	# record <kernel> <name> <PASS|FAIL|SKIP> [why]
	case $3 in
	PASS) PASS=$((PASS + 1)) ;;
	FAIL) FAIL=$((FAIL + 1)); echo "FAIL [$1] $2 ${4:-}" ;;
	SKIP) SKIP=$((SKIP + 1)); echo "SKIP [$1] $2: ${4:-no reason given}" ;;
	esac
}

# Collect STREAMTEST lines of one boot; a boot that did not reach the end
# marker, or whose kernel log has a complaint, is a failure of its own.
collect() {	# collect <kernel> <boot name> <log>
	local k=$1 b=$2 log=$3 name res why n=0
	while read -r _ name res why; do
		record "$k" "$name" "$res" "$why"
		n=$((n + 1))
	done < <(grep -a "^STREAMTEST " "$log" | tr -d '\r')
	if ! grep -aq "^STREAMTEST-END" "$log"; then
		record "$k" "$b-completed" FAIL "boot did not finish (log $log)"
	fi
	# A guest shell error (a missing command or function, a syntax
	# error) can silently skip checks: it fails the boot.
	if grep -aE "^/init: .*(not found|syntax error|parameter not set)" \
		"$log" | head -3 | grep .; then
		record "$k" "$b-guest-shell-clean" FAIL "see $log"
	else
		record "$k" "$b-guest-shell-clean" PASS
	fi
	if kernel_log_bad "$log" >/dev/null; then
		kernel_log_bad "$log" | head -5
		record "$k" "$b-kernel-log-clean" FAIL "see $log"
	else
		record "$k" "$b-kernel-log-clean" PASS
	fi
	grep -a "^MEASURED " "$log" | tr -d '\r' | sed "s/^/[$k] /"
	echo "[$k] $b: $n results"
}

# KTAP from the debug boot's dmesg dump: one result per test case (a
# parameterised case fails if any of its parameters does).  The module is
# loaded twice in that boot (module_reload test): count each case once.
collect_kunit() {
	local k=$1 log=$2 n=0 line
	while read -r line; do
		case $line in
		"ok "*"# SKIP"*) record "$k" "kunit:${line#ok [0-9]* }" SKIP "${line#*# SKIP}" ;;
		"ok "*) record "$k" "kunit:${line#ok [0-9]* }" PASS ;;
		"not ok "*) record "$k" "kunit:${line#not ok [0-9]* }" FAIL ;;
		esac
		n=$((n + 1))
	done < <(sed -n '/^DMESG-BEGIN/,/^DMESG-END/p' "$log" | tr -d '\r' |
		sed -n 's/^\[[ 0-9.]*\] //p' |
		grep -E "^    (not )?ok [0-9]+ " | awk '!seen[$0]++')
	[ $n -gt 0 ] || record "$k" kunit-ran FAIL "no KTAP results in $log"
	echo "[$k] kunit: $n test cases"
}

make_disks() {
	local d=$WORK/disks
	mkdir -p "$d"
	if [ ! -e "$d/image.raw" ]; then
		# 32 MiB: random data with a zero region at blocks [128, 192)
		# of 64 KiB (tests/guest/lib.sh ZERO_FIRST/ZERO_END).
		head -c $((8 << 20)) /dev/urandom >"$d/image.raw.tmp"
		head -c $((4 << 20)) /dev/zero >>"$d/image.raw.tmp"
		head -c $((20 << 20)) /dev/urandom >>"$d/image.raw.tmp"
		mv "$d/image.raw.tmp" "$d/image.raw"
	fi
	truncate -s 0 "$d/data.raw" "$d/meta.raw" "$d/tiny.raw" "$d/scratch.raw" \
		"$d/big.raw" "$d/bigmeta.raw"
	truncate -s 32M "$d/data.raw" "$d/scratch.raw" "$d/bigmeta.raw"
	truncate -s 4M "$d/meta.raw"
	truncate -s 64K "$d/tiny.raw"
	truncate -s 1T "$d/big.raw"	# sparse: for the 1 TiB revert
	DISKS=("$d/image.raw" "$d/data.raw" "$d/meta.raw" "$d/tiny.raw"
	       "$d/scratch.raw" "$d/big.raw" "$d/bigmeta.raw")
}

# Power-cut pair: phase 1 ends with READY_FOR_KILL and QEMU is killed
# without any shutdown; phase 2 boots on the same disks.
crash_pair() {	# crash_pair <kernel> <initrd> <log dir> <suite>
	local k=$1 initrd=$2 logs=$3 suite=$4 rc
	make_disks
	run_vm "$k" "$initrd" "$logs/${suite}1.log" \
		"stream.suite=$suite stream.phase=1" \
		--kill-on READY_FOR_KILL -- "${DISKS[@]}"
	rc=$?
	if [ $rc = 137 ]; then
		record "$k" "$suite-hard-kill" PASS
		# collect without the end marker: the guest never finished
		while read -r _ name res why; do
			record "$k" "$name" "$res" "$why"
		done < <(grep -a "^STREAMTEST " "$logs/${suite}1.log" | tr -d '\r')
	else
		record "$k" "$suite-hard-kill" FAIL "guest never reached READY_FOR_KILL"
	fi
	run_vm "$k" "$initrd" "$logs/${suite}2.log" \
		"stream.suite=$suite stream.phase=2" -- "${DISKS[@]}"
	collect "$k" "${suite}2" "$logs/${suite}2.log"
}

build_tools
make_disks
for k in $KERNELS; do
	echo "=== kernel $k"
	ko=$(build_module "$k") || { record "$k" build FAIL; continue; }
	record "$k" module-build-warning-free PASS
	initrd=$(build_initramfs "$k" "$ko")
	logs=$WORK/logs-$k
	mkdir -p "$logs"
	t0=$(date +%s)

	if want main; then
		run_vm "$k" "$initrd" "$logs/main.log" "stream.suite=main" -- "${DISKS[@]}"
		collect "$k" main "$logs/main.log"
		[ "$k" = debug ] && collect_kunit "$k" "$logs/main.log"
	fi

	if want reboot; then
		make_disks
		run_vm "$k" "$initrd" "$logs/reboot1.log" "stream.suite=reboot stream.phase=1" -- "${DISKS[@]}"
		collect "$k" reboot1 "$logs/reboot1.log"
		run_vm "$k" "$initrd" "$logs/reboot2.log" "stream.suite=reboot stream.phase=2" -- "${DISKS[@]}"
		collect "$k" reboot2 "$logs/reboot2.log"
	fi

	want crash && crash_pair "$k" "$initrd" "$logs" crash
	want crashdrain && crash_pair "$k" "$initrd" "$logs" crashdrain

	# Crash-point replay: records a workload with dm-log-writes, then
	# checks every flush point and 200+ others (tests/guest/replay.sh).
	if want replay; then
		make_disks
		t1=$(date +%s)
		STREAM_VM_TIMEOUT=${STREAM_REPLAY_TIMEOUT:-3600} \
			run_vm "$k" "$initrd" "$logs/replay.log" \
			"stream.suite=replay" -- "${DISKS[@]}"
		collect "$k" replay "$logs/replay.log"
		echo "[$k] replay boot took $(($(date +%s) - t1)) s"
	fi
	echo "[$k] done in $(($(date +%s) - t0)) s"
	SUMMARY="$SUMMARY $k:pass=$PASS,fail=$FAIL"
done
echo "cumulative per kernel:$SUMMARY"
echo "$PASS passed, $FAIL failed, $SKIP skipped"
[ $FAIL = 0 ]
