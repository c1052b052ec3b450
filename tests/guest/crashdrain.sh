# shellcheck shell=sh
# shellcheck disable=SC2086 # device paths and numbers never hold spaces
# Power cut during a snapshot drain (two boots; the host kills QEMU after
# READY_FOR_KILL).  Phase 1 writes 200 blocks, acknowledges an earlier
# snapshot of 10 blocks for consumer 2, then starts draining consumer 1
# to a slow export and announces the kill while the drain is under way.
# Phase 2: the snapshot in progress is gone (aborted by the reload) and
# every one of its blocks is still dirty for consumer 1; consumer 2's
# ack survived; nothing was lost for any consumer.
# shellcheck source=lifecycle.sh
. /tests/lifecycle.sh

drain_phase1() {
	prepare_image
	stream_up
	dd if=$IMG of=$DEV bs=$BB seek=10 count=10 oflag=direct conv=fsync \
		2>/dev/null
	truncate -s $((SZ * 512)) /tmp/fast.raw
	nbdkit -U /tmp/f.sock -P /tmp/f.pid file file=/tmp/fast.raw
	wait_for 10 test -S /tmp/f.sock
	streamctl snapshot s --consumer 2 --to "nbd+unix:///?socket=/tmp/f.sock"
	dd if=$IMG of=$DEV bs=$BB seek=100 count=200 oflag=direct \
		conv=fsync 2>/dev/null
	truncate -s $((SZ * 512)) /tmp/target.raw
	nbdkit -U /tmp/t.sock -P /tmp/t.pid --filter=delay file \
		file=/tmp/target.raw delay-write=100ms
	wait_for 10 test -S /tmp/t.sock
	streamctl snapshot s --consumer 1 \
		--to "nbd+unix:///?socket=/tmp/t.sock" >/tmp/snap.out \
		2>/tmp/snap.err &
	wait_for 60 grep -q "cut in" /tmp/snap.err
	sleep 2
	say "consumers: $(consumer 0) $(consumer 1) $(consumer 2)"
	[ "$(consumer 1 2)" != 0 ]
}

drain_phase2() {
	prepare_image
	server_start nbdkit
	create
	expect_eq "consumer 0" "210:0:0" "$(consumer 0)"
	expect_eq "consumer 1 (snapshot aborted, all dirty)" "210:0:0" \
		"$(consumer 1)"
	expect_eq "consumer 2 (ack durable)" "200:0:0" "$(consumer 2)"
	expect_eq "consumer 3" "210:0:0" "$(consumer 3)"
	helper_start
	expected=$(blk_sum $IMG 50)
	expect_eq "block 150" "$expected" "$(blk_sum $DEV 150)"
}

case "$PHASE" in
1)
	phase1_then_kill crashdrain_phase1 drain_phase1
	;;
2)
	run crashdrain_phase2 drain_phase2
	;;
esac
