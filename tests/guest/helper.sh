# shellcheck shell=sh
# shellcheck disable=SC2086 # device paths and numbers never hold spaces
# The helper and the tool at the worst moments (issue 8), one boot
# (stream.suite=helper): a server that stops, serves the wrong image,
# fails one block or is over its client limit; start-up mistakes; a revert
# of a mounted filesystem.  Every read that could reach its data must
# return it, with no I/O error; streamd must still be running.

# read_many <first> <n>: n parallel O_DIRECT reads of blocks first...,
# their sums in /tmp/rd.<block>.
read_many() {
	READERS=""
	_b=$1
	while [ $_b -lt $(($1 + $2)) ]; do
		(blk_sum $DEV $_b >/tmp/rd.$_b) &
		READERS="$READERS $!"
		_b=$((_b + 1))
	done
}

# check_many <first> <n>: wait for read_many's readers; each block must
# have read as the image.
check_many() {
	for _p in $READERS; do
		wait $_p || true
	done
	_b=$1
	_bad=0
	while [ $_b -lt $(($1 + $2)) ]; do
		if [ "$(cat /tmp/rd.$_b)" != "$(blk_sum $IMG $_b)" ]; then
			echo "# block $_b did not read as the image"
			_bad=$((_bad + 1))
		fi
		_b=$((_b + 1))
	done
	[ $_bad = 0 ]
}

parked_at_least() { [ "$(st 4)" -ge "$1" ]; }
fill_is_on() { [ "$(st 11)" = on ]; }
no_fetch_errors() { expect_eq "fetch errors" 0 "$(st 9)"; }

# A SIGSTOPped server holds 16 reads for 60 s: streamd notices the stall
# (--io-timeout 5), reconnects, times out handshakes with the stopped
# server (--connect-timeout 3) and serves everything once it continues.
t_server_sigstop() {
	fresh
	rm -f $SOCK
	# qemu-nbd: Debian's nbdkit 1.32 can die of an assertion
	# (raw_send_socket: sock >= 0) when a client closes a connection
	# with reads in flight, which is what streamd does here.
	qemu-nbd -f raw -r -k $SOCK --persistent -e 8 $SRC \
		2>/tmp/qemu-nbd.log &
	echo $! >/tmp/nbd.pid
	wait_for 10 test -S $SOCK || { echo "# qemu-nbd did not listen"; return 1; }
	create
	helper_start --io-timeout 5 --connect-timeout 3
	wait_for 10 grep -q "connected to" /tmp/streamd.log ||
		{ echo "# streamd did not connect"; return 1; }
	kill -STOP "$(cat /tmp/nbd.pid)"
	read_many 20 16
	wait_for 10 parked_at_least 16 ||
		{ echo "# $(st 4) reads parked, not 16"; return 1; }
	sleep 60
	expect_eq "reads parked after 60 s" 16 "$(st 4)"
	# the status says how long the oldest miss has waited
	streamctl status --json s | jq -e '.oldest_parked_ms >= 55000' >/dev/null ||
		{ echo "# oldest miss: $(streamctl status --json s)"; return 1; }
	streamctl status s | grep -q "16 parked (oldest [0-9.]* s)" ||
		{ echo "# status: $(streamctl status s)"; return 1; }
	kill -CONT "$(cat /tmp/nbd.pid)"
	sleep 2
	if ! kill -0 "$(cat /tmp/nbd.pid)"; then
		echo "# the server died after SIGCONT:"
		cat /tmp/qemu-nbd.log
		return 1
	fi
	check_many 20 16
	helper_alive
	no_fetch_errors
	grep -q "no reply to .* reads for 5 s" /tmp/streamd.log ||
		{ echo "# streamd did not report the stall"; return 1; }
	grep -q "no handshake within 3 s" /tmp/streamd.log ||
		{ echo "# streamd did not time a handshake out"; return 1; }
}

