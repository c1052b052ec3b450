# shellcheck shell=sh
# shellcheck disable=SC2034 # constants used by the suites sourcing this
# shellcheck disable=SC2086 # device paths and numbers never hold spaces
# Guest-side test functions (busybox ash).  Disks, in order:
#   vda image (read-only), vdb data, vdc metadata, vdd tiny (64 KiB),
#   vde scratch (same size as the image), vdf 1 TiB (sparse) and vdg
#   32 MiB for the large-device revert.
IMG=/dev/vda
DATA=/dev/vdb
META=/dev/vdc
TINY=/dev/vdd
SCRATCH=/dev/vde
BIG=/dev/vdf
BIGMETA=/dev/vdg
BS=${BS:-128}			# sectors (64 KiB)
BB=$((BS * 512))		# bytes
SRC=/tmp/image.raw		# what the NBD servers export: $IMG, sparse
ZERO_FIRST=128			# blocks [128, 192) of the image are zero
ZERO_END=192
SOCK=/tmp/nbd.sock
URI="nbd+unix:///?socket=$SOCK"
DEV=/dev/mapper/s
SZ=$(blockdev --getsz $IMG)
NBLOCKS=$((SZ / BS))

say() { echo "# $*"; }

# The export: a sparse copy of the image on tmpfs, so that the servers'
# base:allocation reports the zero region as a hole.
prepare_image() {
	[ -f $SRC ] && return 0
	truncate -s $((SZ * 512)) $SRC
	dd if=$IMG of=$SRC bs=$BB count=$ZERO_FIRST conv=notrunc 2>/dev/null
	dd if=$IMG of=$SRC bs=$BB skip=$ZERO_END seek=$ZERO_END conv=notrunc \
		2>/dev/null
	cmp $IMG $SRC
}

# status field: bs present/total dirty parked attached mode fetched zero
# errors generation -> st <n> (1-based after the target name)
st() { dmsetup status s | awk -v n="$1" '{print $(3 + n)}'; }

# Present blocks, once the count holds still for 50 ms: a read served
# from the helper's reply completes a moment before its block is marked
# present, and readahead lands in the background.
present() {
	_p=$(st 2 | cut -d/ -f1) _i=0
	while [ $_i -lt 100 ]; do
		sleep 0.05
		_q=$(st 2 | cut -d/ -f1)
		[ "$_q" = "$_p" ] && break
		_p=$_q _i=$((_i + 1))
	done
	echo "$_p"
}

wait_for() {	# wait_for <seconds> <command...>
	_t=$(($1 * 10))
	shift
	while ! "$@"; do
		_t=$((_t - 1))
		[ $_t -gt 0 ] || return 1
		sleep 0.1
	done
}

# A TCP socket listening on 127.0.0.1:<port> (hex, as /proc/net/tcp has it):
# the remote address is 0:0 and the state 0A (LISTEN); a bare ":port " match
# would also take a TIME_WAIT left by the last test's connection.
tcp_listening() {	# tcp_listening <port in hex>
	grep -q "^ *[0-9]*: 0100007F:$1 00000000:0000 0A " /proc/net/tcp
}

gone() { ! kill -0 "$1" 2>/dev/null; }	# gone <pid>
is_attached() { [ "$(st 5)" = attached ]; }

server_start() {	# server_start [nbdkit|qemu-nbd] [filter|key=value ...]
	_srv=${1:-nbdkit}
	[ $# -gt 0 ] && shift
	rm -f $SOCK
	case $_srv in
	nbdkit)
		_f="" _p=""
		for _a in "$@"; do
			case $_a in
			*=*) _p="$_p $_a" ;;
			*) _f="$_f --filter=$_a" ;;
			esac
		done
		# shellcheck disable=SC2086
		nbdkit -U $SOCK -P /tmp/nbd.pid --filter=log $_f \
			file file=$SRC logfile=/tmp/nbd.log $_p ;;
	qemu-nbd)
		qemu-nbd -f raw -r -k $SOCK --persistent $SRC \
			>/tmp/qemu-nbd.log 2>&1 &
		echo $! >/tmp/nbd.pid ;;
	esac
	wait_for 10 test -S $SOCK
}

