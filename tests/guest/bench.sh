# shellcheck shell=sh
# shellcheck disable=SC2086 # device paths and numbers never hold spaces
# Benchmark suite (make bench).  Every figure is a pair of timings made
# side by side in this one boot, the order alternating from run to run:
# the guest prints "BENCHRUN <metric> <run> <stream us> <reference us>"
# and tests/bench.sh prints the median ratio and every run's.  Nothing
# here asserts on a time.
now_us() { stream-io now; }	# microseconds, monotonic

# The benchmark image has no zero region (read by prepare_image).
# shellcheck disable=SC2034
ZERO_FIRST=0 ZERO_END=0

RUNS=${BENCH_RUNS:-5}
N=${BENCH_N:-2000}
URI="nbd+unix:///?socket=$SOCK"

timed() {	# timed <command...>: prints elapsed microseconds
	_t0=$(now_us)
	"$@" >/dev/null 2>&1 || echo "# command failed: $*" >&2
	echo $(( $(now_us) - _t0 ))
}

pair() { echo "BENCHRUN $1 $2 $3 $4"; }	# <metric> <run> <stream> <ref>

# bench_want <section>: BENCH_ONLY (sections joined by +, from the
# kernel command line: STREAM_BENCH_ONLY of make bench) names it, or is
# unset.
bench_want() {
	case "+${BENCH_ONLY:-$1}+" in
	*"+$1+"*) return 0 ;;
	esac
	return 1
}

seq_read() { dd if="$1" of=/dev/null bs=1M iflag=direct; }
seq_write() { dd if=/dev/zero of="$1" bs=1M count=$((SZ / 2048)) oflag=direct conv=fsync; }
rand_read() { stream-io rand "$1" r 4096 $N 7; }
rand_write() { stream-io rand "$1" w 4096 $N 9; }

# cold <block sectors>: fresh metadata, a fresh server and helper, every
# block absent.
cold() {
	fresh
	server_start nbdkit
	dmsetup create s --table "0 $SZ stream $META $DATA $1"
	helper_start
}

# on_linear <command...>: run it against dm-linear over the same data
# device, the stream table suspended meanwhile ($LIN is the device).
LIN=/dev/mapper/lin
linear_up() {
	dmsetup suspend s
	dmsetup create lin --table "0 $SZ linear $DATA 0"
}
linear_down() {
	dmsetup remove lin
	dmsetup resume s
}

# first <run>: true on odd runs, when the stream side goes first.
first() { [ $(($1 % 2)) = 1 ]; }

prepare_image

# Cold sequential 1 MiB reads of the whole device against nbdcopy of the
# whole image to null: (the network and server limit), 64 KiB and 4 KiB
# blocks.
if bench_want cold_seq; then
	for bs in 128 8; do
		i=1
		while [ $i -le $RUNS ]; do
			cold $bs
			if first $i; then
				a=$(timed seq_read $DEV)
				b=$(timed nbdcopy "$URI" null:)
			else
				b=$(timed nbdcopy "$URI" null:)
				a=$(timed seq_read $DEV)
			fi
			pair cold_seq1m_bs$bs $i "$a" "$b"
			i=$((i + 1))
		done
	done
fi

# Cold random 4 KiB reads, 4 KiB blocks, against libnbd reads of the
# same offsets; then the same reads again (now present) against
# dm-linear on the same data device.
if bench_want cold_rand; then
	i=1
	while [ $i -le $RUNS ]; do
		cold 8
		if first $i; then
			a=$(timed rand_read $DEV)
			b=$(timed stream-io nbdrand "$URI" 4096 $N 7)
		else
			b=$(timed stream-io nbdrand "$URI" 4096 $N 7)
			a=$(timed rand_read $DEV)
		fi
		pair cold_rand4k_bs8 $i "$a" "$b"
		if first $i; then
			a=$(timed rand_read $DEV)
			linear_up
			b=$(timed rand_read $LIN)
			linear_down
		else
			linear_up
			b=$(timed rand_read $LIN)
			linear_down
			a=$(timed rand_read $DEV)
		fi
		pair second_rand4k_bs8_vs_linear $i "$a" "$b"
		i=$((i + 1))
	done
