# shellcheck shell=sh
# shellcheck disable=SC2086 # device paths and numbers never hold spaces
# Memory pressure (debug kernel only: FAILSLAB, FAIL_PAGE_ALLOC,
# FAULT_INJECTION_DEBUG_FS), stream.suite=mempressure.
#
# Mixed I/O runs while slab and page allocations fail on purpose
# (Documentation/fault-injection/fault-injection.rst):
#   window A: task-filter N, ignore-gfp-wait Y: atomic allocations fail
#     anywhere (bio completion, the target's non-sleeping paths);
#   window B: task-filter Y, ignore-gfp-wait N: sleeping allocations
#     fail too, but only in tasks with make-it-fail set: every kworker,
#     the target's workqueue rescuer and each writer's dd (the map path
#     runs in the submitter).  streamd and nbdkit are left alone.
# Readers: stream-io verify over blocks 0-299 (absent at the start: the
# misses go through streamd), compared with the image.  Writers: blocks
# 300-499 once each, whole blocks and 4 KiB at 8 KiB, each with an
# fsync.  I/O errors are allowed while injection is on; a read that
# returns wrong data never is.  Then injection off and: every write whose
# fsync succeeded reads back, every failed one reads as before or after,
# blocks 0-299 and 500-511 equal the image, the device reads without
# error.  run()'s watchdog catches hangs, the harness catches KASAN,
# lockdep and WARNING reports (verbose=0: failslab prints nothing).

FI=/sys/kernel/debug
MP_SECONDS=${MP_SECONDS:-20}	# per window, guest time

fi_set() {	# fi_set <attribute> <value>: both failslab and fail_page_alloc
	echo "$2" >$FI/failslab/$1
	echo "$2" >$FI/fail_page_alloc/$1
}

fi_off() {
	[ -d $FI/failslab ] || return 0
	fi_set probability 0
	fi_set task-filter N
	fi_set ignore-gfp-wait Y
	# the stack filter's defaults: every caller
	[ -e $FI/failslab/require-start ] || return 0
	fi_set require-start 0
	fi_set require-end 0xffffffffffffffff
}

# The address range of dm_stream's function $1 and of the symbol after
# it, from /proc/kallsyms: "<start> <end>", in hex.
mod_func_range() {
	grep '\[dm_stream\]' /proc/kallsyms | sort |
		awk -v f="$1" 'found { print "0x" s " 0x" $1; exit }
			       $3 == f { s = $1; found = 1 }'
}

