#!/bin/bash
# Run every dm-stream suite: build, then for each kernel (Debian 6.1, Debian
# 6.12, the KUnit/KASAN/lockdep debug kernel) boot the main integration
# suite, the clean-reboot pair and the power-cut pairs (after fsync'd
# writes, and in the middle of a snapshot drain); on the debug kernel
# also collect the KUnit results; then the crash-point replay suite.  Ends
# with "N passed, N failed".
#
# Env: STREAM_KERNELS="6.1 6.12 debug" to choose kernels (empty: none);
#      STREAM_SUITES="main fio ..." to choose boots (default: all of
#      main reboot crash crashdrain fio fiocrash regress helper mempressure
#      replay boot;
#      mempressure boots on the debug kernel only, reboot, crash and
#      crashdrain on the stock kernels only; boot is not per kernel:
#      tests/boot/run.sh streams a real Debian system);
#      STREAM_ONLY="a+b" runs only those tests of the single-boot suites
#      (main, fio, regress, mempressure): stream.only= on the cmdline;
#      STREAM_LANES=2 (default): two workers take the jobs (the debug
#      kernel, each stock kernel, two groups of boot scenarios) in turn,
#      one per core; 1 runs everything in turn.
#
# Each kernel's results go to $WORK/results-<kernel> ("PASS|FAIL|SKIP
# name why" per line) and its progress to $WORK/run-<kernel>.log; the
# summary adds them up.
set -uo pipefail
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"

KERNELS=${STREAM_KERNELS-6.1 6.12 debug}
SUITES=${STREAM_SUITES:-main reboot crash crashdrain fio fiocrash regress helper mempressure replay boot}
ONLY=${STREAM_ONLY:+stream.only=$STREAM_ONLY}
LANES=${STREAM_LANES:-2}

record() {	# record <kernel> <name> <PASS|FAIL|SKIP> [why]
	echo "$3 $2 ${4:-}" >>"$WORK/results-$1"
	case $3 in
	FAIL) echo "FAIL [$1] $2 ${4:-}" ;;
	SKIP) echo "SKIP [$1] $2: ${4:-no reason given}" ;;
	esac
}

# Collect STREAMTEST lines of one boot; a boot that did not reach the end
# marker, or whose kernel log has a complaint, is a failure of its own.
# Every boot declares the tests it runs in tests/plans/<boot>.plan (one
# name a line).  A declared test that did not report, or a result nobody
# declared, fails; with STREAM_ONLY only the chosen tests are expected.
check_plan() {	# check_plan <kernel> <boot name> <log>
	local k=$1 b=$2 log=$3 plan=$TOP/tests/plans/$2.plan name missing=0
	if [ ! -f "$plan" ]; then
		record "$k" "$b-plan" FAIL "no $plan"
		return
	fi
	while read -r name; do
		[ -n "$name" ] || continue
		if [ -n "${STREAM_ONLY:-}" ]; then
			case "+$STREAM_ONLY+" in *"+$name+"*) ;; *) continue ;; esac
		fi
		if ! grep -aq "^STREAMTEST $name " "$log"; then
			record "$k" "$name" FAIL "declared in $b.plan but did not report"
			missing=$((missing + 1))
		fi
	done <"$plan"
	while read -r _ name _; do
		grep -qx "$name" "$plan" ||
			record "$k" "$name-declared" FAIL "reported but not in $b.plan"
	done < <(grep -a "^STREAMTEST " "$log" | tr -d '\r')
	[ $missing = 0 ] || echo "[$k] $b: $missing declared tests did not report"
}

# What a failed test printed (its checks, streamd's log, the kernel's),
# from its "--- name" line to its verdict: CI keeps only this output.
failure_output() {	# failure_output <kernel> <name> <log>
	tr -d '\r' <"$3" | awk -v t="$2" '
		$0 == "# --- " t { n = 0; grab = 1 }
		grab { buf[n++] = $0 }
		grab && $0 == "STREAMTEST " t " FAIL" { grab = 0; done = 1 }
		END { if (done) for (i = (n > 80 ? n - 80 : 0); i < n; i++) print buf[i] }
	' | sed "s/^/[$1] | /"
}

