# shellcheck shell=sh
# shellcheck disable=SC2086 # device paths and numbers never hold spaces
# profile suite (make profile): where the guest's one CPU goes in the
# benchmark's miss-path scenarios, from perf's cpu-clock sampling of the
# whole system (no PMU under TCG).  Prints perf's report per scenario,
# by process and by symbol; nothing is asserted.
URI="nbd+unix:///?socket=$SOCK"
# The image has no zero region (read by prepare_image).
# shellcheck disable=SC2034
ZERO_FIRST=0 ZERO_END=0
echo -1 >/proc/sys/kernel/perf_event_paranoid
echo 0 >/proc/sys/kernel/kptr_restrict

prepare_image

# profiled <name> <command...>: the command under perf record -a -g,
# then its report.
profiled() {
	_n=$1
	shift
	_t0=$(stream-io now)
	perf record -q -a -g -F 997 -o /tmp/perf.$_n -- "$@" >/dev/null 2>&1 ||
		echo "# $_n: command failed: $*"
	echo "PROFILE $_n $(( $(stream-io now) - _t0 )) us"
	perf report -i /tmp/perf.$_n --stdio --no-children -g none \
		--sort comm,dso 2>/dev/null | grep -v '^#' | grep -v '^$' | head -16
	perf report -i /tmp/perf.$_n --stdio --no-children -g none \
		--sort comm,sym --percent-limit 0.7 2>/dev/null |
		grep -v '^#' | grep -v '^$' | head -60
	perf report -i /tmp/perf.$_n --stdio --children -g none \
		--sort sym --percent-limit 3 2>/dev/null |
		grep -v '^#' | grep -v '^$' | head -50
	for _c in ${PROFILE_COMMS:-}; do
		echo "PROFILE $_n: $_c alone, inclusive"
		perf report -i /tmp/perf.$_n --stdio --children -g none \
			--comms $_c --sort sym --percent-limit 1.5 2>/dev/null |
			grep -v '^#' | grep -v '^$' | head -60
	done
	for _s in ${PROFILE_SYMS:-}; do
		echo "PROFILE $_n: callers of $_s"
		perf report -i /tmp/perf.$_n --stdio --no-children \
			--symbols=$_s -G 2>&1 | grep -v '^#' | grep -v '^$' |
			head -80
	done
	rm -f /tmp/perf.$_n
}


