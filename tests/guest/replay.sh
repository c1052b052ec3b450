# shellcheck shell=sh
# shellcheck disable=SC2086 # device paths and numbers never hold spaces
# shellcheck disable=SC2046 # "set -- $(...)" splits answers into words
# shellcheck disable=SC2034 # TEST_TIMEOUT is read by run() in lib.sh
# Crash-point replay (stream.suite=replay).
#
# Metadata and data sit on one disk ($RP_DISK, two dm-linear slices) under
# dm-log-writes, which records every write, flush and FUA that reaches the
# disk while a workload runs: reads of absent blocks, whole- and partial-
# block writes, fsyncs, a FUA write, a discard, a snapshot of consumer 1
# drained while a writer runs and acknowledged, a table reload, a revert,
# an image update (keep) and a background fill.  After each durable step
# the workload logs a mark and the oracle records the expected state.
#
# Then the log is replayed (tests/tools/stream-replay) onto a copy of the
# disk up to every FLUSH/FUA entry, at least $RP_OTHER other points and
# $RP_TORN points whose last write is torn at a sector boundary.  At each
# point the copy is loaded as a stream target with streamd attached (nbdkit
# serves the image version the metadata names) and checked:
#
#   replay_load     the table loads, rw, no metadata complaint; metadata
#                   is formatted only if it was all zero
#   replay_durable  every block holds a content it had between the last
#                   mark and the next (fsync'd writes are never lost); a
#                   torn data write's own blocks are exempt
#   replay_clean    every present block clean for consumer 0 equals the
#                   image
#   replay_dirty0   consumer 0's dirty set: all blocks written durably,
#                   none never written in the window
#   replay_ack      consumer 1's dirty set likewise: after the ack, only
#                   blocks (possibly) written after the cut
#   replay_revert   after "revert" the whole device equals the image
#   replay_ops      the messages the checks use (absent, snapshot, ranges,
#                   abort) work, the helper attaches, the device reads
#
# The oracle: state s is the model content (a hash per block) and, per
# block, whether it is dirty for consumers 0 and 1 (1, 0 or ? when a
# concurrent write makes it either).  A mark names the state current when
# it was logged; a point between marks k and k+1 allows every state
# recorded between them.  Blocks are 64 KiB; the device is 2 MiB.

