#!/bin/bash
# make bench, issue 9: time-to-ready of the Debian image of tests/boot
# (QEMU start to "STREAMBOOT-READY running" on the serial console, i.e.
# `systemctl is-system-running --wait` returned) booted three ways, in
# alternated rounds on the same host:
#   stream  blank disk, dm-stream from the server (fill off)
#   copy    blank disk, nbdcopy of the whole image in the initramfs, then
#           a boot from the copy (what provisioning by copying costs)
#   local   the image already on the disk, no server
# Prints each round, the medians, and the ratios to the local boot with
# their spread over the rounds; bytes fetched by the streamed boot.
#
# Usage: tests/boot/bench.sh <debs dir> <work dir>
# Env:   STREAM_BOOT_BENCH_ROUNDS (default 3)
set -uo pipefail

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEBS=${1:?usage: bench.sh <debs dir> <work dir>}
BW=${2:?usage: bench.sh <debs dir> <work dir>}
ROUNDS=${STREAM_BOOT_BENCH_ROUNDS:-3}
mkdir -p "$BW"
# shellcheck source=tests/boot/lib.sh
. "$TOP/tests/boot/lib.sh"
boot_image || exit 1
trap server_stop EXIT
LOCAL_CMD="console=ttyS0 panic=-1 root=/dev/mapper/streamvg-root systemd.show_status=0 loglevel=4 streamboot.run=none"
COPY_CMD="$LOCAL_CMD ip=dhcp rd.neednet=1 streamboot.copy=1"

# Milliseconds from QEMU's start to the ready marker; the guest then
# powers off by itself.
ready_ms() {	# ready_ms <log> <cmdline or "">
	local log=$1 t0 ms=""
	t0=$(date +%s%N)
	VM_CMD=$2 vm "$log" 0 "streamboot.run=none rd.stream.fill=off" &
	local pid=$!
	while kill -0 $pid 2>/dev/null; do
		# not anchored: after the firmware's screen clear, a local
		# boot's first console line starts with escape sequences
		if grep -aq "STREAMBOOT-READY running" "$log"; then
			ms=$((($(date +%s%N) - t0) / 1000000))
			break
		fi
		sleep 0.1
	done
	wait $pid
	[ -n "$ms" ] || { echo "bench: no ready marker in $log" >&2; return 1; }
	echo "$ms"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

: >"$BW/rounds"
for r in $(seq "$ROUNDS"); do
	new_disk
	server_start "$BW/stream-$r.req"
	s=$(ready_ms "$BW/stream-$r.log" "") || exit 1
	server_stop
	new_disk
	server_start "$BW/copy-$r.req"
	c=$(ready_ms "$BW/copy-$r.log" "$COPY_CMD") || exit 1
	server_stop
	cp --sparse=always "$IMG/image.raw" "$BW/disk.raw"
	l=$(ready_ms "$BW/local-$r.log" "$LOCAL_CMD") || exit 1
	b=$(read_bytes "$BW/stream-$r.req")
	echo "$s $c $l $b" >>"$BW/rounds"
	printf 'round %d: stream %d ms, copy %d ms (nbdcopy %s), local %d ms; stream fetched %d bytes\n' \
		"$r" "$s" "$c" "$(grep -a "^STREAMBOOT-COPIED" "$BW/copy-$r.log" | tr -d '\r' | cut -d' ' -f2-)" \
		"$l" "$b"
done
ms=$(awk '{ print $1 }' "$BW/rounds" | median)
mc=$(awk '{ print $2 }' "$BW/rounds" | median)
ml=$(awk '{ print $3 }' "$BW/rounds" | median)
mb=$(awk '{ print $4 }' "$BW/rounds" | median)
spread() {	# spread <column>: min-max of its ratio to local, per round
	awk -v c="$1" '{ r = $c / $3; if (NR == 1 || r < lo) lo = r; if (NR == 1 || r > hi) hi = r }
		END { printf "%.2f-%.2f", lo, hi }' "$BW/rounds"
}
echo "time-to-ready, Debian bookworm (6.1) under QEMU/TCG, $ROUNDS alternated rounds (medians):"
echo "  local boot             ${ml} ms   1.00"
echo "  streamed, blank disk   ${ms} ms   $(ratio "$ms" "$ml") x local (rounds $(spread 1)); fetched $mb of $IMG_BYTES image bytes ($(ratio $((mb * 100)) "$IMG_BYTES")%)"
echo "  copy then boot         ${mc} ms   $(ratio "$mc" "$ml") x local (rounds $(spread 2))"
