# shellcheck shell=sh
# shellcheck disable=SC2086 # device paths and numbers never hold spaces
# shellcheck disable=SC2046 # "set -- $(...)" splits answers into words
# shellcheck disable=SC2034 # TEST_TIMEOUT is read by run() in lib.sh
# Crash-point replay (stream.suite=replay).
#
# Metadata and data sit on one disk ($RP_DISK, two dm-linear slices) under
# dm-log-writes, which records every write, flush and FUA that reaches the
# disk while a workload runs: reads of absent blocks, whole- and partial-
# block writes, fsyncs, FUA writes, a discard, a snapshot of consumer 1
# drained while a writer runs and acknowledged, a table reload, a revert,
# an image update (keep) and a background fill.  After each durable step
# the workload logs a mark and the oracle records the expected state.
#
# The device has 4096 blocks of 4 KiB, and the workload touches blocks
# above 3904 too: their bits lie in the second 512-byte sector of each
# bitmap block (bits of block b at byte 24 + b / 8), so tearing an
# in-place bitmap write can leave a block half old, half new.
#
# Then the log is replayed (tests/tools/stream-replay) up to every
# FLUSH/FUA entry, at least $RP_OTHER other points (three quarters before
# the image update, the rest over the fill's thousands of writes) and
# $RP_TORN points whose last write is torn at a sector boundary: a third
# journal slot writes (metadata sectors $RJ0..$RJ1: header only, all but
# the last sector, one sector, others), a third in-place metadata writes,
# the rest data writes.  "stream-replay point" moves a reference file
# forward and makes the loop-backed copy equal to it by rewriting only the
# blocks that differ (the previous check wrote metadata).  At each point
# the copy is loaded as a stream target with no helper and checked:
#
#   replay_load     the table loads, rw, no metadata complaint; metadata
#                   is formatted only if it was all zero
#   replay_durable  every block holds a content it had between the last
#                   mark and the next (fsync'd writes are never lost); a
#                   torn data write's own blocks are exempt
#   replay_clean    every present block clean for consumer 0 equals the
#                   image
#   replay_dirty0   consumer 0's dirty set: all blocks written durably,
#                   none whose write-intent region (8 blocks) had no
#                   write in the window
#   replay_ack      consumer 1's dirty set likewise: after the ack, only
#                   blocks of regions (possibly) written after the cut
#   replay_revert   after "revert" every present block equals the image,
#                   and no absent block became present
#   replay_ops      the messages the checks use (absent, snapshot, ranges,
#                   abort, revert) work, suspend/resume/remove work, the
#                   last present block reads the same through the target
#                   as from the data slice, and no check wrote data
#
# Nothing reads an absent block: its content is by definition the image's
# (the version the status names).  Present blocks are read straight from
# the data slice ("stream-replay diff": a hash for each block differing
# from image v1; hashes are "h" and hex digits, never a number to awk,
# whose numeric comparison of a hash such as 1461933e95733710 is wrong);
# the dirty sets come from suspend, "snapshot <c>",
# "ranges", "abort" (in core: the state is unchanged for the revert that
# follows).  The oracle: state s is the model content (the blocks that
# differ from v1, with their hash) and the blocks dirty for consumers 0 and
# 1 (1, or ? when a concurrent write makes it either).  A mark names the
# state current when it was logged; a point between marks k and k+1
# allows every state recorded between them.  Only blocks some state, the
# image update, an answer or the data slice names are examined: every
# other block holds v1 in every state and is dirty for nobody.