server_stop() {
	if [ -f /tmp/nbd.pid ]; then
		kill "$(cat /tmp/nbd.pid)" 2>/dev/null || true
	fi
	rm -f /tmp/nbd.pid
	pidof nbdkit qemu-nbd >/dev/null || return 0
	wait_for 5 sh -c "! pidof nbdkit qemu-nbd >/dev/null" || true
}

# Reads the server saw at byte offset $1 (nbdkit log filter).
server_reads_at() {
	grep -c "Read id=.* offset=$(printf '0x%x' "$1") " /tmp/nbd.log || true
}

server_reads() { grep -c "Read id=" /tmp/nbd.log || true; }

# helper_start [streamd options]: streamd on device s and $URI (or
# $HELPER_URI), its log in /tmp/streamd.log, its pid in /tmp/streamd.pid
# and, once it has exited, its exit status in /tmp/streamd.rc (run()
# checks both after every test; see streamd_allow).
# shellcheck disable=SC2120 # the suites pass streamd options
helper_start() {
	# the exit status of the helper before, for streamd_verdict
	[ -f /tmp/streamd.rc ] && cat /tmp/streamd.rc >>/tmp/streamd.rcs
	rm -f /tmp/stats /tmp/streamd.pid /tmp/streamd.rc
	(
		streamd "$@" -s /tmp/stats s "${HELPER_URI:-$URI}" \
			2>>/tmp/streamd.log &
		echo $! >/tmp/streamd.pid
		_hrc=0
		wait $! || _hrc=$?	# the caller's set -e is in force here
		echo $_hrc >/tmp/streamd.rc
	) &
	wait_for 10 test -s /tmp/streamd.pid
	wait_for 10 is_attached
}

# A helper that does not exit within 15 s of SIGTERM is killed, and its
# status is "hung" (which streamd_verdict fails).
helper_stop() {
	[ -f /tmp/streamd.pid ] || return 0
	kill "$(cat /tmp/streamd.pid)" 2>/dev/null || true
	if ! wait_for 15 test -f /tmp/streamd.rc; then
		kill -9 "$(cat /tmp/streamd.pid)" 2>/dev/null || true
		wait_for 5 test -f /tmp/streamd.rc || true
		echo hung >/tmp/streamd.rc
	fi
	rm -f /tmp/streamd.pid
}

# streamd_allow <ERE>: lines of streamd's log that this test provokes on
# purpose; "exit <n>": an exit status it provokes.
streamd_allow() { echo "$1" >>/tmp/streamd.allow; }

# After a test: streamd (if it ran) exited 0 when stopped, and its log has
# no failed/dropped/malformed/exiting line the test did not allow.
# Every helper the test started counts (/tmp/streamd.rcs holds the
# statuses of those before the last).
streamd_verdict() {
	helper_stop
	[ -f /tmp/streamd.rc ] && cat /tmp/streamd.rc >>/tmp/streamd.rcs
	rm -f /tmp/streamd.rc
	touch /tmp/streamd.rcs
	while read -r _src; do
		[ "$_src" = 0 ] && continue
		streamd_allowed "exit $_src" && continue
		echo "# streamd exited with status $_src"
		return 1
	done </tmp/streamd.rcs
	streamd_log_ok
}

streamd_allowed() { [ -f /tmp/streamd.allow ] && grep -qx "$1" /tmp/streamd.allow; }

# streamd's log so far has no failed/dropped/malformed/exiting line the
# test did not allow (streamd may still be running).
streamd_log_ok() {
	touch /tmp/streamd.allow
	[ -s /tmp/streamd.allow ] || echo '^$' >/tmp/streamd.allow
	if [ -f /tmp/streamd.log ] &&
	   grep -vE '^[a-z_]+=[0-9]+$' /tmp/streamd.log |
	   grep -E "failed|dropped|malformed|exiting" |
	   grep -vEf /tmp/streamd.allow | grep .; then
		echo "# streamd logged the lines above"
		return 1
	fi
	return 0
}

helper_alive() {
	kill -0 "$(cat /tmp/streamd.pid)" 2>/dev/null ||
		{ echo "# streamd exited"; return 1; }
}

helper_stat() {	# counter from streamd --stats (SIGUSR1 refreshes)
	kill -USR1 "$(cat /tmp/streamd.pid)" 2>/dev/null && sleep 0.3
	sed -n "s/^$1=//p" /tmp/stats
}

# shellcheck disable=SC2120 # the suites pass feature arguments
create() {	# create [extra table words]
	dmsetup create s --table "0 $SZ stream $META $DATA $BS $*"
}