# The network to the server drops every packet for 60 s (tc netem on the
# loopback, TCP to qemu-nbd) with 16 reads outstanding: streamd notices,
# keeps reconnecting, and serves everything once the network is back.
t_network_drop() {
	fresh
	qemu-nbd -f raw -r --persistent -e 8 -b 127.0.0.1 -p 10811 $SRC \
		>/tmp/qemu-nbd.log 2>&1 &
	echo $! >/tmp/nbd.pid
	wait_for 10 tcp_listening 2A3B
	create
	HELPER_URI=nbd://127.0.0.1:10811 helper_start --io-timeout 5 \
		--connect-timeout 3
	wait_for 10 grep -q "connected to" /tmp/streamd.log
	/opt/bin/tc qdisc add dev lo root netem loss 100%
	read_many 20 16
	wait_for 10 parked_at_least 16
	sleep 60
	_parked=$(st 4)
	/opt/bin/tc qdisc del dev lo root
	expect_eq "reads parked while the network was down" 16 "$_parked"
	check_many 20 16
	helper_alive
	no_fetch_errors
	grep -q "no reply to .* reads for 5 s" /tmp/streamd.log
}

# After an image update the helper must forget the old image's zero map:
# with the server away when it re-attaches, a miss on a block that read
# as zero in the old image waits for the new image (whose block has data)
# instead of being answered "zero" at once.
t_zero_map_forgotten() {
	fresh
	server_start nbdkit
	create
	helper_start --connect-timeout 3
	expect_eq "zero block" "$(blk_sum $IMG 130)" "$(blk_sum $DEV 130)"
	# block 131 read as zero in the old image (the zero map says so)
	server_stop
	cp $SRC /tmp/new.raw
	dd if=$IMG of=/tmp/new.raw bs=$BB skip=7 seek=131 count=1 conv=notrunc \
		2>/dev/null
	echo "$((131 * BB)) $BB" | streamctl invalidate s --image-id v2 - \
		>/dev/null
	wait_for 10 is_attached
	(blk_sum $DEV 131 >/tmp/rd.131) &
	_r=$!
	sleep 3
	rm -f $SOCK
	nbdkit -U $SOCK -P /tmp/nbd.pid file file=/tmp/new.raw
	wait $_r || true
	expect_eq "block 131 after the update" "$(blk_sum $IMG 7)" \
		"$(cat /tmp/rd.131)"
	no_fetch_errors
	rm -f /tmp/new.raw
}

# The server comes back with an export of another size: streamd refuses
# it loudly and waits; the right one is then used.
t_server_wrong_size() {
	fresh
	server_start nbdkit
	create
	helper_start --connect-timeout 3
	wait_for 10 grep -q "connected to" /tmp/streamd.log
	server_stop
	truncate -s 16M /tmp/small.raw
	rm -f $SOCK
	nbdkit -U $SOCK -P /tmp/nbd.pid file file=/tmp/small.raw
	read_many 30 16
	wait_for 20 grep -q "NOT USING IT" /tmp/streamd.log
	sleep 2
	expect_eq "reads parked while the wrong image is served" 16 "$(st 4)"
	server_stop
	server_start nbdkit
	check_many 30 16
	helper_alive
	no_fetch_errors
	rm -f /tmp/small.raw
}

# One block of the export fails every read (the server exports a dm
# device with an error target at block 50): that block gets EIO after
# streamd's retries; the background fill skips it and makes every other
# block present.
bad_block_server() {
	dmsetup create bad <<EOB
0 $((50 * BS)) linear $IMG 0
$((50 * BS)) $BS error
$((51 * BS)) $((SZ - 51 * BS)) linear $IMG $((51 * BS))
EOB
	rm -f $SOCK
	nbdkit -U $SOCK -P /tmp/nbd.pid file file=/dev/mapper/bad
	wait_for 10 test -S $SOCK
}