fi

# Whole-image fill (streamd --fill --exit-when-complete, from start to
# exit, attach and connect included) against nbdcopy of the whole image
# to null: (the network and server limit) and to a local disk like the
# data device (what a copy before use costs: the same reads and writes).
fill_all() {
	streamd --fill -x s "$URI" 2>>/tmp/streamd.log
	[ "$(present)" = "$NBLOCKS" ] || echo "# fill left $(present) present" >&2
}
if bench_want fill; then
	for bs in 128 8; do
		i=1
		while [ $i -le $RUNS ]; do
			fresh
			server_start nbdkit
			dmsetup create s --table "0 $SZ stream $META $DATA $bs"
			NBLOCKS=$((SZ / bs))
			if first $i; then
				a=$(timed fill_all)
				b=$(timed nbdcopy "$URI" null:)
				c=$(timed nbdcopy "$URI" $SCRATCH)
			else
				c=$(timed nbdcopy "$URI" $SCRATCH)
				b=$(timed nbdcopy "$URI" null:)
				a=$(timed fill_all)
			fi
			[ "$(present)" = "$NBLOCKS" ] ||
				echo "BENCHNOTE fill_bs$bs run $i: $(present) of $NBLOCKS present"
			pair fill_whole_bs$bs $i "$a" "$b"
			pair fill_whole_bs${bs}_vs_nbdcopy_to_disk $i "$a" "$c"
			i=$((i + 1))
		done
	done
fi
NBLOCKS=$((SZ / BS))

# Demand-miss latency while the background fill runs: the same 200 cold
# reads from the end of the device, with the fill off and with it on at
# full speed (the fill works upwards from block 0 and does not reach
# them), then limited to 4 MiB/s.
if bench_want demand_miss; then
	i=1
	while [ $i -le $RUNS ]; do
		cold $BS
		idle=$(timed stream-io tail $DEV $BB 200)
		teardown
		fresh
		server_start nbdkit
		create
		helper_start --fill
		wait_for 10 sh -c "[ \$(dmsetup status s | awk '{print \$5}' | cut -d/ -f1) -gt 0 ]"
		busy=$(timed stream-io tail $DEV $BB 200)
		pair demand_miss_while_filling_vs_idle $i "$busy" "$idle"
		teardown
		fresh
		server_start nbdkit
		create
		helper_start --fill --fill-rate 4M
		wait_for 10 sh -c "[ \$(dmsetup status s | awk '{print \$5}' | cut -d/ -f1) -gt 0 ]"
		busy=$(timed stream-io tail $DEV $BB 200)
		pair demand_miss_while_filling_4MiBps_vs_idle $i "$busy" "$idle"
		i=$((i + 1))
	done
fi

