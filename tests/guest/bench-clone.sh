# shellcheck shell=sh
# shellcheck disable=SC2086 # device paths and numbers never hold spaces
# dm-clone over the kernel's NBD client, measured in the benchmark VM
# beside the stream target: sourced after lib.sh (busybox ash); defines
# clone_bench and nothing runs at sourcing.
#
# dm-clone (Debian does not build it: tests/lib.sh build_dm_clone, in the
# initramfs with STREAM_BENCH_CLONE=1) copies a source device to a
# destination region by region.  Its source here is /dev/nbd0, attached
# by nbd-client to the same nbdkit export of the same image ($SRC through
# server_start) that streamd reads; destination $DATA, metadata $META,
# 4 KiB regions.  Every figure is printed as
#	CLONE <metric> <microseconds> run<i>
# CLONE_RUNS times (5), for the caller to take medians; a run that fails
# prints "BENCHNOTE dm-clone: <metric> run<i> failed: <why>" instead.
#
#   cold_rand4k     stream-io rand (the bench's 4 KiB random reads) on a
#                   fresh clone, background hydration off (no_hydration)
#   second_rand4k   the same reads again: dm-clone keeps nothing it read,
#                   only regions hydration (or a write) copied
#   cold_seq1m      dd bs=1M iflag=direct over the whole fresh clone,
#                   hydration off
#   nbdcopy_whole   nbdcopy from the same export to null:, for reference
#   hydrate_default enable_hydration on a fresh clone until its status
#                   counts every region hydrated, default
#                   hydration_threshold and hydration_batch_size (1, 1)
#   hydrate_tuned   the same with CLONE_THRESHOLD and CLONE_BATCH
#
# The hydration times: see clone_hydrate.

CLONE_NBD=/dev/nbd0
CLONE_DEV=/dev/mapper/clone
CLONE_REGION=8			# sectors: 4 KiB
# Tuned hydration (threshold: regions in flight; batch: regions per
# kcopyd job): a trial on 6.12 under TCG (benchclone suite with
# CLONE_TRIAL, 3 runs of each pair, host busy with other guests) took,
# in median seconds to hydrate the 64 MiB: 1:1 (the default) 12.7 (one
# run), 256:256 1.32, 2048:512 0.99, 1024:1024 0.96, 4096:256 0.95,
# 4096:1024 0.98, 8192:2048 1.09, 16384:16384 1.04.  From 1024 regions
# in flight and batches of 256 up it is flat within the noise; 4096:1024
# (four 4 MiB jobs in flight) was among the fastest in each of three
# such trials.
CLONE_THRESHOLD=${CLONE_THRESHOLD:-4096}
CLONE_BATCH=${CLONE_BATCH:-1024}
CLONE_POLL=0.02			# seconds
CLONE_POLL_HZ=50		# polls in a second, at most

clone_us() { stream-io now; }	# microseconds, monotonic

# clone_time <metric> <run> <command...>: prints the CLONE line.
clone_time() {
	_cm=$1 _cr=$2
	shift 2
	_ct0=$(clone_us)
	if "$@" >/tmp/clone-cmd.log 2>&1; then
		echo "CLONE $_cm $(($(clone_us) - _ct0)) run$_cr"
	else
		echo "BENCHNOTE dm-clone: $_cm run$_cr failed: $* ($(tail -n 1 /tmp/clone-cmd.log))"
		return 1
	fi
}

clone_remove() {
	dmsetup info clone >/dev/null 2>&1 || return 0
	wait_for 10 dmsetup remove clone >/dev/null 2>&1 || dmsetup remove clone
}

# nbdkit on $SOCK (lib.sh server_start, as the stream target's runs) and
# /dev/nbd0 attached to it.  -b 4096: the region size.
clone_up() {
	teardown
	prepare_image || return 1
	server_start nbdkit || { echo "BENCHNOTE dm-clone: nbdkit did not start"; return 1; }
	if ! nbd-client -unix $SOCK $CLONE_NBD -b 4096 >/tmp/nbd-client.log 2>&1; then
		echo "BENCHNOTE dm-clone: nbd-client failed: $(tr '\n' ' ' </tmp/nbd-client.log)"
		return 1
	fi
	wait_for 10 sh -c "[ \"\$(blockdev --getsz $CLONE_NBD 2>/dev/null)\" = $SZ ]" ||
		{ echo "BENCHNOTE dm-clone: $CLONE_NBD did not come up with $SZ sectors"; return 1; }
}

clone_down() {
	clone_remove
	nbd-client -d $CLONE_NBD >/dev/null 2>&1 || true
	server_stop
}

# A new clone: the metadata's first MiB zeroed (an all-zero superblock
# makes dm-clone format it), background hydration off.  The destination
# keeps whatever it held: with fresh metadata nothing of it is read.
clone_fresh() {
	clone_remove
	dd if=/dev/zero of=$META bs=64k count=16 conv=fsync 2>/dev/null
	dmsetup create clone --table \
		"0 $SZ clone $META $DATA $CLONE_NBD $CLONE_REGION 1 no_hydration" ||
		{ echo "BENCHNOTE dm-clone: dmsetup create clone failed"; return 1; }
}