RP=/tmp/rp
RBS=8				# sectors per block (4 KiB)
RBB=$((RBS * 512))
RNB=4096			# blocks: the bitmaps' bits reach sector 1
RSZ=$((RNB * RBS))		# device sectors (16 MiB)
RMETA=2048			# metadata slice: 1 MiB at sector 0
# Metadata blocks (4 KiB): 16, then 9 bitmaps of RBMB blocks, then the
# journal (2 slots of 1 header + 64 images); 155 blocks here.
RBMB=$(((RNB + 32575) / 32576))
RJ0=$(((16 + 9 * RBMB) * 8))	# first journal sector
RJ1=$((RJ0 + 130 * 8))		# end of the journal
# Write-intent regions of 8 blocks: after a crash every block of a region
# that was open is dirty again (for every consumer), so a block may be
# dirty without a write of its own when a block of its region was written.
RIR=8
RIRS=$((RIR * RBS))
RP_DISK=$SCRATCH		# the recorded disk (32 MiB)
RP_LOG=$DATA			# the dm-log-writes log (32 MiB)
RP_OTHER=200			# points besides FLUSH/FUA ones
RP_TORN=60			# torn points
RP_MAX=0			# stop after this many points (0: all)
RP_FLUSH=0			# FLUSH/FUA points, evenly sampled (0: all)
# Kernel command line: stream.replay=<other>,<torn>,<max>[,<flush>]
# (run-all.sh explores every point on every kernel, or samples with
# STREAM_REPLAY_SAMPLE=1, see replay_points there).
read -r _cl </proc/cmdline
for _a in $_cl; do
	case $_a in
	stream.replay=*,*,*,*)
		IFS=, read -r RP_OTHER RP_TORN RP_MAX RP_FLUSH <<-EOF
		${_a#stream.replay=}
		EOF
		;;
	stream.replay=*,*,*)
		IFS=, read -r RP_OTHER RP_TORN RP_MAX <<-EOF
		${_a#stream.replay=}
		EOF
		;;
	esac
done
SRCOFF=$((16 << 20))		# new content: the image's 16-24 MiB
STATE=0

rp_msg() { dmsetup message "$@"; }

# --- the oracle ---------------------------------------------------------

# Set char $2 (0-based) of string $1 to $3.
setc() { echo "$1" | awk -v i="$2" -v c="$3" \
	'{ print substr($0, 1, i) c substr($0, i + 2) }'; }

zeros() { printf "%${RNB}s" | tr ' ' 0; }

# The model as state $STATE, sparse: "<state> <block>:<hash>..." for the
# blocks whose content differs from image v1, "<state> <block>:<1|?>..."
# for the blocks dirty (or maybe dirty) for consumers 0 and 1.
record_state() {
	STATE=$((STATE + 1))
	stream-replay sums $RP/model.raw --bs $RBB |
	awk -v s=$STATE -v d0="$D0" -v d1="$D1" -v o=$RP/states. '
	function sparse(d,   x, i, c) {
		x = ""
		for (i = 0; i < length(d); i++) {
			c = substr(d, i + 1, 1); if (c != "0") x = x " " i ":" c
		}
		return x
	}
	NR == FNR { v[FNR - 1] = $1; next }
	$1 != v[FNR - 1] { h = h " " (FNR - 1) ":" $1 }
	END {
		print s h >> (o "h")
		print s sparse(d0) >> (o "d0")
		print s sparse(d1) >> (o "d1")
	}' $RP/v1.sums -
}

mark() {	# mark <name>: log a mark naming the current state
	rp_msg lw 0 mark "$1"
	echo "$1 $STATE" >>$RP/marks
	say "mark $1 = state $STATE"
}

# w <block> <offset in block> <length> [dsync]: a write of new content
# through the stream device (one bio, maybe over several blocks), applied
# to the model too; every block it touches dirty for 0 and 1.
w() {
	_src=$((SRCOFF + (($1 * 7 + STATE) % 2048) * 4096))
	stream-replay write /dev/mapper/rs --at $(($1 * RBB + $2)) --len $3 \
		--src $IMG --src-at $_src ${4:+--dsync 1}
	dd if=$IMG of=$RP/model.raw bs=512 skip=$((_src / 512)) \
		seek=$((($1 * RBB + $2) / 512)) count=$(($3 / 512)) \
		conv=notrunc 2>/dev/null
	_b=$1
	while [ $_b -le $((($1 * RBB + $2 + $3 - 1) / RBB)) ]; do
		D0=$(setc "$D0" $_b 1)
		D1=$(setc "$D1" $_b ${D1MARK:-1})
		_b=$((_b + 1))
	done
	record_state
}

rp_fsync() { stream-replay fsync /dev/mapper/rs; }

rp_helper() {	# rp_helper <device> <socket>
	rm -f $RP/streamd.pid
	streamd "$1" "nbd+unix:///?socket=$2" 2>>$RP/streamd.log &
	echo $! >$RP/streamd.pid
	wait_for 10 sh -c "dmsetup status $1 | grep -q ' attached '"
}

# Stop the workload's streamd: it must exit 0 and have logged no
# failed/dropped/malformed/exiting line (127: not our child, unknown).
rp_helper_stop() {
	[ -f $RP/streamd.pid ] || return 0
	kill "$(cat $RP/streamd.pid)" 2>/dev/null || true
	_hrc=0
	wait "$(cat $RP/streamd.pid)" 2>/dev/null || _hrc=$?
	rm -f $RP/streamd.pid
	if [ $_hrc != 0 ] && [ $_hrc != 127 ]; then
		echo "# streamd exited with status $_hrc"
		return 1
	fi
	# (its counters, written at exit without --stats, do not count)
	if grep -vE '^[a-z_]+=[0-9]+$' $RP/streamd.log |
	   grep -E "failed|dropped|malformed|exiting"; then
		echo "# streamd logged the lines above"
		return 1
	fi
}

rp_teardown() {
	rp_helper_stop || true
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
	# Images: v1 is the first 16 MiB of the test image, v2 changes blocks
	# 20-23 and 4090-4093 (bits in the second sector of the bitmaps).
	# The workload's export starts as v1 and is switched to v2 just
	# before the image update.
	dd if=$IMG of=$RP/v1.raw bs=$RBB count=$RNB 2>/dev/null
	cp $RP/v1.raw $RP/v2.raw
	_v2=$(((24 << 20) / RBB))
	dd if=$IMG of=$RP/v2.raw bs=$RBB skip=$_v2 seek=20 count=4 \
		conv=notrunc 2>/dev/null
	dd if=$IMG of=$RP/v2.raw bs=$RBB skip=$((_v2 + 4)) seek=4090 count=4 \
		conv=notrunc 2>/dev/null
	stream-replay sums $RP/v1.raw --bs $RBB >$RP/v1.sums
	cp $RP/v1.raw $RP/served.raw
	cp $RP/v1.raw $RP/model.raw
	# The disk: zero metadata, data 0xff (a block wrongly present reads as
	# garbage).  The replay copy starts identical.
	dd if=/dev/zero of=$RP/base.img bs=512 count=$RMETA 2>/dev/null
	tr '\000' '\377' </dev/zero | dd of=$RP/base.img bs=512 seek=$RMETA \
		count=$RSZ iflag=fullblock 2>/dev/null
	dd if=$RP/base.img of=$RP_DISK bs=1M conv=fsync 2>/dev/null
	dd if=/dev/zero of=$RP_LOG bs=1M count=1 conv=fsync 2>/dev/null
	D0=$(zeros)
	D1=$D0
	: >$RP/marks
	record_state

	dmsetup create lw --table "0 $(blockdev --getsz $RP_DISK) log-writes $RP_DISK $RP_LOG"
	dmsetup create wm --table "0 $RMETA linear /dev/mapper/lw 0"
	dmsetup create wd --table "0 $RSZ linear /dev/mapper/lw $RMETA"
	mark begin
	nbdkit -U $RP/w.sock -P $RP/w.nbdpid file file=$RP/served.raw
	wait_for 10 test -S $RP/w.sock
	RTABLE="0 $RSZ stream /dev/mapper/wm /dev/mapper/wd $RBS 2 intent_region $RIRS"
	dmsetup create rs --table "$RTABLE"
	rp_helper rs $RP/w.sock
	rp_fsync
	mark created

	# Reads of absent blocks (fetched, present, clean), at both ends.
	for b in 0 1 2 3 10 20 21 22 23 3900 3910 4000 4090 4091; do
		dd if=/dev/mapper/rs of=/dev/null bs=$RBB skip=$b count=1 \
			iflag=direct 2>/dev/null
	done
	rp_fsync
	mark reads

	# Whole-block writes to absent blocks, partial ones to an absent
	# (fetch and merge) and a present block.
	w 4 0 $RBB
	w 5 0 $RBB
	w 6 1024 2048
	w 1 1536 512
	w 12 0 $RBB
	w 3950 0 $RBB
	w 4095 512 1024
	w 3910 2048 1024
	# one write over three whole absent blocks: three fills, one bio
	w 24 0 $((RBB * 3))
	rp_fsync
	mark writes1

	# Rewrites of present dirty blocks.
	w 4 0 $RBB
	w 5 2048 1024
	w 3950 0 $RBB
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

	# FUA writes (O_DSYNC), durable when they complete: no fsync.
	w 13 0 $RBB dsync
	w 3990 0 $RBB dsync
	w 28 0 $((RBB * 2)) dsync
	mark fua

	# A FUA write to a block a fill made present a moment ago, in a
	# write-intent region that a write to a present block (10) opened:
	# the fill's present bit must be durable when the FUA write
	# completes, not only its data.
	w 10 0 1024
	w 14 0 $RBB
	w 14 1024 1024 dsync
	mark fua_fill

	# Snapshot of consumer 1 drained and acknowledged while a writer
	# rewrites a snapshot block (4) and a new one (4050): either may land
	# before or after the cut, so after the ack they may be dirty or not.
	rm -f $RP/c1.sock
	truncate -s $((RSZ * 512)) $RP/c1.raw
	nbdkit -U $RP/c1.sock -P $RP/c1.nbdpid file file=$RP/c1.raw
	wait_for 10 test -S $RP/c1.sock
	_s4=$((SRCOFF + 3000 * 4096))
	(
		sleep 0.2
		stream-replay write /dev/mapper/rs --at $((4 * RBB)) --len $RBB \
			--src $IMG --src-at $_s4
		stream-replay write /dev/mapper/rs --at $((4050 * RBB)) \
			--len $RBB --src $IMG --src-at $((_s4 + RBB))
	) &
	_writer=$!
	# the model: both writes (dirty for 1 until the ack)
	dd if=$IMG of=$RP/model.raw bs=$RBB skip=$((_s4 / RBB)) seek=4 \
		count=1 conv=notrunc 2>/dev/null
	dd if=$IMG of=$RP/model.raw bs=$RBB skip=$((_s4 / RBB + 1)) seek=4050 \
		count=1 conv=notrunc 2>/dev/null
	D0=$(setc "$D0" 4 1); D0=$(setc "$D0" 4050 1)
	D1=$(setc "$D1" 4 1); D1=$(setc "$D1" 4050 1)
	record_state
	streamctl snapshot rs --consumer 1 --to "nbd+unix:///?socket=$RP/c1.sock"
	wait $_writer
	# Acked: clean for 1 except what the writer may have written after
	# the cut.
	D1=$(zeros)
	D1=$(setc "$D1" 4 '?'); D1=$(setc "$D1" 4050 '?')
	record_state
	w 15 0 $RBB
	rp_fsync
	mark acked

	# Block 12's write (its bits left the disk with the ack) opens
	# region 1 (blocks 8-15); block 13's goes under the open region.
	w 12 0 $RBB
	w 13 0 $RBB
	rp_fsync
	mark region1

	# Table reload.
	dmsetup reload rs --table "$RTABLE"
	dmsetup suspend rs
	dmsetup resume rs
	rstatus rs 5 | grep -q attached || { rp_helper_stop; rp_helper rs $RP/w.sock; }
	# Block 13 was written in region 1 while it was open, and the
	# suspend's commit closed the region with 13's bits: rewritten now,
	# it goes down with no commit.
	_g=$(rstatus rs 10)
	w 13 0 $RBB
	expect_eq "commits for the rewrite of block 13" "$_g" "$(rstatus rs 10)"
	w 16 0 $RBB
	w 3999 0 $RBB
	rp_fsync
	mark reloaded

	# Revert: blocks dirty for 0 follow the image again and become
	# dirty for 1.
	for _i in $(echo "$D0" | awk '{ for (i = 1; i <= length($0); i++)
		if (substr($0, i, 1) == "1") print i - 1 }'); do
		dd if=$RP/v1.raw of=$RP/model.raw bs=$RBB skip=$_i \
			seek=$_i count=1 conv=notrunc 2>/dev/null
		D1=$(setc "$D1" $_i 1)
	done
	D0=$(zeros)
	record_state
	streamctl revert rs
	mark reverted

	w 2 0 $RBB
	w 9 1024 2048
	w 4093 0 $RBB
	rp_fsync
	mark writes3

	# Image update to v2 (keep): blocks 20-23 and 4090-4092 (present or
	# absent, clean) follow v2; blocks 2 and 4093 (dirty) keep their
	# local content.  All become dirty for 1.
	cp $RP/v2.raw $RP/served.raw
	for b in 20 21 22 23 4090 4091 4092; do
		dd if=$RP/v2.raw of=$RP/model.raw bs=$RBB skip=$b seek=$b \
			count=1 conv=notrunc 2>/dev/null
	done
	for b in 2 20 21 22 23 4090 4091 4092 4093; do
		D1=$(setc "$D1" $b 1)
	done
	record_state
	printf '%s %s\n%s %s\n%s %s\n' $((20 * RBB)) $((4 * RBB)) \
		$((2 * RBB)) $RBB $((4090 * RBB)) $((4 * RBB)) >$RP/ranges
	streamctl invalidate rs --image-id v2 --keep $RP/ranges
	wait_for 10 sh -c "dmsetup status rs | grep -q ' attached '"
	mark updated

	# Background fill to completion (every bit of the present map
	# changes, the second sector's too).
	streamctl fill rs on
	wait_for 400 sh -c "[ \"\$(dmsetup status rs | awk '{print \$5}')\" = $RNB/$RNB ]"
	streamctl fill rs off
	rp_fsync
	mark filled

	# A last write, fsync'd, then the device removed.  (Without the fsync
	# it is not durable: a suspend with no metadata change flushes
	# nothing, and dm-log-writes logs it after the removal.)
	w 30 0 $RBB
	w 4094 0 $RBB
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
		"$(awk '$2 % 4 >= 1' $RP/entries | wc -l) with FLUSH or FUA," \
		"$(awk -v a=$RJ0 -v b=$RJ1 '$3 >= a && $3 < b && $4 > 0' \
			$RP/entries | wc -l) journal writes"
	grep -q " MARK removed$" $RP/entries
}

# --- the checks -------------------------------------------------------------

# Crash points, one a line, sorted:
#   <point> <torn entry|-> <torn sectors> <first> <last> <what> <tkind>
# Point p means entries [0, p) applied (then the first <torn sectors> of
# entry p when torn); <first>..<last> are the states the oracle allows
# (between the marks around p); <what> names entry p - 1 or the torn
# entry; <tkind> is the torn write's kind: jnl (a journal slot), meta (an
# in-place metadata write), data, or - for a whole point.
choose_points() {
	awk -v other=$RP_OTHER -v torn=$RP_TORN -v meta=$RMETA \
	    -v j0=$RJ0 -v j1=$RJ1 -v flush=$RP_FLUSH '
	{ n = $1 + 1; fl[$1] = $2; sec[$1] = $3; nr[$1] = $4; nm[$1] = $5
	  if ($6 == "updated") upd = $1 }
	function pick(a, b, cnt,   step, i, j, k) {	# cnt points in [a, b]
		step = (b - a + 1) / cnt; if (step < 1) step = 1
		for (i = a; i <= b && k < cnt; i += step) {
			j = int(i)
			while (j <= b && (j in pt)) j++
			if (j <= b) { pt[j] = 1; k++ }
		}
		# collisions with FLUSH/FUA points: fill up from the start
		for (j = a; j <= b && k < cnt; j++)
			if (!(j in pt)) { pt[j] = 1; k++ }
	}
	END {
		for (i = 0; i < n; i++)
			if (fl[i] % 4 >= 1) fp[nf++] = i + 1
		if (flush > 0 && flush < nf) {
			for (k = 0; k < flush; k++) pt[fp[int(k * nf / flush)]] = 1
		} else {
			for (k = 0; k < nf; k++) pt[fp[k]] = 1
		}
		# three quarters of the others before the image update, the
		# rest over the fill (thousands of one-block writes)
		if (upd == "") upd = n
		pick(0, upd, int(other * 3 / 4))
		pick(upd + 1, n, other - int(other * 3 / 4))
		for (p in pt) print p, "-", 0, "-"
		for (i = 0; i < n; i++) {
			if (int(fl[i] / 4) % 4 != 0 || nr[i] < 2) continue
			if (sec[i] >= meta) d[nd++] = i
			else if (sec[i] >= j0 && sec[i] < j1 && nr[i] >= 16) jn[nj++] = i
			else m[nmt++] = i
		}
		tj = int(torn / 3); if (tj > nj) tj = nj
		tm = int(torn / 3); if (tm > nmt) tm = nmt
		td = torn - tj - tm; if (td > nd) td = nd
		if (tj + tm + td < torn) { tj = torn - tm - td; if (tj > nj) tj = nj }
		for (k = 0; k < tj; k++) {
			i = jn[int(k * nj / tj)]
			# header only, all but the last sector, one sector, others
			if (k % 4 == 0) t = 8
			else if (k % 4 == 1) t = nr[i] - 1
			else if (k % 4 == 2) t = 1
			else t = 1 + (i * 7) % (nr[i] - 1)
			print i, i, t, "jnl"
		}
		for (k = 0; k < tm; k++) {
			i = m[int(k * nmt / tm)]
			print i, i, 1 + (k + i) % (nr[i] - 1), "meta"
		}
		for (k = 0; k < td; k++) {
			i = d[int(k * nd / td)]
			print i, i, 1 + (i * 7) % (nr[i] - 1), "data"
		}
	}' $RP/entries | sort -n -k1,1 -k2,2 |
	awk '
	FILENAME == ARGV[1] { st[$1] = $2; next }
	FILENAME == ARGV[2] { ent[$1] = $5 " at " $3 "+" $4
		if ($6 in st) { mi[nmk] = $1; ms[nmk++] = st[$6] }
		next }
	{
		first = 0; last = ""
		for (k = 0; k < nmk; k++)
			if (mi[k] < $1) first = ms[k]
			else if (last == "") last = ms[k]
		if (last == "") last = first
		w = ($2 == "-") ? $1 - 1 : $2
		what = (w in ent) ? ent[w] : "nothing"
		gsub(/ /, "_", what)
		print $1, $2, $3, first, last, what, $4
	}' $RP/marks $RP/entries -
}

# The kernel log records since the last call that contain $1, from this
# point's marker on, in $RP/klog.  Fd 7 (/dev/kmsg, opened by
# t_replay_check) remembers where the last call stopped: dmesg would read
# the whole log, which grows with every point.
rp_klog() {
	stream-replay klog --after "replay: point $PT ${_te:--}" --grep "$1" \
		<&7 >$RP/klog 2>$RP/klog.err ||
		fail_at load "reading the kernel log failed: $(cat $RP/klog.err)"
}

fail_at() {	# fail_at <invariant> <message>
	echo "$PT_DESC: $2" >>$RP/fail.$1
}

# Check the copy on $LOOP (cm, cd slices) as point $PT_DESC.  The target
# runs without a helper: the checks only read present blocks, straight
# from the data slice (an absent block's content is the image's by
# definition), and ask the target for its absent and dirty sets.
check_point() {
	echo "replay: point $PT ${_te:--}" >/dev/kmsg
	if ! dmsetup create c --table \
		"0 $RSZ stream /dev/mapper/cm /dev/mapper/cd $RBS 2 intent_region $RIRS" \
		>/dev/null 2>&1; then
		rp_klog stream
		fail_at load "refused: $(tail -n 2 $RP/klog | tr '\n' ' ')"
		return 0
	fi
	rp_klog 'device-mapper: stream'
	if grep -Eiq "checksum|magic|version|location|geometry|inconsistent|too small|invalid|corrupt|error|fail|cannot" $RP/klog; then
		fail_at load "complaint: $(tr '\n' ' ' <$RP/klog)"
	fi
	# Format writes the bitmaps and empty slots in place, then the
	# superblock as the first journal batch: before that batch is whole
	# in the log there is no superblock and formatting again is right.
	_fmt=0	# grep -q "formatted metadata", without a process
	while read -r _l; do
		case $_l in *"formatted metadata"*) _fmt=1 ;; esac
	done <$RP/klog
	if [ $_fmt = 1 ] && [ "$PT_ZERO" != 1 ] && [ $PT -gt $RP_FIRSTJ ]; then
		fail_at load "formatted over metadata that was not zero, after the first journal batch (entry $RP_FIRSTJ)"
	fi
	# One process asks what the shell used to ask with a dozen dmsetup
	# calls (stream-replay.c, "probe"): the status; the absent blocks;
	# the present ones (the complement) that differ from image v1, read
	# from the data slice into $RP/d; the last present block read through
	# the target (needs no helper); then, suspended, the dirty sets of
	# consumers 0 and 1 (snapshot, every page of ranges, abort: in core,
	# the state is unchanged for the revert that follows); when rw, revert
	# and the absent blocks after it; resume and remove.  Every ranges-like
	# answer must start with a cursor that moves forward (or ends the map).
	_mode="" _img="" _abs=x _d0=x _d1=x _rev="" _abs2=x
	stream-replay probe c $LOOP --blocks $RNB --bs $RBB --at $RMETA \
		--image $RP/v1.raw --diff $RP/d >$RP/probe 2>$RP/probe.err ||
		fail_at ops "probe failed: $(tr '\n' ' ' <$RP/probe.err)"
	while read -r _k _v; do
		case $_k in
		status) set -- $_v; _mode=${9:-} _img=${16:-} ;;
		absent) _abs=$_v ;;
		d0) _d0=$_v ;;
		d1) _d1=$_v ;;
		rev) _rev=$_v ;;
		abs2) _abs2=$_v ;;
		fail) fail_at "${_v%% *}" "${_v#* }" ;;
		*) fail_at ops "probe said '$_k $_v'" ;;
		esac
	done <$RP/probe
	[ "$_mode" = rw ] || fail_at load "mode $_mode"
	_ih=$RP/v1.img
	[ "$_img" = v2 ] && _ih=$RP/v2.img
	# Only the blocks some state, the update, the answers or the data
	# slice name can be wrong; every other block holds v1 in every
	# state, is dirty for nobody and, present or not, reads as the image.
	awk -v first=$PT_FIRST -v last=$PT_LAST -v abs="$_abs" -v d0="$_d0" \
	    -v d1="$_d1" -v abs2="$_abs2" -v rev="$_rev" -v nb=$RNB -v rir=$RIR \
	    -v texempt="${PT_EXEMPT:-}" -v desc="$PT_DESC" -v out=$RP/fail. '
	function f(inv, msg) { print desc ": " msg >> (out inv) }
	function inr(list, b,   n, k, r) {	# block b in "a+n ..." list
		n = split(list, rr, " ")
		for (k = 1; k <= n; k++) {
			split(rr[k], r, "+")
			if (b >= r[1] + 0 && b < r[1] + r[2]) return 1
		}
		return 0
	}
	function addr(list,   n, k, r, b) {	# add a range list to cand
		n = split(list, rr, " ")
		for (k = 1; k <= n; k++) {
			split(rr[k], r, "+")
			for (b = r[1]; b < r[1] + r[2]; b++) cand[b] = 1
		}
	}
	# The images, sparse (see t_replay_check): v1 content is "" here.
	FNR == 1 { fi++ }	# v1.img may be given twice
	fi == 1 { if (FNR > 1) v1[$1] = $2; next }
	fi == 2 { if (FNR > 1) { img[$1] = $2; if ($2 != v1[$1]) cand[$1] = 1 }; next }
	fi == 3 {
		for (k = 2; k <= NF; k++) { split($k, a, ":"); cand[a[1]] = 1
			if ($1 >= first && $1 <= last) { ok[a[1], a[2]] = 1; nl[a[1]]++ } }
		if ($1 >= first && $1 <= last) ns++
		next }
	fi == 4 || fi == 5 {
		c = fi - 4
		for (k = 2; k <= NF; k++) { split($k, a, ":"); cand[a[1]] = 1
			if ($1 >= first && $1 <= last) {
				nd[c, a[1]]++; if (a[2] == "1") n1[c, a[1]]++ } }
		if ($1 >= first && $1 <= last) nsd[c]++
		next }
	{ diff[$1] = $2; cand[$1] = 1 }
	END {
		if (abs == "x" || d0 == "x" || d1 == "x") exit
		addr(d0); addr(d1)
		# write intent: a region may be dirty where one of its
		# blocks may be, and so may the next one where that block
		# is in the last quarter (opened ahead: intent_ahead())
		for (i in cand) {
			i += 0
			reg = int(i / rir)
			ahead = (i % rir) * 4 >= 3 * rir
			if (nd[0, i] > 0) { rmay0[reg] = 1; if (ahead) rmay0[reg + 1] = 1 }
			if (nd[1, i] > 0) { rmay1[reg] = 1; if (ahead) rmay1[reg + 1] = 1 }
		}
		for (i in cand) {
			i += 0
			# states not listing the block hold v1 there
			if (nl[i] < ns) ok[i, v1[i]] = 1
			pres = !inr(abs, i)
			x = pres ? ((i in diff) ? diff[i] : v1[i]) : img[i]
			ex = (" " texempt " ") ~ (" " i " ")
			if (!ok[i, x] && !ex)
				f("durable", "block " i " has a content it never had between the marks (states " first "-" last ")")
			dd0 = inr(d0, i); dd1 = inr(d1, i)
			if (pres && !dd0 && x != img[i])
				f("clean", "block " i " present, clean for 0, differs from the image")
			# no: some state in the window has it clean; may: some dirty
			no0 = n1[0, i] < nsd[0]; may0 = (int(i / rir) in rmay0)
			no1 = n1[1, i] < nsd[1]; may1 = (int(i / rir) in rmay1)
			if (!dd0 && !no0) f("dirty0", "block " i " written durably but clean for 0")
			if (dd0 && !may0) f("dirty0", "block " i " dirty for 0, no block of its region written")
			if (!dd1 && !no1) f("ack", "block " i " dirty for 1 lost")
			if (dd1 && !may1) f("ack", "block " i " dirty for 1 though acknowledged and no block of its region written after the cut")
			if (abs2 != "x" && !inr(abs2, i) && x != img[i] && !ex)
				f("revert", "block " i " present after revert, differs from the image")
		}
		if (rev != "") f("revert", rev)
		if (abs2 != "x") {
			# a block absent before the revert stays absent: no
			# range present after it meets an absent one before
			n = split(abs2, q, " "); c = 0; p2 = ""
			for (k = 1; k <= n; k++) { split(q[k], r, "+")
				if (r[1] > c) p2 = p2 " " c "+" (r[1] - c)
				c = r[1] + r[2] }
			if (c < nb) p2 = p2 " " c "+" (nb - c)
			n = split(abs, q, " "); m = split(p2, pp, " ")
			for (k = 1; k <= n; k++) { split(q[k], r, "+")
				for (l = 1; l <= m; l++) { split(pp[l], t, "+")
					if (r[1] < t[1] + t[2] && t[1] < r[1] + r[2])
						f("revert", "blocks " q[k] " absent before the revert, " pp[l] " present after") } }
		}
	}' $RP/v1.img $_ih $RP/states.h $RP/states.d0 $RP/states.d1 $RP/d
	return 0
}