# The same where the link is the bottleneck: TCP to nbdkit over the
# loopback limited to 128 Mbit/s with 1 ms of delay (tc netem), 20 cold
# reads 64 KiB apart (4 KiB blocks: no readahead), with the fill off and
# with it on at full speed.  Prints microseconds.
slow_misses() {	# slow_misses [streamd options]
	{
		fresh
		nbdkit -p 10811 -i 127.0.0.1 -P /tmp/nbd.pid file file=$SRC
		wait_for 10 tcp_listening 2A3B
		/opt/bin/tc qdisc add dev lo root netem rate 128mbit delay 1ms
		dmsetup create s --table "0 $SZ stream $META $DATA 8"
		HELPER_URI=nbd://127.0.0.1:10811 helper_start "$@"
		wait_for 10 grep -q "connected to" /tmp/streamd.log
		if [ $# -gt 0 ]; then
			wait_for 10 sh -c "[ \$(dmsetup status s | awk '{print \$5}' | cut -d/ -f1) -gt 64 ]"
		fi
	} >&2
	timed stream-io tail $DEV 65536 20
	{
		/opt/bin/tc qdisc del dev lo root
		teardown
	} >&2
}
if bench_want slowlink; then
	i=1
	while [ $i -le $RUNS ]; do
		if first $i; then
			busy=$(slow_misses --fill)
			idle=$(slow_misses)
		else
			idle=$(slow_misses)
			busy=$(slow_misses --fill)
		fi
		pair demand_miss_while_filling_128mbit_vs_idle $i "$busy" "$idle"
		i=$((i + 1))
	done
fi

# Fresh metadata, every block present (read through the helper), then no
# helper nor server: present, clean blocks.
all_present_clean() {
	cold $BS
	seq_read $DEV >/dev/null 2>&1
	helper_stop
	server_stop
}

# first_writes <metric> <setup...>: sequential 1 MiB writes with a final
# fsync, the stream device made ready by <setup> before each run, against
# dm-linear on the same data device.
first_writes() {
	_m=$1
	shift
	i=1
	while [ $i -le $RUNS ]; do
		"$@"
		if first $i; then
			a=$(timed seq_write $DEV)
		fi
		linear_up
		b=$(timed seq_write $LIN)
		linear_down
		if ! first $i; then
			a=$(timed seq_write $DEV)
		fi
		pair "$_m" $i "$a" "$b"
		i=$((i + 1))
	done
}

# The first write over present, clean blocks waits one metadata commit
# for its dirty bits (see the commit protocol).
if bench_want first_write; then
	first_writes first_seq_write_present_clean_vs_linear all_present_clean
fi

# The first writes over absent blocks: whole blocks (fills: nothing to
# fetch, no helper attached), fresh metadata each run.
fresh_table() {
	fresh
	create
}
if bench_want first_write_absent; then
	first_writes first_seq_write_absent_vs_linear fresh_table
	teardown
fi

# Every block present: the four patterns against dm-linear on the same
# data device (only one table is live at a time).
if bench_want present; then
	all_present_clean
	i=1
	while [ $i -le $RUNS ]; do
		for p in seq_read rand_read seq_write rand_write; do
			if first $i; then
				a=$(timed $p $DEV)
				linear_up
				b=$(timed $p $LIN)
				linear_down
			else
				linear_up
				b=$(timed $p $LIN)
				linear_down
				a=$(timed $p $DEV)
			fi
			pair "present_${p}_vs_linear" $i "$a" "$b"
		done
		i=$((i + 1))
	done
fi
teardown

# In-core memory per block: slab, vmalloc and per-cpu memory before and
# after creating a target of 1048576 blocks (64 GiB of 64 KiB blocks, 4
# GiB of 4 KiB blocks) on the sparse 64 GiB disk, fresh metadata.
mem_kb() {
	awk '/^(Slab|VmallocUsed|Percpu):/ { s += $2 } END { print s }' \
		/proc/meminfo
}
if bench_want memory; then
	teardown
	for geo in "134217728 128" "8388608 8"; do
		# shellcheck disable=SC2086 # two words
		set -- $geo
		# all of it: a larger device's journal lies past the first MiB
		dd if=/dev/zero of=$BIGMETA bs=1M count=32 conv=fsync 2>/dev/null
		sync
		echo 3 >/proc/sys/vm/drop_caches
		m0=$(mem_kb)
		if dmsetup create big --table "0 $1 stream $BIGMETA $BIG $2"; then
			m1=$(mem_kb)
			echo "BENCHMEM bs$2 $(($1 / $2)) $((m1 - m0))"
			dmsetup remove big
		else
			echo "BENCHNOTE memory: cannot create $1 sectors of $2-sector blocks"
		fi
	done
fi

# dm-clone over nbd.ko on the same image and server, when the bench
# built it (tests/bench.sh).
if bench_want clone; then
	if [ -e /lib/modules/dm-clone.ko ] && [ -e /tests/bench-clone.sh ]; then
		# shellcheck source=bench-clone.sh
		. /tests/bench-clone.sh
		clone_bench
	else
		echo "BENCHNOTE dm-clone: not built, no peer column"
	fi
fi
teardown
