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
	expect_eq "dirty" 2 "$(st 3)"
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