t_server_bad_block() {
	fresh
	bad_block_server
	create
	streamd_allow "fill: [0-9]+ blocks failed"
	helper_start --fill
	if ! wait_for 120 sh -c "[ \"\$(dmsetup status s | awk '{print \$5}')\" = $((NBLOCKS - 1))/$NBLOCKS ]"; then
		echo "# present: $(st 2), want $((NBLOCKS - 1))/$NBLOCKS"
		return 1
	fi
	if dd if=$DEV of=/dev/null bs=$BB skip=50 count=1 iflag=direct 2>/dev/null; then
		echo "# block 50 read without error"
		return 1
	fi
	_e=$(st 9)
	[ "$_e" -ge 1 ] || { echo "# fetch errors $_e"; return 1; }
	expect_eq "block 49" "$(blk_sum $IMG 49)" "$(blk_sum $DEV 49)"
	expect_eq "block 51" "$(blk_sum $IMG 51)" "$(blk_sum $DEV 51)"
	grep -qE "fill: 1 of blocks [0-9]+\+[0-9]+ not fetched; skipped, retried later" \
		/tmp/streamd.log
	# a later pass tries block 50 again, after a growing pause (each
	# look costs helper_stat's 0.3 s: 40 looks)
	_i=0
	until fill_failed_at_least 2; do
		_i=$((_i + 1))
		[ $_i -lt 40 ] || break
		sleep 0.5
	done
	if ! fill_failed_at_least 2; then
		echo "# fill_failed $(helper_stat fill_failed): block 50 was not retried"
		return 1
	fi
	wait_for 10 grep -q "blocks failed; next pass in 2 s" /tmp/streamd.log
	helper_alive
}
present_is() { [ "$(st 2 | cut -d/ -f1)" = "$1" ]; }
fill_failed_at_least() { [ "$(helper_stat fill_failed)" -ge "$1" ]; }

# The same bad block 50, and a demand read of block 49 that goes to the
# helper in one request with it (both queued before the helper attaches):
# the read returns the image's data.  streamd reads a request that fails
# whole again block by block, and fails block 50 alone.
t_bad_block_neighbours() {
	fresh
	bad_block_server
	create
	if ! streamctl fetch --no-wait s 46 8 >/tmp/fetch.out 2>&1; then
		cat /tmp/fetch.out
		return 1
	fi
	(blk_sum $DEV 49 >/tmp/rd.49) &
	_reader=$!
	wait_for 10 parked_at_least 1
	helper_start
	wait $_reader || true
	expect_eq "block 49, sent with block 50" "$(blk_sum $IMG 49)" \
		"$(cat /tmp/rd.49)"
	if ! grep -qE "read block 4[6-9]\+[2-8]: .*reading it again in parts" \
		/tmp/streamd.log; then
		echo "# streamd did not read a request holding block 50 again"
		cat /tmp/streamd.log
		return 1
	fi
	# after the reply for block 49, which completed the read
	wait_for 10 grep -q "read block 50+1: .*reporting EIO" /tmp/streamd.log
	wait_for 10 present_is 7 || true
	expect_eq "present, all of 46+8 but block 50" 7 "$(present)"
	if dd if=$DEV of=/dev/null bs=$BB skip=50 count=1 iflag=direct 2>/dev/null; then
		echo "# block 50 read without error"
		return 1
	fi
	expect_eq "block 53" "$(blk_sum $IMG 53)" "$(blk_sum $DEV 53)"
	helper_alive
}

# qemu-nbd without -e serves one client: while another holds it, streamd's
# handshake times out and is retried; the reads complete once it leaves.
t_server_client_limit() {
	fresh
	server_start qemu-nbd
	qemu-io -r -f raw "nbd+unix:///?socket=$SOCK" -c "sleep 15000" \
		>/dev/null 2>&1 &
	_holder=$!
	sleep 1
	create
	helper_start --connect-timeout 2
	read_many 40 16
	wait_for 20 grep -q "no handshake within 2 s" /tmp/streamd.log
	expect_eq "reads parked while the server is busy" 16 "$(st 4)"
	wait $_holder || true
	check_many 40 16
	helper_alive
	no_fetch_errors
}

