# shellcheck shell=sh
# shellcheck disable=SC2086 # device paths and numbers never hold spaces
# Benchmark suite (make bench): every figure is a ratio of two runs made
# side by side in this one boot, never an absolute time.
now_us() { stream-io now; }	# microseconds, monotonic

# The benchmark image has no zero region (read by prepare_image).
# shellcheck disable=SC2034
ZERO_FIRST=0 ZERO_END=0

timed() {	# timed <command...>: prints elapsed microseconds
	_t0=$(now_us)
	"$@" >/dev/null 2>&1 || echo "# command failed: $*" >&2
	echo $(( $(now_us) - _t0 ))
}

ratio() {	# ratio <name> <ms a> <ms b>: a/b with two decimals
	echo "BENCH $1 $(( $2 * 100 / ($3 > 0 ? $3 : 1) / 100 )).$(printf '%02d' $(( $2 * 100 / ($3 > 0 ? $3 : 1) % 100 )))"
}

N=${BENCH_N:-2000}
seq_read() { dd if="$1" of=/dev/null bs=1M iflag=direct; }
seq_write() { dd if=/dev/zero of="$1" bs=1M count=$((SZ / 2048)) oflag=direct conv=fsync; }
rand_read() { stream-io rand "$1" r 4096 $N 7; }
rand_write() { stream-io rand "$1" w 4096 $N 9; }

prepare_image
fresh
server_start nbdkit
create
helper_start
# Cold reads: the stream device against the same ranges straight from
# the server (physical limit).
c_seq=$(timed seq_read $DEV)
n_seq=$(timed nbdcopy "$URI" null:)
ratio cold_seq_read_stream_vs_nbdcopy "$c_seq" "$n_seq"
teardown
fresh
server_start nbdkit
create
helper_start
c_rand=$(timed rand_read $DEV)
n_rand=$(timed stream-io nbdrand "$URI" 4096 $N 7)
ratio cold_rand4k_read_stream_vs_libnbd "$c_rand" "$n_rand"
teardown
# Demand-miss latency while the background fill runs: the same 200 cold
# reads from the end of the device, with the fill off and with it on at
# full speed (the fill works upwards from block 0 and does not reach them).
fresh
server_start nbdkit
create
helper_start
idle=$(timed stream-io tail $DEV $BB 200)
teardown
fresh
server_start nbdkit
create
helper_start --fill
wait_for 10 sh -c "[ \$(dmsetup status s | awk '{print \$5}' | cut -d/ -f1) -gt 0 ]"
busy=$(timed stream-io tail $DEV $BB 200)
filled=$(present)
ratio demand_miss_while_filling_vs_idle "$busy" "$idle"
echo "BENCHNOTE the fill made $filled of $NBLOCKS blocks present meanwhile"
teardown
fresh
server_start nbdkit
create
helper_start --fill --fill-rate 4M
wait_for 10 sh -c "[ \$(dmsetup status s | awk '{print \$5}' | cut -d/ -f1) -gt 0 ]"
busy=$(timed stream-io tail $DEV $BB 200)
ratio demand_miss_while_filling_4MiBps_vs_idle "$busy" "$idle"
teardown
fresh
server_start nbdkit
create
helper_start
# The first write over present, clean blocks waits one metadata commit
# for its dirty bits (see the commit protocol).  FW_RUNS times: fresh
# metadata, every block made present through the helper, then the same
# sequential write on the stream device and on dm-linear over the same
# data device, in alternating order; the median ratio and the range.
# Fresh metadata, every block present (read through the helper), then no
# helper nor server: present, clean blocks.
all_present_clean() {
	teardown
	fresh
	server_start nbdkit
	create
	helper_start
	seq_read $DEV >/dev/null 2>&1
	helper_stop
	server_stop
}

FW_RUNS=${FW_RUNS:-5}
fw_ratios="" fw_lin=""
i=1
while [ $i -le $FW_RUNS ]; do
	all_present_clean
	if [ $((i % 2)) = 1 ]; then
		s_w=$(timed seq_write $DEV)
	fi
	dmsetup suspend s
	dmsetup create lin --table "0 $SZ linear $DATA 0"
	l_w=$(timed seq_write /dev/mapper/lin)
	dmsetup remove lin
	dmsetup resume s
	if [ $((i % 2)) = 0 ]; then
		s_w=$(timed seq_write $DEV)
	fi
	fw_ratios="$fw_ratios $((s_w * 100 / (l_w > 0 ? l_w : 1)))"
	fw_lin="$fw_lin $((l_w / 1000))"
	i=$((i + 1))
done
# shellcheck disable=SC2046 # min, median and max as three words
set -- $(echo $fw_ratios | tr ' ' '\n' | sort -n |
	awk '{ a[NR] = $1 } END { print a[1], a[int((NR + 1) / 2)], a[NR] }')
fw_min=$1 fw_med=$2 fw_max=$3
pct() { echo "$(($1 / 100)).$(printf '%02d' $(($1 % 100)))"; }
echo "BENCH first_seq_write_present_clean_vs_linear_median $(pct $fw_med)"
echo "BENCHNOTE first write over present clean blocks: $FW_RUNS runs, ratios$(for r in $fw_ratios; do printf ' %s' "$(pct $r)"; done), range $(pct $fw_min)-$(pct $fw_max)"
echo "BENCHNOTE (dm-linear wrote the $((SZ / 2048)) MiB in$(for t in $fw_lin; do printf ' %s' "$t"; done) ms)"
# Make every block present, then compare with dm-linear on the same data
# device (only one table is live at a time).
all_present_clean
for r in 1 2; do
	s_seq=$(timed seq_read $DEV)
	s_rand=$(timed rand_read $DEV)
	s_wseq=$(timed seq_write $DEV)
	s_wrand=$(timed rand_write $DEV)
	dmsetup suspend s
	dmsetup create lin --table "0 $SZ linear $DATA 0"
	l_seq=$(timed seq_read /dev/mapper/lin)
	l_rand=$(timed rand_read /dev/mapper/lin)
	l_wseq=$(timed seq_write /dev/mapper/lin)
	l_wrand=$(timed rand_write /dev/mapper/lin)
	dmsetup remove lin
	dmsetup resume s
	ratio "present_seq_read_stream_vs_linear_run$r" "$s_seq" "$l_seq"
	ratio "present_rand4k_read_stream_vs_linear_run$r" "$s_rand" "$l_rand"
	ratio "present_seq_write_stream_vs_linear_run$r" "$s_wseq" "$l_wseq"
	ratio "present_rand4k_write_stream_vs_linear_run$r" "$s_wrand" "$l_wrand"
done
teardown