collect() {	# collect <kernel> <boot name> <log>
	local k=$1 b=$2 log=$3 name res why n=0
	while read -r _ name res why; do
		record "$k" "$name" "$res" "$why"
		[ "$res" = FAIL ] && failure_output "$k" "$name" "$log"
		n=$((n + 1))
	done < <(grep -a "^STREAMTEST " "$log" | tr -d '\r')
	if ! grep -aq "^STREAMTEST-END" "$log"; then
		record "$k" "$b-completed" FAIL "boot did not finish (log $log)"
	fi
	check_plan "$k" "$b" "$log"
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
	grep -a "^STREAMTEST-TIME " "$log" | tr -d '\r' |
		sed "s/^STREAMTEST-TIME /$b /" >>"$(dirname "$log")/times"
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

make_disks() {	# per kernel ($K): lanes run side by side
	local d=$WORK/disks-$K
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
		check_plan "$k" "${suite}1" "$logs/${suite}1.log"
	else
		record "$k" "$suite-hard-kill" FAIL "guest never reached READY_FOR_KILL (status $rc)"
	fi
	# The first boot's console is checked like any other.
	if kernel_log_bad "$logs/${suite}1.log" >/dev/null; then
		kernel_log_bad "$logs/${suite}1.log" | head -5
		record "$k" "${suite}1-kernel-log-clean" FAIL "see $logs/${suite}1.log"
	else
		record "$k" "${suite}1-kernel-log-clean" PASS
	fi
	run_vm "$k" "$initrd" "$logs/${suite}2.log" \
		"stream.suite=$suite stream.phase=2" -- "${DISKS[@]}"
	collect "$k" "${suite}2" "$logs/${suite}2.log"
}

want() { case " $SUITES " in *" $1 "*) return 0 ;; esac; return 1; }

# Crash points per kernel (stream.replay=<other>,<torn>,<max>[,<flush>]):
# the stock kernels explore every FLUSH/FUA point, 200 others and 60 torn
# writes (~0.5 s a point under TCG, 4 min a boot).  The debug kernel
# checks a sample under KASAN and lockdep -- 24 FLUSH/FUA points, 24
# others, 12 torn -- since a point costs it four times as much (2.3 s;
# its full run took 13 min of CI's 60, 100 points 7 min): what it adds is
# the recovery code (every point loads the metadata) under the checkers,
# not more points.
# STREAM_REPLAY_SAMPLE=1 samples on 6.1 and the debug kernel, to iterate.
replay_points() {
	if [ "${STREAM_REPLAY_SAMPLE:-0}" = 1 ] && [ "$1" = debug ]; then
		echo "stream.replay=16,12,0,24"
	elif [ "$1" = debug ]; then
		echo "stream.replay=24,12,0,24"
	elif [ "${STREAM_REPLAY_SAMPLE:-0}" = 1 ] && [ "$1" != 6.12 ]; then
		echo "stream.replay=40,20,0,60"
	else
		echo "stream.replay=200,60,0,0"
	fi
}

# One boot of a single-boot suite.
boot() {	# boot <kernel> <initrd> <log dir> <suite>
	local limit=1500
	make_disks
	# The VM watchdog is for a hung guest (each test has its own in the
	# guest), not a time budget: the debug kernel's main suite takes
	# 17-25 min under TCG and KASAN, more beside a cold boot-image build.
	[ "$1" = debug ] && limit=2700
	STREAM_VM_TIMEOUT=${STREAM_VM_TIMEOUT:-$limit} \
		run_vm "$1" "$2" "$3/$4.log" "stream.suite=$4 $ONLY" -- "${DISKS[@]}"
	collect "$1" "$4" "$3/$4.log"
}