# What will not change by waiting exits 1 at once, with a message.
t_startup_errors_exit() {
	fresh
	server_start nbdkit
	create
	for _u in "nbd://[::1" "http://localhost/x"; do
		_rc=0
		timeout 20 streamd s "$_u" 2>/tmp/e.log || _rc=$?
		expect_eq "exit status for URI $_u" 1 $_rc ||
			{ cat /tmp/e.log; return 1; }
		grep -qF "connect $_u" /tmp/e.log
	done
	_rc=0
	timeout 20 streamd nosuchdev "$URI" 2>/tmp/e.log || _rc=$?
	expect_eq "exit status for a missing device" 1 $_rc
	grep -q "nosuchdev: no such stream device" /tmp/e.log
	# TLS that cannot be set up, and no /dev/dm-stream (moved away
	# for a moment): permanent, exit 1 with the reason
	_rc=0
	timeout 20 streamd --tls-certificates /nonexistent s "$URI" \
		2>/tmp/e.log || _rc=$?
	expect_eq "exit status for a missing certificate directory" 1 $_rc ||
		{ cat /tmp/e.log; return 1; }
	grep -q "/nonexistent" /tmp/e.log || { cat /tmp/e.log; return 1; }
	mv /dev/dm-stream /dev/dm-stream.away
	_rc=0
	timeout 20 streamd s "$URI" 2>/tmp/e.log || _rc=$?
	mv /dev/dm-stream.away /dev/dm-stream
	expect_eq "exit status without /dev/dm-stream" 1 $_rc ||
		{ cat /tmp/e.log; return 1; }
	grep -q "/dev/dm-stream" /tmp/e.log || { cat /tmp/e.log; return 1; }
	_rc=0
	timeout 20 streamd -q 0 s "$URI" 2>/tmp/e.log || _rc=$?
	expect_eq "exit status for --queue-depth 0" 2 $_rc
	_rc=0
	timeout 20 streamd -t 010x s "$URI" 2>/tmp/e.log || _rc=$?
	expect_eq "exit status for --io-timeout 010x" 2 $_rc
	# streamctl: one strict parser (no empty, no wrap, no octal)
	for _c in "" 4294967296 -1 1x; do
		_rc=0
		streamctl ack s --consumer "$_c" 1 2>/dev/null || _rc=$?
		expect_eq "streamctl --consumer '$_c'" 2 $_rc
	done
	_rc=0
	echo "0000065536 1" | streamctl invalidate s --image-id v2 - \
		>/tmp/inv.out 2>&1 || _rc=$?
	expect_eq "ranges file with a leading zero (decimal)" 0 $_rc ||
		{ cat /tmp/inv.out; return 1; }
	grep -q "image v2: .* (1 ranges" /tmp/inv.out ||
		{ cat /tmp/inv.out; return 1; }
}

# revert and invalidate refuse a mounted device (exit 4); unmounted, or
# with --force, they run.
t_revert_mounted_refused() {
	stream_up
	/opt/bin/mke2fs -q -F -t ext4 -b 4096 $DEV >/dev/null
	mkdir -p /mnt/s
	mount -t ext4 $DEV /mnt/s
	echo kept >/mnt/s/f
	sync
	_rc=0
	streamctl revert s 2>/tmp/rv.log || _rc=$?
	expect_eq "revert exit status while mounted" 4 $_rc
	grep -q "refusing to revert: the device is in use" /tmp/rv.log
	_rc=0
	echo "0 4096" | streamctl invalidate s --image-id v2 - \
		2>/tmp/rv.log || _rc=$?
	expect_eq "invalidate exit status while mounted" 4 $_rc
	expect_eq "file after the refusals" kept "$(cat /mnt/s/f)"
	# --force: the operator's call (the mounted filesystem now sees its
	# blocks change under it); it runs and the device is the image's
	_rc=0
	streamctl revert --force s >/tmp/rv.out 2>&1 || _rc=$?
	expect_eq "revert --force exit status while mounted" 0 $_rc ||
		{ cat /tmp/rv.out; return 1; }
	grep -q "reverted [1-9][0-9]* blocks" /tmp/rv.out ||
		{ cat /tmp/rv.out; return 1; }
	umount /mnt/s
	streamctl revert s >/dev/null
	wait_for 10 is_attached
	expect_eq "device after revert" "$(dev_sum $IMG)" "$(dev_sum $DEV)"
}