mark_kthreads() {	# make-it-fail <0|1> on kworkers and the rescuer
	for _p in /proc/[0-9]*; do
		case $(cat $_p/comm 2>/dev/null) in
		kworker/*|dm-stream|kdmflush*)
			echo "$1" >$_p/make-it-fail 2>/dev/null || true ;;
		esac
	done
}

# The content block $1 should have after write number $1 (see writer).
expected_block() {	# expected_block <block> <file>
	_b=$1
	if [ $((_b % 2)) = 0 ]; then
		dd if=$IMG of="$2" bs=$BB skip=$((_b - 300)) count=1 2>/dev/null
	else
		dd if=$IMG of="$2" bs=$BB skip=$_b count=1 2>/dev/null
		dd if=$IMG of="$2" bs=4096 skip=$(((_b - 300) * BB / 4096)) \
			seek=2 count=1 conv=notrunc 2>/dev/null
	fi
}

# Even blocks: whole block <- image block b-300; odd: 4 KiB at 8 KiB <-
# the first 4 KiB of image block b-300.  Appends to /tmp/mp.ok,
# /tmp/mp.failed or (a pwrite that wrote part: "<block> <bytes>")
# /tmp/mp.short.  stream-io copy reads the source in full before it sets
# make-it-fail (window B): dd would write what a failed page allocation
# left of its read of the image, and exit 0.
writer() {
	_b=300
	while [ $_b -lt 500 ] && [ ! -e /tmp/mp.stop ]; do
		if [ $((_b % 2)) = 0 ]; then
			_a="$(((_b - 300) * BB)) $DEV $((_b * BB)) $BB"
		else
			_a="$(((_b - 300) * BB)) $DEV $((_b * BB + 8192)) 4096"
		fi
		_mif=0
		[ "$(cat /tmp/mp.window)" = B ] && _mif=1
		_r=0
		_n=$(stream-io copy $IMG $_a $_mif 2>/dev/null) || _r=$?
		case $_r in
		0) echo $_b >>/tmp/mp.ok ;;
		3) echo "$_b $_n" >>/tmp/mp.short ;;
		*) echo $_b >>/tmp/mp.failed ;;
		esac
		_b=$((_b + 1))
	done
}

# What block $1 holds after a short write of $2 bytes: the write's
# first $2 bytes over the block's old content (the image's block).
expected_short() {	# expected_short <block> <bytes> <file>
	_o=0
	[ $(($1 % 2)) = 1 ] && _o=8192
	expected_block $1 "$3.new"
	dd if=$IMG of="$3.old" bs=$BB skip=$1 count=1 2>/dev/null
	{ head -c $((_o + $2)) "$3.new"; tail -c +$((_o + $2 + 1)) "$3.old"; } >"$3"
}

# check_block <what> <block> <expected file>: the block reads as the
# file, or the first differing byte is said.
check_block() {
	dd if=$DEV of=/tmp/got bs=$BB skip=$2 count=1 iflag=direct 2>/dev/null
	cmp -s "$3" /tmp/got && return 0
	echo "# $1: block $2 differs from what was written: $(cmp "$3" /tmp/got 2>&1 | head -n 1)"
	# What a lost write left there instead, for the diagnosis.
	_got=$(md5sum </tmp/got | cut -d' ' -f1)
	if [ "$_got" = "$(blk_sum $IMG $2)" ]; then
		say "block $2 holds the image's block $2: the write was lost, or overwritten by a fetch"
	elif [ "$_got" = "$(head -c $BB /dev/zero | tr '\000' '\377' | md5sum | cut -d' ' -f1)" ]; then
		say "block $2 holds the data device's old 0xff: the write never reached it"
	fi
	return 1
}

reader() {
	_s=1
	while [ ! -e /tmp/mp.stop ]; do
		stream-io verify /dev/mapper/d $IMG 4 40 262144 $_s \
			>/dev/null 2>>/tmp/mp.reads || true
		_s=$((_s + 1))
	done
}

t_mempressure() {
	grep -q " $FI debugfs " /proc/mounts || mount -t debugfs none $FI
	if [ ! -d $FI/failslab ] || [ ! -d $FI/fail_page_alloc ]; then
		echo "# no failslab/fail_page_alloc in debugfs"
		return 1
	fi
	trap 'fi_off; mark_kthreads 0' EXIT
	stream_up
	dmsetup create d --table "0 $((300 * BS)) linear $DEV 0"
	rm -f /tmp/mp.*
	: >/tmp/mp.ok
	: >/tmp/mp.failed
	: >/tmp/mp.short
	: >/tmp/mp.reads
	echo A >/tmp/mp.window

	fi_set verbose 0
	# times counts down with each injected failure: the count is the
	# evidence that injection happened.
	fi_set times 1000000
	fi_set space 0
	fi_set interval 1
	echo 0 >$FI/fail_page_alloc/min-order
	fi_set task-filter N
	fi_set ignore-gfp-wait Y
	fi_set probability 10
	writer &
	wpid=$!
	reader &
	rpid=$!
	sleep $MP_SECONDS
	say "window A over: $(wc -l </tmp/mp.ok) writes ok," \
		"$(wc -l </tmp/mp.failed) failed; $(dmesg | grep -c 'page allocation failure') page allocation failure reports"

	echo B >/tmp/mp.window
	fi_set probability 0
	fi_set task-filter Y
	fi_set ignore-gfp-wait N
	mark_kthreads 1
	fi_set probability 10
	sleep $MP_SECONDS
	fi_off
	mark_kthreads 0
	touch /tmp/mp.stop
	wait $wpid
	wait $rpid
	slab=$((1000000 - $(cat $FI/failslab/times)))
	page=$((1000000 - $(cat $FI/fail_page_alloc/times)))
	say "measured: injected $slab slab and $page page allocation failures"
	[ $((slab + page)) -gt 0 ]
	say "writes ok $(wc -l </tmp/mp.ok), failed $(wc -l </tmp/mp.failed);" \
		"read errors $(grep -vc mismatch /tmp/mp.reads);" \
		"mode $(st 6), present $(present), fetch errors $(st 9)"
	say "measured: $(wc -l </tmp/mp.ok) fsync'd writes, $(wc -l </tmp/mp.short) short, $(wc -l </tmp/mp.failed) failed, $(grep -vc mismatch /tmp/mp.reads) read errors under injection"
	if grep mismatch /tmp/mp.reads; then
		echo "# a read under memory pressure returned wrong data"
		return 1
	fi
	# The writes and reads did run.
	[ "$(wc -l </tmp/mp.ok)" -gt 0 ]

	# Injection off: everything checked.
	if ! is_attached; then
		say "streamd detached during the pressure (see its log); restarting it"
		helper_stop
		helper_start
	fi
	# shellcheck disable=SC2013 # one number a line
	for b in $(cat /tmp/mp.ok); do
		expected_block $b /tmp/exp
		check_block "fsync'd write" $b /tmp/exp
	done
	while read -r b n; do
		say "write to block $b came up short: $n bytes"
		expected_short $b $n /tmp/exp
		check_block "fsync'd short write of $n bytes" $b /tmp/exp
	done </tmp/mp.short
	# shellcheck disable=SC2013 # one number a line
	for b in $(cat /tmp/mp.failed); do
		expected_block $b /tmp/exp
		got=$(blk_sum $DEV $b)
		[ "$got" = "$(md5sum </tmp/exp | cut -d' ' -f1)" ] && continue
		expect_eq "failed write to block $b: old content" \
			"$(blk_sum $IMG $b)" "$got"
	done
	expect_eq "blocks 0-299" \
		"$(dd if=$IMG bs=$BB count=300 2>/dev/null | md5sum)" \
		"$(dd if=$DEV bs=$BB count=300 iflag=direct 2>/dev/null | md5sum)"
	done_to=$((300 + $(wc -l </tmp/mp.ok) + $(wc -l </tmp/mp.failed) + $(wc -l </tmp/mp.short)))
	expect_eq "blocks $done_to-511" \
		"$(dd if=$IMG bs=$BB skip=$done_to 2>/dev/null | md5sum)" \
		"$(dd if=$DEV bs=$BB skip=$done_to iflag=direct 2>/dev/null | md5sum)"
	dd if=$DEV of=/dev/null bs=1M iflag=direct
	dmsetup remove d
}

# streamd's own system calls under memory pressure: sleeping allocations
# the kernel makes in streamd's (main thread's) context fail -- a page
# one time in four, a slab object one time in twenty (channel reads and
# replies, sockets, reconnections) -- while reads wait on absent blocks,
# 8 new ones every 2 s, none adjacent, for 30 s.  The connection is made
# before: with it down the whole window can pass in reconnection
# attempts.  Whether a reply meets one of these failures is chance (the
# last runs saw 0 to 3 in 300 replies), so then, deterministically, the
# stack filter fails exactly one allocation made under chan_write (the
# next reply's), and that reply must be refused and sent again
# (reply_retries).  Then streamd must have kept every request, stay or
# come back attached, and every read returns the image's data.
t_mempressure_helper() {
	grep -q " $FI debugfs " /proc/mounts || mount -t debugfs none $FI
	trap 'fi_off' EXIT
	fresh
	# qemu-nbd, not nbdkit: Debian's nbdkit 1.32 can die of an
	# assertion (raw_send_socket: sock >= 0) when a client closes a
	# connection with reads in flight, which streamd does whenever an
	# injected failure breaks its socket (seen here: the server gone,
	# ECONNREFUSED for the rest of the test).  Its exit is recorded: it
	# is not under test, but a dead server would starve streamd of
	# every chance to reply.
	rm -f $SOCK /tmp/server.exit
	( qemu-nbd -f raw -r -k $SOCK --persistent -e 8 $SRC \
		2>/tmp/qemu-nbd.log &
	  echo $! >/tmp/nbd.pid
	  wait $!
	  echo "$?" >/tmp/server.exit ) &
	wait_for 10 test -S $SOCK
	create
	helper_start
	_sp=$(cat /tmp/streamd.pid)
	expect_eq "block 99 before the pressure" "$(blk_sum $IMG 99)" \
		"$(blk_sum $DEV 99)"
	fi_set verbose 0
	fi_set times 1000000
	fi_set space 0
	fi_set interval 1
	echo 0 >$FI/fail_page_alloc/min-order
	fi_set task-filter Y
	fi_set ignore-gfp-wait N
	echo 1 >/proc/$_sp/make-it-fail
	echo 5 >$FI/failslab/probability
	echo 25 >$FI/fail_page_alloc/probability
	# every other block: each read is a request and a reply of its own
	_pids="" _b=100 _read=""
	_t=0 _rt=0
	while [ $_t -lt 30 ]; do
		for _i in 1 2 3 4 5 6 7 8; do
			(blk_sum $DEV $_b >/tmp/mh.$_b) &
			_pids="$_pids $!"
			_read="$_read $_b"
			_b=$((_b + 2))
		done
		sleep 2
		_t=$((_t + 2))
	done
	fi_off
	if [ -e /tmp/server.exit ]; then
		echo "# the server exited (status $(cat /tmp/server.exit)) under the pressure: $(tail -n 3 /tmp/qemu-nbd.log)"
		return 1
	fi
	slab=$((1000000 - $(cat $FI/failslab/times)))
	page=$((1000000 - $(cat $FI/fail_page_alloc/times)))
	say "measured: streamd's context: injected $slab slab and $page page allocation failures in $_t s"
	[ $((slab + page)) -gt 0 ] ||
		{ echo "# nothing was injected in streamd's context"; return 1; }
	for _p in $_pids; do
		wait $_p || true
	done
	say "measured: $(echo $_read | wc -w) reads under the pressure"
	for _b in $_read; do
		expect_eq "block $_b after the pressure" "$(blk_sum $IMG $_b)" \
			"$(cat /tmp/mh.$_b)"
	done
	wait_for 30 is_attached
	helper_alive
	_rt0=$(helper_stat reply_retries)
	say "measured: replies refused and sent again under the pressure: $_rt0"

	# exactly one allocation under chan_write fails: the next reply's
	_range=$(mod_func_range chan_write)
	set -- $_range
	[ $# = 2 ] || { echo "# chan_write not found in /proc/kallsyms"; return 1; }
	echo "$1" >$FI/failslab/require-start
	echo "$2" >$FI/failslab/require-end
	echo 1 >$FI/failslab/times
	echo 100 >$FI/failslab/probability
	echo 0 >$FI/fail_page_alloc/probability
	echo Y >$FI/failslab/task-filter
	echo N >$FI/failslab/ignore-gfp-wait
	_sum=$(blk_sum $DEV 99)	# present: no reply
	blk_sum $DEV 98 >/tmp/mh.98
	_left=$(cat $FI/failslab/times)
	fi_off
	echo 0 >/proc/$_sp/make-it-fail 2>/dev/null || true
	expect_eq "block 99 (present)" "$(blk_sum $IMG 99)" "$_sum"
	expect_eq "block 98 (its reply refused once)" "$(blk_sum $IMG 98)" \
		"$(cat /tmp/mh.98)"
	expect_eq "failures left to inject under chan_write" 0 "$_left"
	_rt=$(helper_stat reply_retries)
	expect_eq "replies refused and sent again" $((_rt0 + 1)) "$_rt"
	grep -q "reply block 98+1 tag [0-9]*: Cannot allocate memory; will retry" \
		/tmp/streamd.log ||
		{ echo "# no 'will retry' line for block 98 in streamd's log"; return 1; }
	is_attached
	helper_alive
	expect_eq "fetch errors" 0 "$(st 9)"
}
prepare_image || echo "STREAMTEST prepare_image FAIL"
run mempressure t_mempressure
run mempressure_helper t_mempressure_helper