RP=/tmp/rp
RBS=128				# sectors per block
RBB=$((RBS * 512))
RNB=32				# blocks
RSZ=$((RNB * RBS))		# device sectors
RMETA=2048			# metadata slice: 1 MiB at sector 0
RP_DISK=$SCRATCH		# the recorded disk (32 MiB)
RP_LOG=$DATA			# the dm-log-writes log (32 MiB)
RP_OTHER=200			# points besides FLUSH/FUA ones
RP_TORN=60			# torn points
RP_MAX=0			# stop after this many points (0: all)
# Kernel command line knobs, for debugging: stream.replay=<other>,<torn>,<max>
read -r _cl </proc/cmdline
for _a in $_cl; do
	case $_a in
	stream.replay=*,*,*)
		IFS=, read -r RP_OTHER RP_TORN RP_MAX <<-EOF
		${_a#stream.replay=}
		EOF
		;;
	esac
done
V1_SOCK=$RP/v1.sock
V2_SOCK=$RP/v2.sock
SRCOFF=$((8 << 20))		# new content comes from the image past 8 MiB
STATE=0

rp_msg() { dmsetup message "$@"; }

# --- the oracle ---------------------------------------------------------

# Set char $2 (0-based) of string $1 to $3.
setc() { echo "$1" | awk -v i="$2" -v c="$3" \
	'{ print substr($0, 1, i) c substr($0, i + 2) }'; }

record_state() {	# the model as state $STATE
	STATE=$((STATE + 1))
	echo "$STATE $(stream-replay sums $RP/model.raw --bs $RBB | tr '\n' ' ')" \
		>>$RP/states.h
	echo "$STATE $D0" >>$RP/states.d0
	echo "$STATE $D1" >>$RP/states.d1
}

mark() {	# mark <name>: log a mark naming the current state
	rp_msg lw 0 mark "$1"
	echo "$1 $STATE" >>$RP/marks
	say "mark $1 = state $STATE"
}

# w <block> <offset in block> <length> [dsync]: a write of new content
# through the stream device, applied to the model too; dirty for 0 and 1.
w() {
	_src=$((SRCOFF + ($1 * 7 + STATE) * 4096))
	stream-replay write /dev/mapper/rs --at $(($1 * RBB + $2)) --len $3 \
		--src $IMG --src-at $_src ${4:+--dsync 1}
	dd if=$IMG of=$RP/model.raw bs=512 skip=$((_src / 512)) \
		seek=$((($1 * RBB + $2) / 512)) count=$(($3 / 512)) \
		conv=notrunc 2>/dev/null
	D0=$(setc "$D0" $1 1)
	D1=$(setc "$D1" $1 ${D1MARK:-1})
	record_state
}

rp_fsync() { stream-replay fsync /dev/mapper/rs; }

rp_helper() {	# rp_helper <device> <socket>
	rm -f $RP/streamd.pid
	streamd "$1" "nbd+unix:///?socket=$2" 2>>$RP/streamd.log &
	echo $! >$RP/streamd.pid
	wait_for 10 sh -c "dmsetup status $1 | grep -q ' attached '"
}

rp_helper_stop() {
	[ -f $RP/streamd.pid ] || return 0
	kill "$(cat $RP/streamd.pid)" 2>/dev/null || true
	wait "$(cat $RP/streamd.pid)" 2>/dev/null || true
	rm -f $RP/streamd.pid
}

rp_servers() {	# nbdkit for each image version, on its own socket
	for _v in v1 v2; do
		rm -f $RP/$_v.sock
		nbdkit -U $RP/$_v.sock -P $RP/$_v.nbdpid file file=$RP/$_v.raw
		wait_for 10 test -S $RP/$_v.sock
	done
}

rp_teardown() {
	rp_helper_stop
	for _d in rs c wm wd cm cd lw; do
		if dmsetup info $_d >/dev/null 2>&1; then
			dmsetup remove $_d || true
		fi
	done
	for _p in "$RP"/*.nbdpid; do
		[ -f "$_p" ] && kill "$(cat "$_p")" 2>/dev/null
		rm -f "$_p"
	done
	if [ -f $RP/loopdev ]; then
		losetup -d "$(cat $RP/loopdev)" 2>/dev/null || true
		rm -f $RP/loopdev
	fi
	return 0
}

rstatus() { dmsetup status "$1" | awk -v n="$2" '{print $(3 + n)}'; }

# --- the workload ---------------------------------------------------------

t_replay_workload() {
	rp_teardown
	rm -rf $RP
	mkdir -p $RP
	# Images: v1 is the first 2 MiB of the test image, v2 changes blocks
	# 20-23.  The workload's export starts as v1 and is switched to v2
	# just before the image update.
	dd if=$IMG of=$RP/v1.raw bs=$RBB count=$RNB 2>/dev/null
	cp $RP/v1.raw $RP/v2.raw
	dd if=$IMG of=$RP/v2.raw bs=$RBB skip=$((SRCOFF / RBB + 100)) seek=20 \
		count=4 conv=notrunc 2>/dev/null
	cp $RP/v1.raw $RP/served.raw
	cp $RP/v1.raw $RP/model.raw
	# The disk: zero metadata, data 0xff (a block wrongly present reads as
	# garbage).  The replay copy starts identical.
	dd if=/dev/zero of=$RP/base.img bs=512 count=$RMETA 2>/dev/null
	tr '\000' '\377' </dev/zero | dd of=$RP/base.img bs=512 seek=$RMETA \
		count=$RSZ iflag=fullblock 2>/dev/null
	dd if=$RP/base.img of=$RP_DISK bs=1M conv=fsync 2>/dev/null
	dd if=/dev/zero of=$RP_LOG bs=1M count=1 conv=fsync 2>/dev/null
	D0=$(printf "%${RNB}s" | tr ' ' 0)
	D1=$D0
	: >$RP/marks
	record_state

	dmsetup create lw --table "0 $(blockdev --getsz $RP_DISK) log-writes $RP_DISK $RP_LOG"
	dmsetup create wm --table "0 $RMETA linear /dev/mapper/lw 0"
	dmsetup create wd --table "0 $RSZ linear /dev/mapper/lw $RMETA"
	mark begin
	nbdkit -U $RP/w.sock -P $RP/w.nbdpid file file=$RP/served.raw
	wait_for 10 test -S $RP/w.sock
	RTABLE="0 $RSZ stream /dev/mapper/wm /dev/mapper/wd $RBS"
	dmsetup create rs --table "$RTABLE"
	rp_helper rs $RP/w.sock
	rp_fsync
	mark created

	# Reads of absent blocks (fetched, present, clean).
	for b in 0 1 2 3 10 20 21 22 23; do
		dd if=/dev/mapper/rs of=/dev/null bs=$RBB skip=$b count=1 \
			iflag=direct 2>/dev/null
	done
	rp_fsync
	mark reads

	# Whole-block writes to absent blocks, partial ones to an absent
	# (fetch and merge) and a present block.
	w 4 0 $RBB
	w 5 0 $RBB
	w 6 8192 4096
	w 1 1536 512
	w 12 0 $RBB
	rp_fsync
	mark writes1

	# Rewrites of present dirty blocks.
	w 4 0 $RBB
	w 5 32768 4096
	rp_fsync
	mark writes2

	# A whole-block discard: over dm-log-writes (no write-zeroes) the
	# target advertises no discard support, so it may be refused.
	if blkdiscard -o $((8 * RBB)) -l $RBB /dev/mapper/rs 2>/dev/null; then
		dd if=/dev/zero of=$RP/model.raw bs=$RBB seek=8 count=1 \
			conv=notrunc 2>/dev/null
		D0=$(setc "$D0" 8 1)
		D1=$(setc "$D1" 8 1)
		record_state
		say "discard accepted"
	else
		say "discard refused (no write-zeroes below the target)"
	fi
	rp_fsync
	mark discard

	# A FUA write (O_DSYNC), durable when it completes: no fsync.
	w 13 0 $RBB dsync
	mark fua

	# Snapshot of consumer 1 drained and acknowledged while a writer
	# rewrites a snapshot block (4) and a new one (14): either may land
	# before or after the cut, so after the ack they may be dirty or not.
	rm -f $RP/c1.sock
	truncate -s $((RSZ * 512)) $RP/c1.raw
	nbdkit -U $RP/c1.sock -P $RP/c1.nbdpid file file=$RP/c1.raw
	wait_for 10 test -S $RP/c1.sock
	_s4=$((SRCOFF + 300 * 4096))
	(
		sleep 0.2
		stream-replay write /dev/mapper/rs --at $((4 * RBB)) --len $RBB \
			--src $IMG --src-at $_s4
		stream-replay write /dev/mapper/rs --at $((14 * RBB)) \
			--len $RBB --src $IMG --src-at $((_s4 + RBB))
	) &
	_writer=$!
	# the model: both writes (dirty for 1 until the ack)
	dd if=$IMG of=$RP/model.raw bs=$RBB skip=$((_s4 / RBB)) seek=4 \
		count=1 conv=notrunc 2>/dev/null
	dd if=$IMG of=$RP/model.raw bs=$RBB skip=$((_s4 / RBB + 1)) seek=14 \
		count=1 conv=notrunc 2>/dev/null
	D0=$(setc "$D0" 4 1); D0=$(setc "$D0" 14 1)
	D1=$(setc "$D1" 4 1); D1=$(setc "$D1" 14 1)
	record_state
	streamctl snapshot rs --consumer 1 --to "nbd+unix:///?socket=$RP/c1.sock"
	wait $_writer
	# Acked: clean for 1 except what the writer may have written after
	# the cut.
	D1=$(printf "%${RNB}s" | tr ' ' 0)
	D1=$(setc "$D1" 4 '?'); D1=$(setc "$D1" 14 '?')
	record_state
	w 15 0 $RBB
	rp_fsync
	mark acked

	# Table reload.
	dmsetup reload rs --table "$RTABLE"
	dmsetup suspend rs
	dmsetup resume rs
	rstatus rs 5 | grep -q attached || { rp_helper_stop; rp_helper rs $RP/w.sock; }
	w 16 0 $RBB
	rp_fsync
	mark reloaded

	# Revert: blocks dirty for 0 follow the image again and become
	# dirty for 1.
	_i=0
	while [ $_i -lt $RNB ]; do
		if [ "$(echo "$D0" | cut -c$((_i + 1)))" = 1 ]; then
			dd if=$RP/v1.raw of=$RP/model.raw bs=$RBB skip=$_i \
				seek=$_i count=1 conv=notrunc 2>/dev/null
			D1=$(setc "$D1" $_i 1)
		fi
		_i=$((_i + 1))
	done
	D0=$(printf "%${RNB}s" | tr ' ' 0)
	record_state
	streamctl revert rs
	mark reverted

	w 2 0 $RBB
	w 9 4096 4096
	rp_fsync
	mark writes3

	# Image update to v2 (keep): blocks 20-23 (present, clean) follow v2;
	# block 2 (dirty) keeps its local content.  All become dirty for 1.
	cp $RP/v2.raw $RP/served.raw
	for b in 20 21 22 23; do
		dd if=$RP/v2.raw of=$RP/model.raw bs=$RBB skip=$b seek=$b \
			count=1 conv=notrunc 2>/dev/null
		D1=$(setc "$D1" $b 1)
	done
	record_state
	printf '%s %s\n%s %s\n' $((20 * RBB)) $((4 * RBB)) $((2 * RBB)) $RBB \
		>$RP/ranges
	streamctl invalidate rs --image-id v2 --keep $RP/ranges
	wait_for 10 sh -c "dmsetup status rs | grep -q ' attached '"
	mark updated

	# Background fill to completion.
	streamctl fill rs on
	wait_for 120 sh -c "[ \"\$(dmsetup status rs | awk '{print \$5}')\" = $RNB/$RNB ]"
	streamctl fill rs off
	rp_fsync
	mark filled

	# A last write, fsync'd, then the device removed.  (Without the fsync
	# it is not durable: a suspend with no metadata change flushes
	# nothing, and dm-log-writes logs it after the removal.)
	w 30 0 $RBB
	rp_fsync
	rp_helper_stop
	dmsetup remove rs
	mark removed
	dmsetup remove wm
	dmsetup remove wd
	dmsetup remove lw	# logs its end mark and updates the super
	kill "$(cat $RP/w.nbdpid)" "$(cat $RP/c1.nbdpid)"
	rm -f $RP/w.nbdpid $RP/c1.nbdpid
	# Keep the log on tmpfs: the replays read it many times.
	dd if=$RP_LOG of=$RP/log bs=1M 2>/dev/null
	stream-replay list $RP/log >$RP/entries
	say "measured: log of $(wc -l <$RP/entries) entries," \
		"$(awk '$2 % 4 >= 1' $RP/entries | wc -l) with FLUSH or FUA"
	grep -q " MARK removed$" $RP/entries
}

# --- the checks -------------------------------------------------------------

# Crash points: "<point> <torn entry|-> <torn sectors>", sorted.  Point p
# means entries [0, p) applied.
choose_points() {
	awk -v other=$RP_OTHER -v torn=$RP_TORN -v meta=$RMETA '
	{ n = $1 + 1; fl[$1] = $2; sec[$1] = $3; nr[$1] = $4 }
	END {
		for (i = 0; i < n; i++)
			if (fl[i] % 4 >= 1) { pt[i + 1] = 1; nf++ }
		# other points, evenly spread over the rest
		rest = n + 1 - nf
		step = rest / other; if (step < 1) step = 1
		k = 0
		for (i = 0; i <= n && k < other; i += step) {
			j = int(i)
			while (j <= n && (j in pt)) j++
			if (j <= n) { pt[j] = 1; k++ }
		}
		for (p in pt) print p, "-", 0
		# torn: writes with data, metadata first
		for (i = 0; i < n; i++)
			if (int(fl[i] / 4) % 4 == 0 && nr[i] >= 2) {
				if (sec[i] < meta) m[nm++] = i; else d[nd++] = i
			}
		tm = int(torn * 2 / 3); if (tm > nm) tm = nm
		td = torn - tm; if (td > nd) td = nd
		for (k = 0; k < tm; k++) {
			i = m[int(k * nm / tm)]
			print i, i, 1 + (i * 7) % (nr[i] - 1)
		}
		for (k = 0; k < td; k++) {
			i = d[int(k * nd / td)]
			print i, i, 1 + (i * 7) % (nr[i] - 1)
		}
	}' $RP/entries | sort -n -k1,1 -k2,2
}

# The window of allowed states for point $1: "<first> <last>" states.
window() {
	awk -v p=$1 '
	FILENAME == ARGV[1] { st[$1] = $2; next }
	$6 != "-" && ($6 in st) {
		if ($1 < p) first = st[$6]
		else if (last == "") last = st[$6]
	}
	END { if (last == "") last = first; print first + 0, last + 0 }
	' $RP/marks $RP/entries
}

ranges_to_bits() {	# "<next> a+n b+m ..." on stdin -> 0/1 string
	awk -v nb=$RNB '{
		for (i = 0; i < nb; i++) b[i] = 0
		for (f = 2; f <= NF; f++) {
			split($f, r, "+")
			for (i = r[1]; i < r[1] + r[2]; i++) b[i] = 1
		}
		s = ""; for (i = 0; i < nb; i++) s = s b[i]; print s
	}'
}

fail_at() {	# fail_at <invariant> <message>
	echo "$PT_DESC: $2" >>$RP/fail.$1
}

# Check the copy on /dev/loop0 (cm, cd slices) as point $PT_DESC.
check_point() {
	_kn=$(dmesg | wc -l)
	_mz=$(stream-replay sums /dev/mapper/cm --bs $((RMETA * 512)))
	if ! dmsetup create c --table \
		"0 $RSZ stream /dev/mapper/cm /dev/mapper/cd $RBS" \
		>/dev/null 2>&1; then
		fail_at load "refused: $(dmesg | tail -n +$((_kn + 1)) |
			grep 'stream:' | tail -n 2 | tr '\n' ' ')"
		return 0
	fi
	_klog=$(dmesg | tail -n +$((_kn + 1)) | grep 'stream:' || true)
	if echo "$_klog" | grep -Eiq "checksum|magic|version|location|geometry|inconsistent|too small|invalid|corrupt|repair|error|fail|cannot"; then
		fail_at load "complaint: $(echo "$_klog" | tr '\n' ' ')"
	fi
	if echo "$_klog" | grep -q "formatted metadata" && [ "$_mz" != "$ZERO_META" ]; then
		fail_at load "formatted over metadata that was not zero"
	fi
	set -- $(dmsetup status c)
	_mode=$9 _img=${16}
	[ "$_mode" = rw ] || fail_at load "mode $_mode"
	case $_img in
	v2) _isock=$V2_SOCK; _ih=$RP/v2.h ;;
	*) _isock=$V1_SOCK; _ih=$RP/v1.h ;;
	esac
	rp_helper c $_isock || fail_at ops "helper did not attach"
	_abs=$(rp_msg c 0 absent 0 | ranges_to_bits) ||
		fail_at ops "absent refused"
	dmsetup suspend c || fail_at ops "suspend failed"
	_d0="" _d1=""
	for _c in 0 1; do
		if set -- $(rp_msg c 0 snapshot $_c) && [ $# = 2 ]; then
			_b=$(rp_msg c 0 ranges $_c $1 0 | ranges_to_bits) ||
				fail_at ops "ranges $_c $1 refused"
			rp_msg c 0 abort $_c $1 >/dev/null ||
				fail_at ops "abort $_c $1 refused"
		else
			fail_at ops "snapshot $_c refused"
			_b=""
		fi
		eval "_d$_c=\$_b"
	done
	dmsetup resume c || fail_at ops "resume failed"
	timeout 60 stream-replay sums /dev/mapper/c --bs $RBB | tr '\n' ' ' \
		>$RP/x || true
	echo >>$RP/x
	_rev=""
	if [ "$_mode" = rw ]; then
		dmsetup suspend c || fail_at ops "suspend failed"
		rp_msg c 0 revert >/dev/null || _rev="revert refused"
		dmsetup resume c || fail_at ops "resume failed"
		timeout 60 stream-replay sums /dev/mapper/c --bs $RBB |
			tr '\n' ' ' >>$RP/x || true
		echo >>$RP/x
	fi
	rp_helper_stop
	dmsetup remove c || fail_at ops "remove failed"
	_want=$RNB
	[ "$_mode" = rw ] && _want=$((RNB * 2))
	if [ "$(wc -w <$RP/x)" != $_want ]; then
		fail_at ops "device reads incomplete"
	fi
	set -- $(window $PT)
	awk -v first=$1 -v last=$2 -v abs=$_abs -v d0=$_d0 -v d1=$_d1 \
	    -v nb=$RNB -v rev="$_rev" -v texempt="${PT_EXEMPT:-}" \
	    -v desc="$PT_DESC" -v out=$RP/fail. '
	function f(inv, msg) { print desc ": " msg >> (out inv) }
	FILENAME == ARGV[1] { if ($1 >= first && $1 <= last)
		for (i = 0; i < nb; i++) ok[i, $(i + 2)] = 1
		next }
	FILENAME == ARGV[2] { if ($1 >= first && $1 <= last)
		for (i = 0; i < nb; i++) { c = substr($2, i + 1, 1)
			if (c != "1") no0[i] = 1; if (c != "0") may0[i] = 1 }
		next }
	FILENAME == ARGV[3] { if ($1 >= first && $1 <= last)
		for (i = 0; i < nb; i++) { c = substr($2, i + 1, 1)
			if (c != "1") no1[i] = 1; if (c != "0") may1[i] = 1 }
		next }
	FILENAME == ARGV[4] { for (i = 0; i < nb; i++) img[i] = $(i + 1); next }
	FNR == 1 {
		for (i = 0; i < nb; i++) {
			x = $(i + 1)
			ex = (" " texempt " ") ~ (" " i " ")
			if (!ok[i, x] && !ex)
				f("durable", "block " i " has a content it never had between the marks (states " first "-" last ")")
			pres = substr(abs, i + 1, 1) == "0"
			dd0 = substr(d0, i + 1, 1) == "1"
			dd1 = substr(d1, i + 1, 1) == "1"
			if (pres && !dd0 && x != img[i])
				f("clean", "block " i " present, clean for 0, differs from the image")
			if (!dd0 && !no0[i]) f("dirty0", "block " i " written durably but clean for 0")
			if (dd0 && !may0[i]) f("dirty0", "block " i " dirty for 0, never written")
			if (!dd1 && !no1[i]) f("ack", "block " i " dirty for 1 lost")
			if (dd1 && !may1[i]) f("ack", "block " i " dirty for 1 though acknowledged and not written after the cut")
		}
	}
	FNR == 2 {
		if (rev != "") f("revert", rev)
		for (i = 0; i < nb; i++) if ($(i + 1) != img[i])
			f("revert", "block " i " differs from the image after revert")
	}
	' $RP/states.h $RP/states.d0 $RP/states.d1 $_ih $RP/x
	return 0
}

t_replay_check() {
	rp_teardown
	rm -f $RP/fail.* $RP/checked
	[ -s $RP/entries ] || { echo "# no log: the workload failed"; return 1; }
	for _v in v1 v2; do
		stream-replay sums $RP/$_v.raw --bs $RBB | tr '\n' ' ' >$RP/$_v.h
		echo >>$RP/$_v.h
	done
	dd if=/dev/zero of=$RP/z bs=512 count=$RMETA 2>/dev/null
	ZERO_META=$(stream-replay sums $RP/z --bs $((RMETA * 512)))
	rp_servers
	cp $RP/base.img $RP/r.img		# the replay, moved forward
	cp $RP/base.img $RP/c.img		# the copy each point checks
	LOOP=$(losetup -f)
	losetup $LOOP $RP/c.img
	echo $LOOP >$RP/loopdev
	dmsetup create cm --table "0 $RMETA linear $LOOP 0"
	dmsetup create cd --table "0 $RSZ linear $LOOP $RMETA"
	choose_points >$RP/points
	say "points: $(wc -l <$RP/points) ($(awk '$2 != "-"' $RP/points | wc -l) torn)"
	echo "# replay: $(wc -l <$RP/points) points" >/dev/console
	_at=0 _n=0 _t0=$(date +%s)
	while read -r PT _te _ts; do
		if [ $PT -gt $_at ]; then
			stream-replay replay $RP/log $RP/r.img --from $_at --to $PT
			_at=$PT
		fi
		dd if=$RP/r.img of=$LOOP bs=1M oflag=direct 2>/dev/null
		PT_EXEMPT=""
		_kind=$(awk -v e=$((PT - 1)) '$1 == e { print $5 }' $RP/entries)
		PT_DESC="point $PT (after ${_kind:-nothing})"
		if [ "$_te" != - ]; then
			stream-replay tear $RP/log $LOOP --entry $_te \
				--sectors $_ts
			set -- $(awk -v e=$_te '$1 == e { print $3, $4, $5 }' \
				$RP/entries)
			PT_DESC="point $PT + entry $_te ($3 at $1+$2) torn after $_ts sectors"
			if [ $1 -ge $RMETA ]; then
				PT_EXEMPT=$(awk -v a=$(($1 - RMETA)) -v n=$2 -v bs=$RBS \
					'BEGIN { for (b = int(a / bs); b * bs < a + n; b++) printf "%d ", b }')
			fi
		fi
		[ $RP_MAX = 0 ] || [ $_n -lt $RP_MAX ] || break
		check_point
		_n=$((_n + 1))
		echo $_n >$RP/checked
		# progress on the console (the test's own output is kept)
		[ $((_n % 25)) != 0 ] ||
			echo "# replay: $_n points in $(($(date +%s) - _t0)) s" \
				>/dev/console
	done <$RP/points
	_dt=$(($(date +%s) - _t0))
	say "measured: crash points checked $_n in ${_dt} s"
	rp_teardown
	[ $_n -gt 0 ]
}

# One result per invariant, from the checks' failure lists.
report() {	# report <invariant>
	_n=$(cat $RP/checked 2>/dev/null || echo 0)
	if [ "$_n" = 0 ]; then
		echo "# no crash point was checked"
		return 1
	fi
	if [ -s $RP/fail.$1 ]; then
		echo "# $(wc -l <$RP/fail.$1) violations over $_n points; first ones:"
		head -n 20 $RP/fail.$1 | sed 's/^/# /'
		echo "# by kind:"
		sed 's/: .*//; s/point [0-9]* //; s/entry [0-9]* //; s/ at [0-9+]*//; s/after [0-9]* sectors//' \
			$RP/fail.$1 | sort | uniq -c | sed 's/^/# /'
		return 1
	fi
	echo "# $_n points, no violation"
}

r_ops() { report ops; }
r_load() { report load; }
r_durable() { report durable; }
r_clean() { report clean; }
r_dirty0() { report dirty0; }
r_ack() { report ack; }
r_revert() { report revert; }
# Every FLUSH/FUA point and $RP_OTHER others (every point of a shorter
# log) were checked, and some torn ones.
r_points() {
	_n=$(cat $RP/checked 2>/dev/null || echo 0)
	_e=$(wc -l <$RP/entries 2>/dev/null || echo 0)
	_f=$(awk '$2 % 4 >= 1' $RP/entries 2>/dev/null | wc -l)
	_t=$(awk '$2 != "-"' $RP/points 2>/dev/null | wc -l)
	_want=$((_f + RP_OTHER))
	[ $_want -le $((_e + 1)) ] || _want=$((_e + 1))
	echo "# measured: crash points checked $_n ($((_n - _t)) whole," \
		"$_t torn; $_e log entries, $_f FLUSH/FUA)"
	[ "$_n" -gt 0 ] && [ $((_n - _t)) -ge $_want ] && [ "$_t" -gt 0 ]
}

TEST_TIMEOUT=300
run replay_workload t_replay_workload
TEST_TIMEOUT=3300		# about 3.5 s a point on Debian 6.12 under TCG
run replay_check t_replay_check
TEST_TIMEOUT=60
run replay_points r_points
run replay_ops r_ops
run replay_load r_load
run replay_durable r_durable
run replay_clean r_clean
run replay_dirty0 r_dirty0
run replay_ack r_ack
run replay_revert r_revert
rp_teardown
