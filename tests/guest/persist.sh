# shellcheck shell=sh
# shellcheck disable=SC2086 # device paths and numbers never hold spaces
# Two-boot tests: phase 1 writes and reads, then either reboots cleanly
# (stream.suite=persist) or announces READY_FOR_KILL so that the host kills
# QEMU without any shutdown (stream.suite=crash).  Phase 2 checks that the
# fsync'd writes are there and that blocks present before are not fetched
# again.
READ_BLOCKS="10 11 12 13 14 15 16 17 18 19"

phase1() {
	prepare_image
	stream_up
	for b in $READ_BLOCKS; do
		blk_sum $DEV "$b" >/dev/null
	done
	# conv=fsync: the flush must make the reads' present bits and the
	# writes' dirty/present bits durable.
	apply_writes $DEV
	say "phase 1 done: present $(present) dirty $(st 3)"
}

phase2() {
	prepare_image
	server_start nbdkit
	create
	helper_start
	expected_image
	for b in 3 5 $READ_BLOCKS; do
		expect_eq "block $b" "$(blk_sum $SCRATCH "$b")" "$(blk_sum $DEV "$b")"
	done
	expect_eq "fetched again" 0 "$(helper_stat requests)"
	expect_eq "server reads" 0 "$(server_reads)"
	# Blocks 3 and 5 are dirty.  After a power cut, block 5's write (to a
	# present block) may have left write-intent region 0 open (blocks
	# 0-127 at the default 8 MiB): then all of it is dirty again, and the
	# load says so.
	_d=$(st 3)
	if [ "$SUITE_KIND" = crash ] && [ "$_d" = $((16384 / BS)) ]; then
		say "region 0 was open at the power cut: $_d blocks dirty"
		dmesg | grep -q "write intent: 1 regions of $_d blocks were open"
	else
		expect_eq "dirty" 2 "$_d"
	fi
	expect_eq "device" "$(dev_sum $SCRATCH)" "$(dev_sum $DEV)"
}

case "$SUITE_KIND:$PHASE" in
reboot:1)
	run_phase reboot_phase1 phase1
	teardown
	;;
crash:1)
	phase1_then_kill crash_phase1 phase1
	;;
*:2)
	run "${SUITE_KIND}_phase2" phase2
	;;
esac