# Every test starts and ends with it: one dmsetup ls, not a dmsetup info
# per device (each a second under TCG with the debug kernel).
teardown() {
	helper_stop
	_devs=" $(dmsetup ls 2>/dev/null | cut -f1 | tr '\n' ' ') "
	case $_devs in
	*" s "*)
		# readers a failed test left parked would hold it open
		dmsetup message s 0 fail_parked >/dev/null 2>&1 || true
		wait_for 5 dmsetup remove s >/dev/null 2>&1 || dmsetup remove s
		;;
	esac
	# first: a server may export one of the devices below
	server_stop
	# Devices some tests stack or add; gone unless a test failed.
	for _d in big m d c bad e; do
		case $_devs in
		*" $_d "*) dmsetup remove $_d ;;
		esac
	done
}

# Fresh metadata; data filled with 0xff so that a block wrongly marked
# present reads as garbage instead of passing by luck.  The 0xff image is
# made once, in /tmp (tmpfs): busybox tr takes 1-2 s for it under TCG,
# the copy 0.3 s, and every test starts with this.
FF=/tmp/ff.img
fresh() {
	teardown
	dd if=/dev/zero of=$META bs=64k count=16 conv=fsync 2>/dev/null
	if [ ! -s $FF ]; then
		tr '\000' '\377' </dev/zero | dd of=$FF.tmp bs=1M \
			count=$((SZ / 2048)) iflag=fullblock 2>/dev/null
		mv $FF.tmp $FF
	fi
	dd if=$FF of=$DATA bs=1M oflag=direct 2>/dev/null
	rm -f /tmp/nbd.log /tmp/streamd.log
}

# The common start of a test: fresh disks, nbdkit, the table, a helper.
# shellcheck disable=SC2119 # defaults for create and helper_start
stream_up() {
	fresh
	server_start nbdkit
	create
	helper_start
}

# dirty_and_slow_target <n>: blocks 100..100+n-1 written (dirty for every
# consumer), and a drain target for them, /tmp/t.sock (nbdkit, writes
# delayed 50 ms, pid in /tmp/t.pid, backed by /tmp/target.raw).
dirty_and_slow_target() {
	dd if=$IMG of=$DEV bs=$BB skip=0 seek=100 count="$1" oflag=direct \
		conv=fsync 2>/dev/null
	truncate -s $((SZ * 512)) /tmp/target.raw
	rm -f /tmp/t.sock	# a killed nbdkit may leave it
	nbdkit -U /tmp/t.sock -P /tmp/t.pid --filter=delay file \
		file=/tmp/target.raw delay-write=50ms
	wait_for 10 test -S /tmp/t.sock
}

blk_sum() {	# blk_sum <dev> <block>
	dd if="$1" bs=$BB skip="$2" count=1 iflag=direct 2>/dev/null | md5sum |
		cut -d' ' -f1
}

dev_sum() { dd if="$1" bs=1M iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1; }

expect_eq() {	# expect_eq <what> <expected> <actual>
	[ "$2" = "$3" ] && return 0
	echo "# $1: expected '$2', got '$3'"
	return 1
}

# The deterministic writes shared by the reload/reboot/crash tests:
# whole block 3 <- image block 40; 4 KiB at 8 KiB into block 5 <- image
# bytes of block 41.  Applied to $1 (the device, or a copy of the image).
apply_writes() {
	dd if=$IMG of="$1" bs=$BB skip=40 seek=3 count=1 conv=notrunc,fsync \
		oflag=direct 2>/dev/null &&
	dd if=$IMG of="$1" bs=4096 skip=$((41 * BB / 4096)) \
		seek=$((5 * BB / 4096 + 2)) count=1 conv=notrunc,fsync \
		oflag=direct 2>/dev/null
}

expected_image() {	# the image with apply_writes applied, in $SCRATCH
	dd if=$IMG of=$SCRATCH bs=1M conv=fsync 2>/dev/null
	apply_writes $SCRATCH
}