# All boots of kernel $1, in turn.
run_kernel() {
	local k=$1 ko initrd logs t0
	K=$k
	echo "=== kernel $k"
	ko=$(build_module "$k") || { record "$k" build FAIL; return; }
	record "$k" module-build-warning-free PASS
	initrd=$(build_initramfs "$k" "$ko")
	logs=$WORK/logs-$k
	mkdir -p "$logs"
	t0=$(date +%s)

	if want main; then
		boot "$k" "$initrd" "$logs" main
		[ "$k" = debug ] && collect_kunit "$k" "$logs/main.log"
	fi

	# The stock kernels' alone: the clean-reboot and power-cut pairs
	# (under KASAN the recovery they exercise is the replay suite's:
	# every crash point loads the metadata again) and fio, their oracle
	# (under KASAN it would cost the debug kernel a quarter of an hour).
	if [ "$k" != debug ]; then
		if want reboot; then
			make_disks
			run_vm "$k" "$initrd" "$logs/reboot1.log" "stream.suite=reboot stream.phase=1" -- "${DISKS[@]}"
			collect "$k" reboot1 "$logs/reboot1.log"
			run_vm "$k" "$initrd" "$logs/reboot2.log" "stream.suite=reboot stream.phase=2" -- "${DISKS[@]}"
			collect "$k" reboot2 "$logs/reboot2.log"
		fi
		want crash && crash_pair "$k" "$initrd" "$logs" crash
		want crashdrain && crash_pair "$k" "$initrd" "$logs" crashdrain
		want fio && boot "$k" "$initrd" "$logs" fio
		want fiocrash && crash_pair "$k" "$initrd" "$logs" fiocrash
	fi
	# The races (revert against resume, reloads under I/O) want two
	# CPUs running at once (tests/lib.sh: the stock kernels' other
	# suites get one).
	want regress && STREAM_VM_SMP=${STREAM_VM_SMP:-2} \
		boot "$k" "$initrd" "$logs" regress
	want helper && boot "$k" "$initrd" "$logs" helper
	# Fault injection needs the debug kernel's FAILSLAB/FAIL_PAGE_ALLOC.
	if [ "$k" = debug ] && want mempressure; then
		boot "$k" "$initrd" "$logs" mempressure
	fi

	# Crash-point replay: records a workload with dm-log-writes, then
	# checks every flush point and 200+ others (tests/guest/replay.sh).
	if want replay; then
		make_disks
		t1=$(date +%s)
		STREAM_VM_TIMEOUT=${STREAM_REPLAY_TIMEOUT:-3600} \
			run_vm "$k" "$initrd" "$logs/replay.log" \
			"stream.suite=replay $(replay_points "$k")" \
			-- "${DISKS[@]}"
		collect "$k" replay "$logs/replay.log"
		echo "[$k] replay boot took $(($(date +%s) - t1)) s"
	fi
	echo "[$k] done in $(($(date +%s) - t0)) s"
}

# Issue 9: make deb (lintian-clean packages), a Debian bookworm image with
# them installed (DKMS, dracut), booted from a blank disk in the scenarios
# of tests/boot/run.sh; its results count as the "boot" lane.  The
# scenarios run in two groups, which the two workers take like kernels
# (prebuild_boot builds the packages and the image beside them; a group
# that asks before it is done waits on its locks); boot_declared checks
# at the end that every scenario reported.
BOOT_GROUP_a="netboot reboot_no_refetch kiosk_revert outage foreign_disk"
BOOT_GROUP_b="fill_then_local unit_volume capture luks_root"
BOOT_PORT=$((20000 + RANDOM % 5000 * 4))
declare -A BOOT_PORT_OFF=([a]=0 [b]=2)
run_boot() {	# run_boot <group>
	local g=$1 name res why t0 only="" var
	t0=$(date +%s)
	var=BOOT_GROUP_$g
	for name in ${!var}; do
		case " ${STREAM_BOOT_ONLY:-${!var}} " in
		*" $name "*) only="$only $name" ;;
		esac
	done
	[ -n "$only" ] || return 0
	echo "=== boot, group $g:$only (Debian bookworm streamed from the host)"
	build_debs
	grep -q "^FAIL deb " "$WORK/results-boot" && return
	while read -r res name why; do
		case $res in
		MEASURED) echo "[boot] MEASURED $name $why" ;;
		PASS | FAIL | SKIP) record boot "$name" "$res" "$why" ;;
		esac
	# each group its own server ports (tests/boot/lib.sh)
	done < <(STREAM_CACHE=$CACHE STREAM_BOOT_ONLY="$only" \
		STREAM_BOOT_PORT=$((BOOT_PORT + ${BOOT_PORT_OFF[$g]})) \
		"$TOP/tests/boot/run.sh" "$WORK/deb" "$WORK/boot-$g" \
		2>"$WORK/boot-$g.err")
	echo "[boot] group $g done in $(($(date +%s) - t0)) s"
}

build_debs() {	# once, whoever asks first
	(
		flock 9
		[ -e "$WORK/deb.done" ] && exit 0
		if make -C "$TOP" -s deb DEB_OUT="$WORK/deb" >"$WORK/deb.log" 2>&1; then
			record boot deb PASS
		else
			tail -20 "$WORK/deb.log"
			record boot deb FAIL "make deb failed (see $WORK/deb.log)"
		fi
		: >"$WORK/deb.done"
	) 9>"$WORK/deb.lock"
}

# The packages and the image, in the background from the start: on a
# cold run mmdebstrap mostly waits on the archive, beside the CPU-bound
# guests.  The boot groups find them (mkimage.sh's lock) or report what
# failed themselves.
prebuild_boot() {
	build_debs
	grep -q "^FAIL deb " "$WORK/results-boot" && return
	STREAM_CACHE=$CACHE "$TOP/tests/boot/mkimage.sh" "$WORK/deb" \
		>/dev/null 2>"$WORK/boot-prebuild.err"
}

