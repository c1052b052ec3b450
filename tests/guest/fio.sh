# shellcheck shell=sh
# shellcheck disable=SC2086 # device paths and numbers never hold spaces
# An oracle nobody here wrote: Debian's fio with its verify workloads over
# the target.  fio writes blocks with a header and a crc32c per 4 KiB
# (offset, length, seed) and reads them back (verify_backlog while
# writing, a full verify pass at the end); a later "verify_only" run of
# the same job (same seed: same offsets and sizes) re-reads and checks
# everything the job wrote, without writing.
#
# Region A, the first 16 MiB (blocks 0-255): blocks 0-63 are read first
# (present), 64-127 absent, 128-191 the image's zero region (absent,
# answered without data), 192-255 absent.  4 KiB writes into absent
# blocks make the target fetch and merge; 64 KiB ones cover a block.
# The rest of the device is never written by region A's job and must
# still equal the image.
#
# stream.suite=fio: one boot (write+verify, reload mid-run, fill).
# stream.suite=fiocrash (fiocrash.sh): a power-cut pair.
#
# fio 3.33 caveat, found while writing this: a verify_only run that
# also has verify_backlog set verifies nothing (a corrupted block
# passes), so fio_verify never sets it; fio_oracle_detects_corruption
# checks that verify_only does fail on a corrupted region.

FIO_A_OFF=0
FIO_A_SIZE=16M
FIO_A_IO=8M

# libaio (8 in flight) where the kernel has AIO; the debug kernel
# (tinyconfig) has none: psync there.
if [ -e /proc/sys/fs/aio-max-nr ]; then
	FIO_ENGINE="--ioengine=libaio --iodepth=8"
else
	FIO_ENGINE="--ioengine=psync"
fi

# fio_opts <offset> <size> <io size> <seed>: the job's identity; the
# write and the verify_only runs must agree on every one of these.
fio_opts() {
	echo "--name=a --filename=$DEV --offset=$1 --size=$2 --io_size=$3" \
		"--rw=randwrite --bssplit=4k/50:64k/50 --blockalign=4k" \
		"$FIO_ENGINE --direct=1 --verify=crc32c" \
		"--randrepeat=1 --randseed=$4"
}

# fio_write <offset> <size> <io size> <seed> [fio options]: write with
# verify_backlog, fsync every 32 writes and at the end, then the final
# verify pass.
fio_write() {
	_o=$(fio_opts "$1" "$2" "$3" "$4")
	shift 4
	fio $_o --verify_backlog=16 --fsync=32 --end_fsync=1 "$@"
}

# fio_verify <offset> <size> <io size> <seed>: verify_only pass.
fio_verify() {
	_o=$(fio_opts "$1" "$2" "$3" "$4")
	fio $_o --verify_only
}

write_a() { fio_write $FIO_A_OFF $FIO_A_SIZE $FIO_A_IO 7 "$@"; }
verify_a() { fio_verify $FIO_A_OFF $FIO_A_SIZE $FIO_A_IO 7; }

# Blocks 0-63 present before fio starts (and the target's readahead
# window after them), the rest absent.
read_some() {
	dd if=$DEV of=/dev/null bs=$BB count=64 iflag=direct 2>/dev/null
	_p=$(present)
	say "present before fio: $_p"
	if [ "$_p" -lt 64 ] || [ "$_p" -gt $((64 + 64)) ]; then
		echo "# present before fio: $_p, want 64-128"
		return 1
	fi
}

# Blocks 256.. (outside region A) equal the image.
rest_is_image() {
	expect_eq "blocks 256-$((NBLOCKS - 1))" \
		"$(dd if=$IMG bs=$BB skip=256 2>/dev/null | md5sum)" \
		"$(dd if=$DEV bs=$BB skip=256 iflag=direct 2>/dev/null | md5sum)"
}

# The oracle can fail: a region written by fio, then overwritten with the
# image's bytes, must fail verify_only.
t_fio_detects_corruption() {
	stream_up
	fio_write 16M 1M 512k 3 >/dev/null
	fio_verify 16M 1M 512k 3 >/dev/null
	dd if=$IMG of=$DEV bs=1M skip=16 seek=16 count=1 oflag=direct \
		conv=fsync 2>/dev/null
	if fio_verify 16M 1M 512k 3 >/tmp/fio.out 2>&1; then
		echo "# verify_only passed over a corrupted region"
		return 1
	fi
	grep -m1 "verify: bad" /tmp/fio.out
}