# A drain stopped by SIGTERM or SIGHUP aborts its snapshot: exit status 1,
# the device resumed, the blocks dirty again for the consumer.  (SIGINT:
# a background job of this shell ignores it.)
# A drain target that stops answering (SIGSTOP) holds a write in flight:
# SIGTERM still aborts the drain, within the 20 s a watchdog gives it (a
# synchronous libnbd write would wait for the server forever).
t_drain_signal_aborts() {
	stream_up
	dirty_and_slow_target 100
	for _sig in TERM HUP TERM-stopped; do
		rm -f /tmp/snap.err	# not the last round's "cut in"
		streamctl snapshot s --consumer 1 \
			--to "nbd+unix:///?socket=/tmp/t.sock" >/tmp/snap.out \
			2>/tmp/snap.err &
		_sp=$!
		wait_for 60 grep -q "cut in" /tmp/snap.err
		sleep 1
		[ $_sig = TERM-stopped ] && kill -STOP "$(cat /tmp/t.pid)" &&
			sleep 1
		kill -${_sig%-stopped} $_sp
		# a watchdog: a drain that ignores the signal fails the test
		( sleep 20; kill -9 $_sp ) 2>/dev/null &
		_dog=$!
		_rc=0
		wait $_sp || _rc=$?
		kill $_dog 2>/dev/null || true
		wait $_dog 2>/dev/null || true
		[ $_sig = TERM-stopped ] && kill -CONT "$(cat /tmp/t.pid)"
		expect_eq "exit status after SIG$_sig" 1 $_rc ||
			{ cat /tmp/snap.err; return 1; }
		grep -q "aborted, its blocks stay dirty" /tmp/snap.err
		expect_eq "consumer 1 after SIG$_sig" "100:0:0" \
			"$(st 15)"
		dmsetup info s | grep -q "State: *ACTIVE"
	done
	# (nbdkit 1.32 may have died of the write cut off in the stopped round)
	kill "$(cat /tmp/t.pid)" 2>/dev/null || true
	rm -f /tmp/target.raw
}

# The fill's switch and rate outlive a table reload and a helper restart;
# streamd --fill switches it on.
t_fill_policy_kept() {
	fresh
	server_start nbdkit
	create
	streamctl fill s off --rate 65536
	expect_eq "policy" "off 65536" "$(st 11) $(st 12)"
	dmsetup table s >/tmp/table
	dmsetup reload s /tmp/table
	dmsetup resume s
	expect_eq "policy after a reload" "off 65536" "$(st 11) $(st 12)"
	helper_start --fill
	wait_for 10 fill_is_on
	expect_eq "policy with streamd --fill" "on 65536" "$(st 11) $(st 12)"
	helper_stop
	dmsetup reload s /tmp/table
	dmsetup resume s
	expect_eq "policy after a helper restart and a reload" "on 65536" \
		"$(st 11) $(st 12)"
	streamctl fill s off
}

TLS=/tests/tls
tls_psk_server() {	# nbdkit, TLS-PSK required
	rm -f $SOCK
	nbdkit -U $SOCK -P /tmp/nbd.pid --tls=require \
		--tls-psk=$TLS/psk.keys file file=$SRC
	wait_for 10 test -S $SOCK
}
tls_x509_server() {	# qemu-nbd, 127.0.0.1:10810 (0x2A3A), client cert required
	qemu-nbd -f raw -r --persistent -e 4 -b 127.0.0.1 -p 10810 \
		--object tls-creds-x509,id=tls0,dir=$TLS/server,endpoint=server \
		--tls-creds tls0 $SRC >/tmp/qemu-nbd.log 2>&1 &
	echo $! >/tmp/nbd.pid
	wait_for 30 tcp_listening 2A3A
}

