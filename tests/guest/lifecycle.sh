# shellcheck shell=sh
# shellcheck disable=SC2086 # device paths and numbers never hold spaces
# shellcheck disable=SC2046 # "set -- $(...)" splits answers into words
# Lifecycle tests (issue 3): snapshots per consumer, drains to an NBD
# export, ack/abort, revert of a mounted-then-unmounted filesystem, image
# update, background fill.  Sourced by main.sh; uses tests/guest/lib.sh.

OV_SOCK=/tmp/ov.sock
OV_URI="nbd+unix:///?socket=$OV_SOCK"

# consumer <n> [field]: "dirty:id:blocks" of consumer n, or one field
# (1 dirty, 2 snapshot id, 3 snapshot blocks).
consumer() {
	_c=$(st $((14 + $1)))
	if [ $# -gt 1 ]; then
		echo "$_c" | cut -d: -f"$2"
	else
		echo "$_c"
	fi
}

msg() { dmsetup message s 0 "$@"; }

# blk_sum for a file on tmpfs (no O_DIRECT there before Linux 6.6).
file_blk_sum() {
	dd if="$1" bs=$BB skip="$2" count=1 2>/dev/null | md5sum | cut -d' ' -f1
}

# A message that must be refused, leaving the status line unchanged
# (the generation aside: refusals write nothing, but a timer commit may).
refused() {
	_before=$(dmsetup status s | cut -d' ' -f1-12,14-)
	if dmsetup message s 0 "$@" >/dev/null 2>&1; then
		echo "# accepted: $*"
		return 1
	fi
	_after=$(dmsetup status s | cut -d' ' -f1-12,14-)
	expect_eq "status after refused '$*'" "$_before" "$_after"
}

cut_snapshot() {	# cut_snapshot <consumer>: prints "<id> <blocks>"
	dmsetup suspend s
	_r=0
	msg snapshot "$1" || _r=$?
	dmsetup resume s
	return $_r
}

overlay_start() {	# a qcow2 overlay over the image, served by qemu-nbd
	rm -f /tmp/ov.qcow2 $OV_SOCK
	qemu-img create -q -f qcow2 -F raw -b $SRC /tmp/ov.qcow2
	qemu-nbd -f qcow2 -k $OV_SOCK --persistent /tmp/ov.qcow2 \
		>/tmp/ov.log 2>&1 &
	echo $! >/tmp/ov.pid
	wait_for 10 test -S $OV_SOCK
}

overlay_stop() {
	[ -f /tmp/ov.pid ] || return 0
	kill "$(cat /tmp/ov.pid)" 2>/dev/null || true
	wait "$(cat /tmp/ov.pid)" 2>/dev/null || true
	rm -f /tmp/ov.pid $OV_SOCK
}

# Bytes the overlay itself holds (depth 0), from qemu-img map.
overlay_bytes() {
	qemu-img map -f qcow2 --output=json /tmp/ov.qcow2 | tr '{' '\n' |
		grep '"depth": 0' | grep '"data": true' |
		sed 's/.*"length": \([0-9]*\).*/\1/' |
		awk '{ s += $1 } END { print s + 0 }'
}

# Snapshot to a qcow2 overlay through qemu-nbd while another process
# keeps writing to blocks of the snapshot: the overlay equals the device
# at the cut, only the dirty blocks were sent, and the blocks rewritten
# after the cut stay dirty after the ack.
t_snapshot_qcow2() {
	stream_up
	blk_sum $DEV 20 >/dev/null
	dd if=$IMG of=$DEV bs=$BB skip=0 seek=200 count=300 oflag=direct \
		conv=fsync 2>/dev/null
	expect_eq "dirty" 300 "$(st 3)"
	# Nothing writes between this copy and the cut.
	dd if=$DEV of=$SCRATCH bs=1M iflag=direct conv=fsync 2>/dev/null
	overlay_start
	: >/tmp/wrote
	rm -f /tmp/snap.err
	(
		wait_for 120 grep -q "cut in" /tmp/snap.err
		b=499
		while [ $b -ge 470 ]; do
			dd if=$IMG of=$DEV bs=$BB skip=7 seek=$b count=1 \
				oflag=direct 2>/dev/null
			echo $b >>/tmp/wrote
			b=$((b - 1))
		done
	) &
	wpid=$!
	streamctl snapshot s --consumer 0 --to "$OV_URI" >/tmp/snap.out \
		2>/tmp/snap.err
	during=$(wc -l </tmp/wrote)
	wait $wpid
	cat /tmp/snap.err /tmp/snap.out
	echo "# measured: $(cat /tmp/snap.out); $during of 30 concurrent writes landed during the drain"
	if [ "$during" -lt 1 ]; then
		echo "# no write landed during the drain: the test proved nothing"
		return 1
	fi
	sent=$(sed -n 's/.* blocks, \([0-9]*\) bytes sent.*/\1/p' /tmp/snap.out)
	expect_eq "bytes sent" $((300 * BB)) "$sent"
	overlay_stop
	expect_eq "bytes in the overlay" $((300 * BB)) "$(overlay_bytes)"
	qemu-img convert -f qcow2 -O raw /tmp/ov.qcow2 /tmp/ov.raw
	expect_eq "overlay = device at the cut" "$(dev_sum $SCRATCH)" \
		"$(md5sum </tmp/ov.raw | cut -d' ' -f1)"
	rm -f /tmp/ov.raw /tmp/ov.qcow2
	expect_eq "rewritten after the cut stay dirty" 30 "$(st 3)"
	expect_eq "consumer 1 untouched" "300:0:0" "$(consumer 1)"
	expect_eq "no snapshot left" 0 "$(consumer 0 2)"
	dmesg | grep -q "consumer 0 snapshot 1: 300 blocks"
}

# Two consumers acknowledged independently; a rewrite after the cut stays
# dirty after the ack; abort restores the set; acks are durable across a
# reload, a snapshot in progress is aborted by one.
t_consumers() {
	stream_up
	apply_writes $DEV		# blocks 3 and 5
	expect_eq "consumer 1 before" "2:0:0" "$(consumer 1)"
	set -- $(cut_snapshot 1)
	g1=$1
	expect_eq "snapshot blocks" 2 "$2"
	expect_eq "ranges" "$NBLOCKS 3+1 5+1" "$(msg ranges 1 $g1 0)"
	expect_eq "ranges from 4" "$NBLOCKS 5+1" "$(msg ranges 1 $g1 4)"
	# After the cut: block 5 again, and block 7.
	dd if=$IMG of=$DEV bs=$BB skip=60 seek=5 count=2 oflag=direct \
		conv=fsync 2>/dev/null
	expect_eq "consumer 1 during" "2:$g1:2" "$(consumer 1)"
	expect_eq "consumer 2 during" "3:0:0" "$(consumer 2)"
	out=$(streamctl ack s --consumer 1 $g1)
	expect_eq "ack output" "s: consumer 1 snapshot $g1: acked 2 blocks" "$out"
	expect_eq "consumer 1 after ack" "2:0:0" "$(consumer 1)"
	expect_eq "consumer 0 untouched" "3:0:0" "$(consumer 0)"
	expect_eq "consumer 2 untouched" "3:0:0" "$(consumer 2)"
	if msg ranges 1 $g1 0 2>/dev/null; then
		echo "# ranges of an acked snapshot answered"
		return 1
	fi

	set -- $(cut_snapshot 2)
	g2=$1
	expect_eq "consumer 2 snapshot" "0:$g2:3" "$(consumer 2)"
	out=$(streamctl abort s --consumer 2 $g2)
	expect_eq "abort output" "s: consumer 2 snapshot $g2: aborted 3 blocks" "$out"
	expect_eq "consumer 2 after abort" "3:0:0" "$(consumer 2)"
	if streamctl ack s --consumer 2 $g2 2>/dev/null; then
		echo "# ack after abort accepted"
		return 1
	fi
	set -- $(cut_snapshot 2)
	expect_eq "ids are never reused" $((g2 + 1)) "$1"

	# Reload: the ack of consumer 1 is durable; consumer 2's snapshot in
	# progress is aborted (its blocks are dirty again).
	helper_stop
	dmsetup remove s
	create
	expect_eq "consumer 1 after reload" "2:0:0" "$(consumer 1)"
	expect_eq "consumer 2 after reload" "3:0:0" "$(consumer 2)"
	expect_eq "consumer 3 after reload" "3:0:0" "$(consumer 3)"
	set -- $(cut_snapshot 2)
	expect_eq "id after reload" $((g2 + 2)) "$1"
}

# Bad input: unknown messages, wrong consumer or snapshot id, malformed
# ranges: clear errors and nothing changes.
t_lifecycle_bad_input() {
	stream_up
	apply_writes $DEV
	set -- $(cut_snapshot 1)
	g=$1
	n=$(dmesg | wc -l)
	refused frobnicate
	refused snapshot
	refused snapshot 4
	refused snapshot x
	refused snapshot 1		# live device
	refused ack 1
	refused ack 1 $((g + 1))
	refused ack 1 0
	refused ack 9 $g
	refused ack x $g
	refused abort 2 1
	refused ranges 1 $((g + 1)) 0
	refused ranges 1 $g $((NBLOCKS + 1))
	refused ranges 1 $g x
	refused absent
	refused absent x
	refused absent $((NBLOCKS + 1))
	refused invalidate
	refused invalidate add
	refused invalidate add 0+0
	refused invalidate add $NBLOCKS+1
	refused invalidate add 10+$NBLOCKS
	refused invalidate add 1-2
	refused invalidate add 5+1 bogus
	refused invalidate commit v2 keep	# live device
	refused invalidate commit 'bad/id' keep
	refused invalidate commit v2 maybe
	refused fill sideways
	refused fill rate -1
	refused revert				# live device
	dmesg | tail -n +$((n + 1)) | grep -q "consumer 1 has no snapshot"
	dmesg | tail -n +$((n + 1)) | grep -q "invalid consumer"
	dmesg | tail -n +$((n + 1)) | grep -q "invalidate: bad range"
	# Invalidate, revert and snapshot refused while a snapshot is in
	# progress (suspended).
	dmsetup suspend s
	r=0
	msg revert >/dev/null 2>&1 && r=1
	msg invalidate commit v2 keep >/dev/null 2>&1 && r=1
	dmsetup resume s
	expect_eq "revert/invalidate refused during a snapshot" 0 $r
	expect_eq "snapshot still there" "0:$g:2" "$(consumer 1)"
	# streamctl: malformed ranges files are refused before anything is
	# sent; bad options are usage errors (exit 2).
	printf '0 65536\nabc\n' >/tmp/r1
	printf '%s\n' "10" >/tmp/r2
	printf '0 0\n' >/tmp/r3
	printf '%s\n' "$((SZ * 512)) 1" >/tmp/r4
	printf '0 65536 junk\n' >/tmp/r5
	before=$(dmsetup status s | cut -d' ' -f1-12,14-)
	for f in r1 r2 r3 r4 r5; do
		rc=0
		streamctl invalidate s --image-id v2 /tmp/$f 2>/tmp/err || rc=$?
		echo "# $f: $(cat /tmp/err)"
		expect_eq "exit status for $f" 1 $rc
	done
	grep -q "r5:1: expected" /tmp/err
	expect_eq "status after bad ranges" "$before" \
		"$(dmsetup status s | cut -d' ' -f1-12,14-)"
	rc=0
	streamctl ack s --consumer 7 1 2>/dev/null || rc=$?
	expect_eq "bad consumer" 2 $rc
	rc=0
	streamctl ack s --consumer 1 x 2>/dev/null || rc=$?
	expect_eq "bad id" 2 $rc
	rc=0
	streamctl fill s sideways 2>/dev/null || rc=$?
	expect_eq "bad fill" 2 $rc
	rc=0
	streamctl status nosuchdev 2>/dev/null || rc=$?
	expect_eq "no such device" 3 $rc
	rc=0
	streamctl snapshot s --consumer 2 --to "nbd+unix:///?socket=/nonexistent" \
		2>/dev/null || rc=$?
	expect_eq "unreachable export" 1 $rc
	expect_eq "consumer 2 untouched" "2:0:0" "$(consumer 2)"
}

# A drain whose server dies part way: the snapshot is aborted, the blocks
# stay dirty.
t_snapshot_server_dies() {
	stream_up
	dirty_and_slow_target 200
	streamctl snapshot s --consumer 1 --to "nbd+unix:///?socket=/tmp/t.sock" \
		>/tmp/snap.out 2>/tmp/snap.err &
	spid=$!
	wait_for 60 grep -q "cut in" /tmp/snap.err
	sleep 1
	kill "$(cat /tmp/t.pid)"
	rc=0
	wait $spid || rc=$?
	cat /tmp/snap.err
	expect_eq "exit status" 1 $rc
	grep -q "aborted, its blocks stay dirty" /tmp/snap.err
	expect_eq "consumer 1" "200:0:0" "$(consumer 1)"
	rm -f /tmp/target.raw
}

# The preserve budget: with preserve_mb 1 (16 blocks of 64 KiB), 40
# rewrites of snapshot blocks abort the snapshot rather than hold writes;
# the blocks are dirty again, the ack is refused, a table event is raised.
t_snapshot_budget() {
	fresh
	server_start nbdkit
	create 2 preserve_mb 1
	helper_start
	dd if=$IMG of=$DEV bs=$BB seek=100 count=100 oflag=direct conv=fsync \
		2>/dev/null
	ev=$(dmsetup info -c --noheadings -o events s)
	set -- $(cut_snapshot 1)
	g=$1
	dd if=$IMG of=$DEV bs=$BB skip=3 seek=100 count=40 oflag=direct \
		conv=fsync 2>/dev/null
	expect_eq "consumer 1" "100:0:0" "$(consumer 1)"
	dmesg | grep -q "snapshot $g of consumer 1 aborted: preserve_mb budget exhausted"
	if msg ack 1 $g 2>/dev/null; then
		echo "# ack of an aborted snapshot accepted"
		return 1
	fi
	[ "$(dmsetup info -c --noheadings -o events s)" -gt "$ev" ]
	blk_sum $DEV 120 >/dev/null
}

# A snapshot holding absent blocks (consumer 1 after a revert): the drain
# fetches them and sends the image's content.
t_snapshot_absent() {
	stream_up
	apply_writes $DEV
	streamctl revert s >/dev/null
	expect_eq "consumer 1 after revert" "2:0:0" "$(consumer 1)"
	expect_eq "consumer 0 after revert" "0:0:0" "$(consumer 0)"
	overlay_start
	streamctl snapshot s --consumer 1 --to "$OV_URI"
	overlay_stop
	qemu-img convert -f qcow2 -O raw /tmp/ov.qcow2 /tmp/ov.raw
	expect_eq "overlay = image" "$(dev_sum $IMG)" \
		"$(md5sum </tmp/ov.raw | cut -d' ' -f1)"
	rm -f /tmp/ov.raw /tmp/ov.qcow2
	expect_eq "consumer 1" "0:0:0" "$(consumer 1)"
}

# Kiosk session: a filesystem image; the session writes files; revert
# between sessions; the filesystem and the whole device are the image's.
t_kiosk() {
	fresh
	SRC=/tmp/fs.img		# this test's export (a subshell variable)
	rm -f $SRC
	truncate -s $((SZ * 512)) $SRC
	/opt/bin/mke2fs -q -F -t ext4 -b 4096 -E lazy_itable_init=0 $SRC >/dev/null
	mkdir -p /mnt/img
	mount -o loop $SRC /mnt/img
	echo "image v1" >/mnt/img/motd
	dd if=/dev/urandom of=/mnt/img/app.bin bs=64k count=16 2>/dev/null
	sum_app=$(md5sum </mnt/img/app.bin | cut -d' ' -f1)
	umount /mnt/img
	img_sum=$(md5sum <$SRC | cut -d' ' -f1)
	server_start nbdkit
	create
	helper_start
	mkdir -p /mnt/s
	mount -t ext4 $DEV /mnt/s
	expect_eq "motd" "image v1" "$(cat /mnt/s/motd)"
	# The session.
	dd if=/dev/urandom of=/mnt/s/session.dat bs=64k count=40 2>/dev/null
	echo "defaced" >/mnt/s/motd
	rm /mnt/s/app.bin
	sync
	umount /mnt/s
	echo "# dirty after the session: $(st 3)"
	out=$(streamctl revert s)
	echo "# measured: kiosk revert: $out"
	# Before mounting again: a mount writes to the filesystem.
	expect_eq "whole device = image" "$img_sum" "$(dev_sum $DEV)"
	mount -t ext4 $DEV /mnt/s
	expect_eq "motd after revert" "image v1" "$(cat /mnt/s/motd)"
	[ ! -e /mnt/s/session.dat ]
	expect_eq "app.bin after revert" "$sum_app" \
		"$(md5sum </mnt/s/app.bin | cut -d' ' -f1)"
	umount /mnt/s
	server_stop
	rm -f $SRC
}

# Image update: blocks changed by a new version become absent and are
# fetched from it; keep leaves locally changed blocks alone, discard drops
# them; the image id is recorded and survives a reload.
t_invalidate() {
	prepare_image
	cp $SRC /tmp/v2.raw
	SRC=/tmp/v2.raw		# this test's export (a subshell variable)
	stream_up
	dev_sum $DEV >/dev/null		# everything present
	expect_eq "present" $NBLOCKS "$(present)"
	apply_writes $DEV			# blocks 3 and 5: local
	# Version 2 of the image changes blocks 3, 10 and 11.
	dd if=/dev/urandom of=$SRC bs=$BB seek=10 count=2 conv=notrunc 2>/dev/null
	dd if=/dev/urandom of=$SRC bs=$BB seek=3 count=1 conv=notrunc 2>/dev/null
	printf '# changed in v2\n%s %s\n%s 1\n\n' $((10 * BB)) $((2 * BB)) \
		$((3 * BB + 100)) >/tmp/ranges
	local3=$(blk_sum $DEV 3)
	out=$(streamctl invalidate s --image-id v2 --keep /tmp/ranges)
	echo "# measured: $out"
	case $out in
	"s: image v2: invalidated 2 blocks"*) ;;
	*) echo "# unexpected: $out"; return 1 ;;
	esac
	expect_eq "image id" v2 "$(st 13)"
	expect_eq "present" $((NBLOCKS - 2)) "$(present)"
	expect_eq "absent ranges" "$NBLOCKS 10+2" "$(msg absent 0)"
	wait_for 10 is_attached
	expect_eq "block 10 from v2" "$(file_blk_sum $SRC 10)" "$(blk_sum $DEV 10)"
	expect_eq "block 3 kept" "$local3" "$(blk_sum $DEV 3)"
	expect_eq "consumer 0 dirty" 2 "$(consumer 0 1)"
	expect_eq "consumer 1 dirty (local + new image)" 4 "$(consumer 1 1)"
	# discard: block 3 follows the image now, block 5 stays local.
	printf '%s 1\n' $((3 * BB)) | streamctl invalidate s --image-id v2.1 \
		--discard -
	expect_eq "block 3 from v2" "$(file_blk_sum $SRC 3)" "$(blk_sum $DEV 3)"
	expect_eq "consumer 0 dirty" 1 "$(consumer 0 1)"
	helper_stop
	dmsetup remove s
	create
	expect_eq "image id after reload" v2.1 "$(st 13)"
	server_stop
	rm -f $SRC
}