for what in $(echo "${PROFILE_WHAT:-rand,nbdrand,fill,nbdcopy}" | tr , " "); do
	fresh
	server_start nbdkit
	case $what in
	rand)
		dmsetup create s --table "0 $SZ stream $META $DATA 8"
		helper_start
		PROFILE_COMMS="streamd stream-io" \
			profiled cold_rand4k_bs8 stream-io rand $DEV r 4096 2000 7 ;;
	nbdrand)
		profiled libnbd_rand4k stream-io nbdrand "$URI" 4096 2000 7 ;;
	seq4k|seq64k)
		# The bench's cold sequential 1 MiB reads of the device.
		_bs=8
		[ $what = seq64k ] && _bs=128
		dmsetup create s --table "0 $SZ stream $META $DATA $_bs"
		helper_start
		PROFILE_COMMS="streamd dd" profiled cold_seq1m_bs$_bs \
			dd if=$DEV of=/dev/null bs=1M iflag=direct ;;
	fill)
		dmsetup create s --table "0 $SZ stream $META $DATA 128"
		PROFILE_SYMS="clear_page_erms __mm_populate" \
			profiled fill_whole_bs128 streamd --fill -x s "$URI" ;;
	fill_ra0)
		dmsetup create s --table "0 $SZ stream $META $DATA 128 2 readahead 0"
		profiled fill_whole_bs128_readahead0 streamd --fill -x s "$URI" ;;
	filltime)
		# When the last block became present, against when the fill
		# ended (streamd --fill -x exits once it sees every block
		# present).
		dmsetup create s --table "0 $SZ stream $META $DATA 128"
		_t0=$(stream-io now)
		streamd --fill -x s "$URI" 2>/tmp/fill.log &
		_p=$!
		_all=""
		while kill -0 $_p 2>/dev/null; do
			if [ -z "$_all" ] && [ "$(st 2 | cut -d/ -f1)" = $((SZ / 128)) ]; then
				_all=$(( $(stream-io now) - _t0 ))
			fi
			sleep 0.02
		done
		echo "PROFILE filltime: all present at $_all us, streamd exited at $(( $(stream-io now) - _t0 )) us" ;;
	present)
		# Every block present; one write makes them dirty, then five
		# sequential 1 MiB writes with an fsync each, on the stream
		# target and on dm-linear over the same data device.
		dmsetup create s --table "0 $SZ stream $META $DATA 128"
		helper_start
		dd if=$DEV of=/dev/null bs=1M iflag=direct 2>/dev/null
		helper_stop
		server_stop
		_w="dd if=/dev/zero bs=1M count=$((SZ / 2048)) oflag=direct conv=fsync"
		sh -c "$_w of=$DEV" 2>/dev/null
		profiled present_seq_write_x5 sh -c \
			"for i in 1 2 3 4 5; do $_w of=$DEV 2>/dev/null; done"
		PROFILE_COMMS="stream-io kworker/0:1H-kb" \
			profiled present_rand_write stream-io rand $DEV w 4096 4000 9
		dmsetup suspend s
		dmsetup create lin --table "0 $SZ linear $DATA 0"
		profiled linear_seq_write_x5 sh -c \
			"for i in 1 2 3 4 5; do $_w of=/dev/mapper/lin 2>/dev/null; done"
		PROFILE_COMMS="stream-io" \
			profiled linear_rand_write stream-io rand /dev/mapper/lin w 4096 4000 9
		dmsetup remove lin
		dmsetup resume s ;;
	slowlink)
		# Demand misses (20 blocks 64 KiB apart from the end, 4 KiB
		# blocks) over TCP on a loopback limited to 128 Mbit/s with
		# 1 ms of delay (tc netem: bytes queue on the link), with
		# the fill off, and with it on at full speed under streamd
		# and under $SLOW_OTHER (another streamd, from
		# PROFILE_EXTRA), in alternating rounds.
		_u=nbd://127.0.0.1:10811
		for _round in 1 2 3; do
			for _h in off streamd ${SLOW_OTHER:-}; do
				fresh
				nbdkit -p 10811 -i 127.0.0.1 -P /tmp/nbd.pid \
					file file=$SRC
				wait_for 10 tcp_listening 2A3B
				/opt/bin/tc qdisc add dev lo root netem rate 128mbit delay 1ms
				dmsetup create s --table "0 $SZ stream $META $DATA 8"
				_hb=$_h _fl=--fill
				[ $_h = off ] && _hb=streamd _fl=""
				: >/tmp/streamd.log
				$_hb $_fl s "$_u" 2>>/tmp/streamd.log &
				_hp=$!
				wait_for 10 grep -q "connected to" /tmp/streamd.log
				[ -z "$_fl" ] || wait_for 10 sh -c "[ \$(dmsetup status s | awk '{print \$5}' | cut -d/ -f1) -gt 64 ]"
				_t0=$(stream-io now)
				# 64 KiB apart: no readahead
				stream-io tail $DEV 65536 20 >/dev/null
				echo "PROFILE slowlink $_round $_h $(( $(stream-io now) - _t0 )) us, $(dmsetup status s | awk '{print $5}') present"
				kill $_hp
				wait $_hp || true
				/opt/bin/tc qdisc del dev lo root
				teardown
			done
		done ;;
	nbdcopy)
		profiled nbdcopy_whole nbdcopy "$URI" null: ;;
	esac
	teardown
done