# Status: <mbs> <used>/<total> <region> <hydrated>/<total> <hydrating> ...
clone_hydrated() {
	dmsetup status clone | awk '{ split($7, r, "/"); exit !(r[1] == r[2]) }'
}

# Sectors written to the destination disk so far, into _cw: a builtin
# read of its sysfs stat (field 7), no fork.
clone_written() {
	read -r _cw _cw _cw _cw _cw _cw _cw _cwrest </sys/block/${DATA#/dev/}/stat
}

# Sleep CLONE_POLL seconds without a fork: the sleep applet is a fork and
# an exec, about 10 ms a time under TCG; busybox ash's read -t takes
# fractions, and a fifo opened read-write never has data nor an end.
clone_nap() {
	[ -p /tmp/clone.fifo ] || mkfifo /tmp/clone.fifo
	# shellcheck disable=SC3045 # busybox ash
	read -r -t $CLONE_POLL _cx <>/tmp/clone.fifo || true
}

# clone_hydrate <metric> <run> [<threshold> <batch>]: a fresh clone,
# the tuning messages, then the time from enable_hydration until every
# region is hydrated (at most 900 s).
#
# Not by polling the status: one "dmsetup status | awk" costs about
# 60 ms of the guest's one CPU under TCG (benchclone suite, CLONE_TRIAL),
# taken from the copy it is timing (polled every 0.2 s, the default
# hydration took 19 s in a trial; 11-15 s with the polls below).  Nothing but hydration writes to the
# destination, every region once, and a region is marked hydrated in
# the completion of its write: the clock stops when the destination's
# write counter has grown by the device's size (builtins only, every
# CLONE_POLL seconds), and the status must then say every region is
# hydrated.  Run 1 also checks the copy against the image.
clone_hydrate() {
	_cm=$1 _cr=$2
	clone_fresh || return 1
	if [ $# -ge 4 ]; then
		if ! dmsetup message clone 0 hydration_threshold "$3" ||
		   ! dmsetup message clone 0 hydration_batch_size "$4"; then
			echo "BENCHNOTE dm-clone: $_cm run$_cr failed: tuning messages"
			return 1
		fi
	fi
	clone_written
	_cw0=$_cw
	_cn=$((900 * CLONE_POLL_HZ))
	_ct0=$(clone_us)
	dmsetup message clone 0 enable_hydration ||
		{ echo "BENCHNOTE dm-clone: $_cm run$_cr failed: enable_hydration"; return 1; }
	while clone_written && [ $((_cw - _cw0)) -lt $SZ ]; do
		_cn=$((_cn - 1))
		if [ $_cn -le 0 ]; then
			echo "BENCHNOTE dm-clone: $_cm run$_cr failed: not hydrated after 900 s: $(dmsetup status clone)"
			return 1
		fi
		clone_nap
	done
	_ct1=$(clone_us)
	if ! wait_for 5 clone_hydrated; then
		echo "BENCHNOTE dm-clone: $_cm run$_cr failed: $((_cw - _cw0)) sectors written but: $(dmsetup status clone)"
		return 1
	fi
	echo "CLONE $_cm $((_ct1 - _ct0)) run$_cr"
	if [ "$_cr" = 1 ]; then
		echo "# $_cm: $(dmsetup status clone)"
		cmp $IMG $DATA >/dev/null ||
			echo "BENCHNOTE dm-clone: $_cm run$_cr: the hydrated destination differs from the image"
	fi
}

clone_bench() {
	_cruns=${CLONE_RUNS:-5}
	_crn=${N:-2000}
	if ! dmsetup targets | grep -q '^clone '; then
		echo "BENCHNOTE dm-clone: skipped: no dm-clone target (initramfs without STREAM_BENCH_CLONE=1)"
		return 0
	fi
	if ! clone_up; then
		clone_down
		return 1
	fi
	_ci=1
	while [ $_ci -le $_cruns ]; do
		if clone_fresh; then
			clone_time cold_rand4k $_ci \
				stream-io rand $CLONE_DEV r 4096 $_crn 7 &&
				clone_time second_rand4k $_ci \
					stream-io rand $CLONE_DEV r 4096 $_crn 7
		fi
		clone_fresh &&
			clone_time cold_seq1m $_ci \
				dd if=$CLONE_DEV of=/dev/null bs=1M iflag=direct
		clone_remove
		clone_time nbdcopy_whole $_ci nbdcopy "$URI" null: || true
		clone_hydrate hydrate_default $_ci || true
		clone_hydrate hydrate_tuned $_ci $CLONE_THRESHOLD $CLONE_BATCH ||
			true
		_ci=$((_ci + 1))
	done
	clone_down
	return 0
}