# An image update interrupted by a power cut (SB_F_INVALIDATING set with
# the set in bitmap 2) is completed on load.
t_invalidate_interrupted() {
	stream_up
	dev_sum $DEV >/dev/null
	helper_stop
	dmsetup remove s
	stream-meta $META invalidating 7
	create
	dmesg | grep -q "completing an interrupted image update"
	expect_eq "present" $((NBLOCKS - 1)) "$(present)"
	expect_eq "absent" "$NBLOCKS 7+1" "$(msg absent 0)"
	expect_eq "image id" "interrupted" "$(st 13)"
}

# Background fill to completion, then the helper is killed: every read
# still works (the pure-local state), the status shows all present, the
# completion raised a table event.
t_fill() {
	fresh
	server_start nbdkit
	# readahead off: the demand reads below must leave the last 32
	# blocks to the fill
	create 2 readahead 0
	helper_start
	# All but the last 32 blocks by demand; the fill does the rest at
	# 1 MiB/s, so it completes a couple of seconds after it is switched
	# on: the event counter read in between is before completion.
	dd if=$DEV of=/dev/null bs=$BB count=$((NBLOCKS - 32)) iflag=direct \
		2>/dev/null
	streamctl fill s --rate 1M
	streamctl fill s on
	ev=$(dmsetup info -c --noheadings -o events s)
	# Progress with rate and ETA while the fill runs.
	wait_for 30 sh -c "[ \$(dmsetup status s | awk '{print \$5}' | cut -d/ -f1) -gt $((NBLOCKS - 32)) ]"
	out=$(streamctl status s)
	echo "$out"
	echo "$out" | grep -q "blocks/s, ETA [0-9]* s"
	wait_for 200 sh -c "[ \$(dmsetup status s | awk '{print \$5}' | cut -d/ -f1) = $NBLOCKS ]"
	dmesg | grep -q "all $NBLOCKS blocks present"
	expect_eq "completion raised one table event" $((ev + 1)) \
		"$(dmsetup info -c --noheadings -o events s)"
	expect_eq "fill switch" on "$(st 11)"
	streamd_allow "exit 137"
	kill -9 "$(cat /tmp/streamd.pid)"
	wait_for 10 test -f /tmp/streamd.rc
	rm -f /tmp/streamd.pid
	wait_for 10 sh -c "[ \$(dmsetup status s | awk '{print \$8}') = detached ]"
	server_stop
	expect_eq "device without helper or server" "$(dev_sum $IMG)" \
		"$(dev_sum $DEV)"
	expect_eq "present" "$NBLOCKS/$NBLOCKS" "$(st 2)"
	expect_eq "parked" 0 "$(st 4)"
	expect_eq "absent" "$NBLOCKS" "$(msg absent 0)"
	streamctl status s
	streamctl status --json s | jq -e ".present == $NBLOCKS" >/dev/null
}