T=""
TEST_TIMEOUT=${TEST_TIMEOUT:-240}
# run <name> <function>; stream.only=<a>+<b> runs just those.  The
# function passes (0), is skipped (77, after a "# reason" line) or fails.
run() {
	case "+${ONLY:-$1}+" in
	*"+$1+"*) ;;
	*) return 0 ;;
	esac
	T=$1
	say "--- $T"
	_t0=$(cut -d. -f1 /proc/uptime)
	rm -f /tmp/streamd.log /tmp/streamd.allow /tmp/streamd.rc \
		/tmp/streamd.rcs
	# Not inside "if": set -e must stay in force in the subshell.
	( set -e; "$2" ) >/tmp/test.out 2>&1 &
	_pid=$!
	( sleep "$TEST_TIMEOUT"; echo "# TIMEOUT after ${TEST_TIMEOUT}s" \
		>>/tmp/test.out; kill -9 $_pid ) 2>/dev/null &
	_dog=$!
	wait $_pid
	_rc=$?
	kill $_dog 2>/dev/null
	if [ $_rc = 0 ] && ! streamd_verdict >>/tmp/test.out 2>&1; then
		_rc=1
	fi
	if [ $_rc = 0 ]; then
		# Measurements a passing test reports (never asserted on).
		sed -n "s/^# measured: /MEASURED $T: /p" /tmp/test.out
		echo "STREAMTEST $T PASS"
	elif [ $_rc = 77 ]; then
		# 77 (as automake's): the environment lacks what the test
		# needs; its last "# " line says what.
		echo "STREAMTEST $T SKIP $(sed -n 's/^# //p' /tmp/test.out | tail -n 1)"
	else
		cat /tmp/test.out
		echo "# streamd log (first 10 and last 20 lines):"
		head -n 10 /tmp/streamd.log 2>/dev/null
		echo "# ..."
		tail -n 20 /tmp/streamd.log 2>/dev/null
		echo "# kernel log:"; dmesg | tail -n 15
		echo "STREAMTEST $T FAIL"
	fi
	teardown >/dev/null 2>&1
	# Guest seconds the test took, teardown included (run-all.sh keeps
	# them in <log dir>/times to show where a lane's time goes).
	echo "STREAMTEST-TIME $T $(($(cut -d. -f1 /proc/uptime) - _t0))"
}

skip() { echo "STREAMTEST $1 SKIP $2"; }

# Phase 1 of a two-boot test: run <function> in a subshell with set -e and
# report it (no watchdog: the boot's own timeout covers it), with
# streamd's exit status and log held to the same rules as in run();
# "running": streamd stays up (the power cut comes with it serving), and
# only its log so far is checked.
run_phase() {	# run_phase <name> <function> [running]
	rm -f /tmp/streamd.log /tmp/streamd.allow /tmp/streamd.rc \
		/tmp/streamd.rcs
	# Not inside "if": set -e must stay in force in the subshell.
	( set -e; "$2" ) >/tmp/test.out 2>&1
	_rc=$?
	if [ $_rc = 0 ]; then
		if [ "${3:-}" = running ]; then
			streamd_log_ok >>/tmp/test.out 2>&1 || _rc=1
		else
			streamd_verdict >>/tmp/test.out 2>&1 || _rc=1
		fi
	fi
	if [ $_rc = 0 ]; then
		echo "STREAMTEST $1 PASS"
	else
		cat /tmp/test.out
		echo "STREAMTEST $1 FAIL"
	fi
}

# ... of a power-cut pair: then announce READY_FOR_KILL and wait for the
# host to kill QEMU.
phase1_then_kill() {	# phase1_then_kill <name> <function>
	run_phase "$1" "$2" running
	echo "READY_FOR_KILL"
	sleep 600
}
# expect_refused [--readonly] <name> <message> <table...>: the load must
# fail with a kernel log line naming <message> (a basic regex).
expect_refused() {
	_ro=""
	if [ "$1" = --readonly ]; then _ro=--readonly; shift; fi
	_name=$1 _msg=$2
	shift 2
	T=$_name
	_n=$(dmesg | wc -l)
	if dmsetup create $_ro s --table "$*" >/tmp/test.out 2>&1; then
		dmsetup remove s
		echo "# table accepted: $*"
		echo "STREAMTEST $T FAIL"
	elif dmesg | tail -n +$((_n + 1)) | grep -q "stream: $_msg"; then
		echo "STREAMTEST $T PASS"
	else
		echo "# wanted '$_msg', kernel said:"; dmesg | tail -n 3
		echo "STREAMTEST $T FAIL"
	fi
	dmsetup remove s >/dev/null 2>&1 || true
}