# TLS-PSK (nbdkit): served; the key file removed after start-up and the
# server restarted, streamd reconnects with the copy it kept.
t_tls_psk() {
	fresh
	tls_psk_server
	create
	cp $TLS/psk.keys /tmp/psk.keys
	HELPER_URI="nbds+unix:///?socket=$SOCK" helper_start \
		--tls-psk-file /tmp/psk.keys --tls-username alice
	expect_eq "block 7" "$(blk_sum $IMG 7)" "$(blk_sum $DEV 7)"
	rm /tmp/psk.keys
	server_stop
	tls_psk_server
	read_many 20 4
	check_many 20 4
	no_fetch_errors
	helper_alive
	# streamctl snapshot drains to a TLS-PSK export too
	dd if=$IMG of=$DEV bs=$BB skip=60 seek=30 count=3 oflag=direct \
		conv=fsync 2>/dev/null
	truncate -s $((SZ * 512)) /tmp/target.raw
	rm -f /tmp/t.sock
	nbdkit -U /tmp/t.sock -P /tmp/t.pid --tls=require \
		--tls-psk=$TLS/psk.keys file file=/tmp/target.raw
	wait_for 10 test -S /tmp/t.sock
	streamctl snapshot s --consumer 1 --to "nbds+unix:///?socket=/tmp/t.sock" \
		--tls-psk-file $TLS/psk.keys --tls-username alice >/tmp/snap.out
	grep -q "3 blocks, .* flushed and acknowledged" /tmp/snap.out ||
		{ cat /tmp/snap.out; return 1; }
	kill "$(cat /tmp/t.pid)"
	for _b in 30 31 32; do
		expect_eq "block $_b at the TLS drain target" \
			"$(blk_sum $DEV $_b)" \
			"$(dd if=/tmp/target.raw bs=$BB skip=$_b count=1 2>/dev/null |
			   md5sum | cut -d' ' -f1)"
	done
	rm -f /tmp/target.raw
}

# X.509 (qemu-nbd --tls-creds, which also checks the client certificate).
t_tls_x509() {
	fresh
	tls_x509_server
	create
	HELPER_URI="nbds://127.0.0.1:10810" helper_start \
		--tls-certificates $TLS/client
	read_many 20 8
	check_many 20 8
	no_fetch_errors
}

# TLS mistakes exit 1 at start-up, at once, and leave the device as it was.
t_tls_mistakes_exit() {
	fresh
	create
	tls_psk_server
	for _case in plain wrong_psk; do
		_rc=0
		case $_case in
		plain)
			timeout 30 streamd s "nbd+unix:///?socket=$SOCK" \
				2>/tmp/e.log || _rc=$? ;;
		wrong_psk)
			timeout 30 streamd --tls-psk-file $TLS/wrong.keys \
				--tls-username alice s \
				"nbds+unix:///?socket=$SOCK" 2>/tmp/e.log ||
				_rc=$? ;;
		esac
		expect_eq "exit status, $_case" 1 $_rc || { cat /tmp/e.log; return 1; }
		grep -q "TLS\|gnutls" /tmp/e.log || { cat /tmp/e.log; return 1; }
	done
	server_stop
	server_start nbdkit	# no TLS
	_rc=0
	timeout 30 streamd --tls-psk-file $TLS/psk.keys --tls-username alice s \
		"nbds+unix:///?socket=$SOCK" 2>/tmp/e.log || _rc=$?
	expect_eq "exit status, TLS client and plain server" 1 $_rc ||
		{ cat /tmp/e.log; return 1; }
	grep -q "TLS\|tls" /tmp/e.log || { cat /tmp/e.log; return 1; }
	server_stop
	tls_x509_server
	_rc=0
	timeout 30 streamd --tls-certificates $TLS/untrusted s \
		"nbds://127.0.0.1:10810" 2>/tmp/e.log || _rc=$?
	expect_eq "exit status, untrusted certificate" 1 $_rc ||
		{ cat /tmp/e.log; return 1; }
	grep -q "certificate" /tmp/e.log
	expect_eq "present after the mistakes" 0 "$(present)"
	HELPER_URI="nbds://127.0.0.1:10810" helper_start \
		--tls-certificates $TLS/client
	expect_eq "block 7" "$(blk_sum $IMG 7)" "$(blk_sum $DEV 7)"
	no_fetch_errors
}

prepare_image || echo "STREAMTEST prepare_image FAIL"
run server_sigstop t_server_sigstop
run network_drop t_network_drop
run server_wrong_size t_server_wrong_size
run zero_map_forgotten t_zero_map_forgotten
run server_bad_block t_server_bad_block
run bad_block_neighbours t_bad_block_neighbours
run server_client_limit t_server_client_limit
run startup_errors_exit t_startup_errors_exit
run revert_mounted_refused t_revert_mounted_refused
run drain_signal_aborts t_drain_signal_aborts
run fill_policy_kept t_fill_policy_kept
run tls_psk t_tls_psk
run tls_x509 t_tls_x509
run tls_mistakes_exit t_tls_mistakes_exit