# The run-time switch and the rate limit (values only: timing is for the
# bench); streamd --exit-when-complete exits once everything is present.
t_fill_switch() {
	fresh
	server_start nbdkit
	create
	streamd_allow "every block is present: exiting"
	helper_start --exit-when-complete
	sleep 2
	expect_eq "nothing filled while off" 0 "$(present)"
	streamctl fill s --rate 512K
	expect_eq "rate" 524288 "$(st 12)"
	streamctl fill s on
	wait_for 30 sh -c "[ \$(dmsetup status s | awk '{print \$5}' | cut -d/ -f1) -gt 0 ]"
	out=$(streamctl status s)
	echo "$out"
	echo "$out" | grep -q "fill on (limit 524288 bytes/s)"
	streamctl fill s off
	sleep 2
	p1=$(present)
	sleep 2
	expect_eq "no progress while off" "$p1" "$(present)"
	streamctl fill s --rate 0
	streamctl fill s on
	wait_for 200 sh -c "! kill -0 \$(cat /tmp/streamd.pid) 2>/dev/null"
	expect_eq "present" "$NBLOCKS/$NBLOCKS" "$(st 2)"
	grep -q "every block is present: exiting" /tmp/streamd.log
	rm -f /tmp/streamd.pid
}

# Power cut in the middle of an ack, emulated: the metadata device sits on
# dm-flakey, which starts dropping every write (as a power cut would lose
# them) just before the ack.  The "rebooted" device (a fresh table on the
# real metadata) still has every block of the snapshot dirty: nothing is
# lost.  Without the cut the ack is durable.
t_ack_power_cut() {
	fresh
	server_start nbdkit
	msz=$(blockdev --getsz $META)
	dmsetup create m --table "0 $msz linear $META 0"
	dmsetup create s --table "0 $SZ stream /dev/mapper/m $DATA $BS"
	helper_start
	dd if=$IMG of=$DEV bs=$BB seek=30 count=20 oflag=direct conv=fsync \
		2>/dev/null
	set -- $(cut_snapshot 1)
	g=$1
	dmsetup suspend --nolockfs --noflush m
	dmsetup load m --table "0 $msz flakey $META 0 0 1 1 drop_writes"
	dmsetup resume m
	expect_eq "ack (writes dropped)" "acked 20" "$(msg ack 1 $g)"
	expect_eq "consumer 1 in core" "0:0:0" "$(consumer 1)"
	helper_stop
	dmsetup remove s
	dmsetup remove m
	create
	expect_eq "consumer 1 after the cut" "20:0:0" "$(consumer 1)"
	expect_eq "consumer 0 after the cut" "20:0:0" "$(consumer 0)"
	# The same ack without the cut survives the reload.
	set -- $(cut_snapshot 1)
	expect_eq "ack" "acked 20" "$(msg ack 1 $1)"
	dmsetup remove s
	create
	expect_eq "consumer 1 after a clean ack" "0:0:0" "$(consumer 1)"
}