# (1) Write + verify over present, absent and zero blocks; verify_only.
t_fio_write_verify() {
	stream_up
	read_some
	write_a
	say "after fio: present $(present) dirty $(st 3) fetched $(st 7)"
	# Some 4 KiB writes landed in absent blocks: merges fetched them.
	[ "$(helper_stat requests)" -gt 0 ]
	verify_a
	rest_is_image
	expect_eq "errors" 0 "$(st 9)"
}

# (2) Reload the same table, suspend and resume, twice, while fio writes
# (rate-limited so that it is still running), then verify_only.
t_fio_reload_mid_run() {
	stream_up
	read_some
	dmsetup table s >/tmp/table
	write_a --rate=1m >/tmp/fio.out 2>&1 &
	fio_pid=$!
	wait_for 30 sh -c "[ \$(dmsetup status s | awk '{print \$6}') -gt 0 ]"
	if ! kill -0 $fio_pid 2>/dev/null; then
		cat /tmp/fio.out
		echo "# fio finished before the first reload: test proves nothing"
		return 1
	fi
	for i in 1 2; do
		# fio stops at its first verify error: no second reload then.
		kill -0 $fio_pid 2>/dev/null || break
		dmsetup reload s /tmp/table
		sleep 1
		dmsetup suspend s
		dmsetup resume s
		say "reload $i done: present $(present) dirty $(st 3)"
		sleep 2
	done
	if ! wait $fio_pid; then
		cat /tmp/fio.out
		echo "# fio's write+verify failed across the reloads"
		return 1
	fi
	wait_for 10 is_attached
	verify_a
	rest_is_image
}

# (4) After the background fill completes, and again with neither helper
# nor server, verify_only still passes and the rest is still the image.
t_fio_after_fill() {
	stream_up
	read_some
	write_a >/dev/null
	helper_stop
	helper_start --fill
	wait_for 200 sh -c "[ \$(dmsetup status s | awk '{print \$5}' | cut -d/ -f1) = $NBLOCKS ]"
	verify_a
	rest_is_image
	helper_stop
	server_stop
	verify_a
	rest_is_image
}

# Power cut, phase 1: region A written and end_fsync'd; then a second
# job writes region B (blocks 256-511) without any fsync, and the guest
# is killed while it runs.
fio_crash_phase1() {
	prepare_image
	stream_up
	read_some
	write_a >/dev/null
	fio --name=b --filename=$DEV --offset=16M --size=16M --rw=randwrite \
		--bssplit=4k/50:64k/50 $FIO_ENGINE \
		--direct=1 --time_based --runtime=600 >/dev/null 2>&1 &
	sleep 3
	kill -0 $!
	say "phase 1 done: present $(present) dirty $(st 3)"
}

# Phase 2: everything region A's job wrote is there; the whole device
# reads without error.
fio_crash_phase2() {
	prepare_image
	server_start nbdkit
	create
	helper_start
	verify_a
	dd if=$DEV of=/dev/null bs=1M iflag=direct
	expect_eq "errors" 0 "$(st 9)"
}

# fio needs System V shared memory (shmget) for its job data: the debug
# kernel (tinyconfig, no CONFIG_SYSVIPC) cannot run it.
fio_why_not() {
	fio --name=probe --filename=/tmp/fio.probe --size=64k --rw=write \
		--bs=4k >/tmp/fio.probe.out 2>&1 && return 1
	echo "fio cannot run on this kernel:" \
		"$(grep -m1 -E "Function not implemented|error" /tmp/fio.probe.out)"
}

FIO_TESTS="fio_oracle_detects_corruption:t_fio_detects_corruption
fio_write_verify:t_fio_write_verify fio_reload_mid_run:t_fio_reload_mid_run
fio_after_fill:t_fio_after_fill"

if why=$(fio_why_not); then
	case "${FIO_KIND:-main}:$PHASE" in
	crash:1) skip fiocrash_phase1 "$why"; echo READY_FOR_KILL; sleep 600 ;;
	crash:2) skip fiocrash_phase2 "$why" ;;
	*) for t in $FIO_TESTS; do skip "${t%%:*}" "$why"; done ;;
	esac
else
	case "${FIO_KIND:-main}:$PHASE" in
	crash:1) phase1_then_kill fiocrash_phase1 fio_crash_phase1 ;;
	crash:2) run fiocrash_phase2 fio_crash_phase2 ;;
	*)
		prepare_image || echo "STREAMTEST prepare_image FAIL"
		for t in $FIO_TESTS; do run "${t%%:*}" "${t#*:}"; done
		;;
	esac
fi