boot_declared() {	# every declared scenario reported
	local name why
	while read -r name; do
		[ -n "$name" ] || continue
		if [ -n "${STREAM_BOOT_ONLY:-}" ]; then
			case " $STREAM_BOOT_ONLY " in *" $name "*) ;; *) continue ;; esac
		fi
		grep -q "^[A-Z]* $name " "$WORK/results-boot" && continue
		case " $BOOT_GROUP_a $BOOT_GROUP_b " in
		*" $name "*) why="see $WORK/boot-*.err" ;;
		*) why="in no group of run-all.sh" ;;
		esac
		record boot "$name" FAIL "declared in boot.plan but did not report ($why)"
	done <"$TOP/tests/plans/boot.plan"
}

# The jobs, in the order the workers take them: the debug kernel first
# (the longest, and on a cold run it builds its kernel), the stock
# kernels, then the boot groups.  Each job's output is kept until it
# ends so that the workers' lines do not interleave.
JOBS=()
for k in $KERNELS; do [ "$k" = debug ] && JOBS+=(debug); done
for k in $KERNELS; do [ "$k" != debug ] && JOBS+=("$k"); done
want boot && JOBS+=(boot-a boot-b)

worker() {
	local j
	for j in "${JOBS[@]}"; do
		mkdir "$WORK/claim-$j" 2>/dev/null || continue
		case $j in
		boot-*) run_boot "${j#boot-}" ;;
		*) run_kernel "$j" ;;
		esac >"$WORK/run-$j.log" 2>&1
		cat "$WORK/run-$j.log"
	done
}

# On a cold cache the debug kernel takes 11 minutes to build: it starts
# now, beside the host tests (which leave a core idle), and the debug
# lane waits for it on scripts/build-debug-kernel.sh's lock.  On a warm
# cache this ends at once.
case " $KERNELS " in
*" debug "*) debug_kdir >/dev/null 2>"$WORK/debug-kernel.log" & ;;
esac

# Host-side unit tests first (tests/unit.sh: userspace/lib, plain and
# under ASan/UBSan).
: >"$WORK/results-host"
while read -r res name why; do
	record host "$name" "$res" "$why"
done < <(STREAM_UNIT_DIR=$WORK/unit "$TOP/tests/unit.sh")
[ -s "$WORK/results-host" ] || record host unit-ran FAIL "tests/unit.sh reported nothing"
# Then the parsers' libFuzzer targets, for a bounded time.
fuzzed=0
while read -r res name why; do
	case $res in
	MEASURED) echo "[host] MEASURED $name $why" ;;
	*) record host "$name" "$res" "$why"; fuzzed=$((fuzzed + 1)) ;;
	esac
done < <(STREAM_FUZZ_DIR=$WORK/fuzz "$TOP/tests/fuzz.sh")
[ $fuzzed -gt 0 ] || record host fuzz-ran FAIL "tests/fuzz.sh reported nothing"
echo "[host] unit: $(grep -c "^PASS " "$WORK/results-host") passed, $(grep -c "^FAIL " "$WORK/results-host") failed"

build_tools
for k in $KERNELS boot; do
	: >"$WORK/results-$k"
done
rm -rf "$WORK"/claim-* "$WORK/deb.done"
# STREAM_LANES workers (default 2: the cores) take the jobs in turn.
t_all=$(date +%s)
if want boot; then
	prebuild_boot &
fi
for _ in $(seq 2 "$LANES"); do
	worker &
done
worker
# All of them: "wait <pid>" on a job that ended long ago can answer "not
# a child of this shell" (bash forgets it once its pid is reused).
wait
want boot && boot_declared
PASS=0 FAIL=0 SKIP=0 SUMMARY=""
lanes="host $KERNELS"
want boot && lanes="$lanes boot"
for k in $lanes; do
	p=$(grep -c "^PASS " "$WORK/results-$k")
	f=$(grep -c "^FAIL " "$WORK/results-$k")
	s=$(grep -c "^SKIP " "$WORK/results-$k")
	PASS=$((PASS + p)) FAIL=$((FAIL + f)) SKIP=$((SKIP + s))
	SUMMARY="$SUMMARY $k:pass=$p,fail=$f,skip=$s"
done
echo "all kernels done in $(($(date +%s) - t_all)) s"
echo "per kernel:$SUMMARY"
echo "$PASS passed, $FAIL failed, $SKIP skipped"
[ $FAIL = 0 ]