# Paging: about 5000 scattered dirty blocks on the 1 TiB device (16M
# blocks) cannot be listed in one message answer; the cursor pages through
# them and the pages add up to the snapshot.  Same for absent ranges.
t_ranges_paging() {
	[ -b $BIG ] || { echo "# no 1 TiB disk attached"; return 1; }
	dd if=/dev/zero of=$BIGMETA bs=1M count=32 2>/dev/null
	bsz=$(blockdev --getsz $BIG)
	total_blocks=$((bsz / 128))
	dmsetup create big --table "0 $bsz stream $BIGMETA $BIG 128"
	stream-io rand /dev/mapper/big w 65536 5000 3
	dmsetup suspend big
	set -- $(dmsetup message big 0 snapshot 1)
	dmsetup resume big
	g=$1 n=$2
	for q in "ranges 1 $g" absent; do
		cursor=0 pages=0 sum=0
		while [ $cursor -lt $total_blocks ]; do
			set -- $(dmsetup message big 0 $q $cursor)
			[ "$1" -gt "$cursor" ]
			cursor=$1
			shift
			for r in "$@"; do
				sum=$((sum + ${r#*+}))
			done
			pages=$((pages + 1))
		done
		echo "# measured: $q: $sum blocks in $pages pages"
		if [ "$q" = absent ]; then
			expect_eq "absent over all pages" $((total_blocks - n)) $sum
		else
			expect_eq "snapshot blocks over all pages" $n $sum
		fi
		[ $pages -gt 1 ] || { echo "# $q fit one page"; return 1; }
	done
	dmsetup remove big
}