t_replay_check() {
	rp_teardown
	rm -f $RP/fail.* $RP/checked $RP/r.img.torn
	[ -s $RP/entries ] || { echo "# no log: the workload failed"; return 1; }
	stream-replay sums $RP/v2.raw --bs $RBB >$RP/v2.sums
	# The images for the oracle, sparse: a header line, then "<block>
	# <hash>" for the blocks that differ from v1.  A block holding v1's
	# content has content "" there (no hash is empty: every state, diff
	# and image hash differs from it exactly when the content differs
	# from v1), so that no check reads the 2 x 4096 lines of full sums.
	echo "# block hash" >$RP/v1.img
	cp $RP/v1.img $RP/v2.img
	awk 'NR == FNR { v[FNR - 1] = $1; next }
		$1 != v[FNR - 1] { print FNR - 1, $1 }' \
		$RP/v1.sums $RP/v2.sums >>$RP/v2.img
	[ "$(wc -l <$RP/v2.img)" -gt 1 ]	# the update changes blocks
	cp $RP/base.img $RP/r.img		# the replay, moved forward
	cp $RP/base.img $RP/c.img		# the copy each point checks
	exec 7</dev/kmsg
	LOOP=$(losetup -f)
	losetup $LOOP $RP/c.img
	echo $LOOP >$RP/loopdev
	dmsetup create cm --table "0 $RMETA linear $LOOP 0"
	dmsetup create cd --table "0 $RSZ linear $LOOP $RMETA"
	choose_points >$RP/points
	RP_FIRSTJ=$(awk -v a=$RJ0 -v b=$RJ1 '$3 >= a && $3 < b && $4 >= 16 {
		print $1; exit }' $RP/entries)
	say "points: $(wc -l <$RP/points) ($(awk '$2 != "-"' $RP/points | wc -l) torn:" \
		"$(awk '$7 == "jnl"' $RP/points | wc -l) journal writes," \
		"$(awk '$7 == "meta"' $RP/points | wc -l) in-place metadata writes," \
		"$(awk '$7 == "data"' $RP/points | wc -l) data writes)"
	echo "# replay: $(wc -l <$RP/points) points" >/dev/console
	_at=0 _n=0 _t0=$(date +%s)
	while read -r PT _te _ts PT_FIRST PT_LAST _what _tk; do
		[ $RP_MAX = 0 ] || [ $_n -lt $RP_MAX ] || break
		PT_EXEMPT=""
		PT_DESC="point $PT (after $_what)"
		_tear=""
		if [ "$_te" != - ]; then
			_tear="--tear $_te --sectors $_ts"
			PT_DESC="point $PT + entry $_te ($_tk: $_what) torn after $_ts sectors"
			set -- $(awk -v e=$_te '$1 == e { print $3, $4 }' $RP/entries)
			if [ $1 -ge $RMETA ]; then
				PT_EXEMPT=$(awk -v a=$(($1 - RMETA)) -v n=$2 -v bs=$RBS \
					'BEGIN { for (b = int(a / bs); b * bs < a + n; b++) printf "%d ", b }')
			fi
		fi
		# shellcheck disable=SC2086 # $_tear is options or nothing
		set -- $(stream-replay point $RP/log $RP/r.img $LOOP \
			--from $_at --to $PT --meta $RMETA --bs $RBB $_tear \
			2>$RP/point.err)
		if [ "${1:-}" != zero ]; then
			fail_at ops "preparing the copy failed"
			break
		fi
		_at=$PT
		PT_ZERO=$2
		[ "${5:-0}" = 0 ] ||
			fail_at ops "the previous check wrote $5 data blocks: $(tr '\n' ' ' <$RP/point.err)"
		check_point
		_n=$((_n + 1))
		echo $_n >$RP/checked
		# progress on the console (the test's own output is kept)
		[ $((_n % 25)) != 0 ] ||
			echo "# replay: $_n points in $(($(date +%s) - _t0)) s" \
				>/dev/console
	done <$RP/points
	_dt=$(($(date +%s) - _t0))
	say "measured: crash points checked $_n in ${_dt} s" \
		"($((_dt * 1000 / (_n > 0 ? _n : 1))) ms a point)"
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
		sed 's/: .*//; s/point [0-9]* //; s/entry [0-9]* //; s/_at_[0-9+]*//; s/after [0-9]* sectors//' \
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
	# a sample of the FLUSH/FUA points when stream.replay asked for one
	_fw=$_f
	[ "$RP_FLUSH" -gt 0 ] && [ "$RP_FLUSH" -lt "$_f" ] && _fw=$RP_FLUSH
	_want=$((_fw + RP_OTHER))
	[ $_want -le $((_e + 1)) ] || _want=$((_e + 1))
	echo "# measured: crash points checked $_n ($((_n - _t)) whole," \
		"$_t torn: $(awk '$7 == "jnl"' $RP/points | wc -l) journal," \
		"$(awk '$7 == "meta"' $RP/points | wc -l) in-place metadata," \
		"$(awk '$7 == "data"' $RP/points | wc -l) data; $_e log entries," \
		"$_f FLUSH/FUA of which $_fw asked, $RP_OTHER other points asked)"
	[ "$_n" -gt 0 ] && [ $((_n - _t)) -ge $_want ] && [ "$_t" -gt 0 ]
}

TEST_TIMEOUT=900
run replay_workload t_replay_workload
TEST_TIMEOUT=3000		# generous: the debug kernel is ~3x slower
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
