#!/bin/bash
# Host-side helpers of the boot tests and benchmark (tests/boot/run.sh,
# tests/boot/bench.sh): the image, the NBD server on the host's loopback,
# one QEMU boot, and the readings of the server's request log.
# Sourced after TOP, DEBS, BW are set; sets IMG, IMG_BYTES, PORT, NAME,
# BASE_CMD.
# shellcheck disable=SC2034 # used by the scripts that source this

# boot_image: build (or find) the image; prints why on failure.
boot_image() {
	IMG=$("$TOP/tests/boot/mkimage.sh" "$DEBS" 2>"$BW/mkimage.err") || {
		cat "$BW/mkimage.err" >&2
		return 1
	}
	cat "$BW/mkimage.err" >&2
	IMG_BYTES=$(stat -c %s "$IMG/image.raw")
}

# two ports on the host's loopback: the image, the capture's overlay
PORT=${STREAM_BOOT_PORT:-$((20000 + RANDOM % 20000))}
PORT2=$((PORT + 1))
NAME=streamroot
# rd.shell=0 rd.emergency=poweroff: an initramfs that gives up powers
# off at once (the image does the same from emergency mode), so a broken
# boot costs its own time, not the watchdog's.
BASE_CMD="console=ttyS0 panic=-1 rd.shell=0 rd.emergency=poweroff root=/dev/mapper/streamvg-root rd.stream=$NAME rd.stream.uri=nbd://10.0.2.100:10809 rd.stream.disk=/dev/vda ip=dhcp rd.neednet=1 systemd.show_status=0 loglevel=4"

# TLS with a pre-shared key (the image's /etc/dm-stream/tls, made by
# tests/boot/guest-setup.sh): SERVER_TLS=1 server_start ...
PSK_LINE="streamboot:5a2b6c1e3d7f4c599e846d2f0b7a1c015a2b6c1e3d7f4c599e846d2f0b7a1c01"
TLS_CMD="rd.stream.uri=nbds://imageserver:10809 rd.stream.tls.psk=/etc/dm-stream/tls/streamboot.psk rd.stream.tls.username=streamboot"

SERVER_PID=
server_start() {	# server_start <request log>
	local tls=()
	rm -f "$BW/nbdkit.pid"
	if [ "${SERVER_TLS:-0}" = 1 ]; then
		echo "$PSK_LINE" >"$BW/psk"
		chmod 0600 "$BW/psk"
		tls=(--tls=require --tls-psk="$BW/psk")
	fi
	nbdkit -r -i 127.0.0.1 -p "$PORT" -P "$BW/nbdkit.pid" "${tls[@]}" \
		--filter=log file "${SERVER_IMAGE:-$IMG/image.raw}" logfile="$1" ||
		return 1
	# the daemon writes it after nbdkit returns
	for _ in $(seq 100); do
		[ -s "$BW/nbdkit.pid" ] && break
		sleep 0.05
	done
	SERVER_PID=$(cat "$BW/nbdkit.pid")
}
# qemu-nbd for qcow2: the capture's overlay, written (port $PORT2,
# 10.0.2.100:10810 in the guest) or served as the image.
qemu_server_start() {	# qemu_server_start <qcow2> <port> [-r]
	rm -f "$BW/qemu-nbd.pid"
	qemu-nbd -f qcow2 -b 127.0.0.1 -p "$2" -e 8 --persistent \
		--pid-file "$BW/qemu-nbd.pid" ${3:+"$3"} "$1" \
		>"$BW/qemu-nbd.log" 2>&1 &
	for _ in $(seq 100); do
		[ -s "$BW/qemu-nbd.pid" ] && break
		sleep 0.1
	done
	QEMU_SERVER_PID=$(cat "$BW/qemu-nbd.pid" 2>/dev/null)
	[ -n "$QEMU_SERVER_PID" ]
}
qemu_server_stop() {
	[ -n "${QEMU_SERVER_PID:-}" ] || return 0
	kill "$QEMU_SERVER_PID" 2>/dev/null
	for _ in $(seq 50); do kill -0 "$QEMU_SERVER_PID" 2>/dev/null || break; sleep 0.1; done
	QEMU_SERVER_PID=
}

server_stop() {
	[ -n "$SERVER_PID" ] || return 0
	kill "$SERVER_PID" 2>/dev/null
	for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
	SERVER_PID=
}


# The server's request log (nbdkit's log filter): "... Read id=N
# offset=0x... count=0x... ..." for each read.  mawk has no strtonum.
read_field() {	# read_field <offset|count> <log...>
	local f=$1
	shift
	awk -v f="$f=" '
		function hex(s,   i, n) {
			n = 0
			s = tolower(substr(s, 3))
			for (i = 1; i <= length(s); i++)
				n = n * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
			return n
		}
		/ Read / { for (i = 1; i <= NF; i++)
			if (index($i, f) == 1) printf "%.0f\n", hex(substr($i, length(f) + 1)) }' "$@"
}
read_bytes() { read_field count "$@" | awk '{ s += $1 } END { printf "%.0f\n", s }'; }
read_offsets() { read_field offset "$@" | sort -n; }

new_disk() {	# a blank disk a little larger than the image(s)
	rm -f "$BW/disk.raw"
	truncate -s $((IMG_BYTES + (64 << 20))) "$BW/disk.raw"
}

# One boot (vm_once), booted again once if the kernel panicked before
# anything of ours printed a line (a TCG flake seen at early boot); the
# first log is kept as <log>.panic.
vm() {	# vm <log> <netboot 0|1> <extra cmdline>
	local rc
	vm_once "$@"
	rc=$?
	if grep -aq "Kernel panic" "$1" && ! grep -aq "dm-stream:" "$1"; then
		mv "$1" "$1.panic"
		echo "vm: the kernel panicked before dm-stream's hooks ran (log $1.panic); booting again" >&2
		vm_once "$@"
		rc=$?
	fi
	return $rc
}

# One boot; the guest powers itself off after its action.  VM_CMD
# replaces the streamed root's command line (the benchmark's local boots).  Returns QEMU's
# status (124 when the watchdog killed it, 125 when the machine halted).
vm_once() {	# vm_once <log> <netboot 0|1> <extra cmdline>
	local log=$1 net=$2 extra=$3 boot=() pid dog rc limit
	local nic="user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:10809-cmd:socat - TCP:127.0.0.1:$PORT,guestfwd=tcp:10.0.2.100:10810-cmd:socat - TCP:127.0.0.1:$PORT2"
	if [ "$net" = 1 ]; then
		mkdir -p "$BW/tftp"
		cp "$IMG/vmlinuz" "$IMG/initrd.img" "$BW/tftp/"
		printf '#!ipxe\ndhcp\nkernel tftp://10.0.2.2/vmlinuz initrd=initrd.img %s %s\ninitrd tftp://10.0.2.2/initrd.img\nboot\n' \
			"$BASE_CMD" "$extra" >"$BW/tftp/boot.ipxe"
		nic="$nic,tftp=$BW/tftp,bootfile=boot.ipxe"
		boot=(-boot order=n)
	else
		boot=(-kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img"
		      -append "${VM_CMD:-$BASE_CMD} $extra")
	fi
	: >"$log"
	# VM_REBOOT=1: a reboot restarts the machine (firmware included)
	# instead of ending QEMU
	local noreboot=-no-reboot
	[ "${VM_REBOOT:-0}" = 1 ] && noreboot=
	# one CPU: two guests share the host's two cores (tests/lib.sh)
	qemu-system-x86_64 -accel tcg -cpu max -m 1536 \
		-smp "${STREAM_BOOT_SMP:-1}" -nographic \
		${noreboot:+"$noreboot"} -serial "file:$log" -monitor none \
		-netdev "$nic" -device virtio-net-pci,netdev=n0 \
		-drive "file=$BW/disk.raw,format=raw,if=virtio,cache=writeback" \
		${VM_DISKS:+$VM_DISKS} \
		"${boot[@]}" </dev/null >"$log.qemu" 2>&1 &
	pid=$!
	# The watchdog; it also ends a machine that halted (dracut's die()
	# halts a systemd initramfs whatever rd.emergency says), which
	# would otherwise sit there until the timeout.
	rm -f "$log.halted"
	limit=${STREAM_BOOT_VM_TIMEOUT:-900}
	if [ -n "${BOOT_DEADLINE:-}" ] &&
	   [ $((BOOT_DEADLINE - $(date +%s))) -lt "$limit" ]; then
		limit=$((BOOT_DEADLINE - $(date +%s)))
		[ "$limit" -ge 60 ] || limit=60
	fi
	(
		t=0
		while [ $t -lt "$limit" ]; do
			sleep 1
			t=$((t + 1))
			kill -0 $pid || exit 0
			if grep -aq "reboot: System halted" "$log"; then
				: >"$log.halted"
				break
			fi
		done
		kill -9 $pid
	) >/dev/null 2>&1 &
	dog=$!
	wait $pid
	rc=$?
	kill $dog 2>/dev/null
	wait $dog 2>/dev/null
	if [ -e "$log.halted" ]; then
		rc=125
	elif [ $rc = 137 ]; then
		rc=124
	fi
	return $rc
}

# The verdict on one boot's console: powered off by itself, the system
# "running" (no failed unit), the action done, no I/O error, no ext4
# error, no kernel complaint.
boot_ok() {	# boot_ok <log> <qemu status> <action> [<kernel's last word>]
	local log=$1 rc=$2 why=""
	[ "$rc" = 0 ] || why="QEMU status $rc (124: no power-off in time, 125: halted)"
	grep -aq "STREAMBOOT-EMERGENCY" "$log" &&
		why="${why:+$why; }$(grep -a "STREAMBOOT-EMERGENCY" "$log" | head -1 | tr -d '\r')"
	grep -aq "^STREAMBOOT-READY running" "$log" ||
		why="${why:+$why; }not 'running': $(grep -a "^STREAMBOOT-READY\|^STREAMBOOT-FAILED" "$log" | tr '\r\n' '  ' | head -c 300)"
	grep -aq "^STREAMBOOT-DONE $3 0" "$log" ||
		why="${why:+$why; }action $3 did not finish"
	# (case matters: "dracut Warning:" is dracut's shutdown talking)
	local bad="I/O error|EXT4-fs error|Buffer I/O|blk_update_request|BUG:|WARNING:|Oops|Call Trace|dm-stream: .*(failed|refused)"
	# (QEMU's empty floppy controller is not ours)
	local hits
	hits=$(grep -aE "$bad" "$log" | grep -vE "dev fd[0-9]|floppy" | head -2 | tr '\r\n' '  ')
	[ -z "$hits" ] || why="${why:+$why; }$hits"
	if grep -a "^STREAMBOOT-EXT4-ERRORS" "$log" | grep -vq " 0"; then
		why="${why:+$why; }ext4 counted errors"
	fi
	# the kernel log of the whole boot, not only what reached the
	# console (loglevel=4 hides streamd's and dm-stream's messages)
	grep -aq "^STREAMBOOT-KLOG-ERRORS 0" "$log" ||
		why="${why:+$why; }kernel log: $(grep -a "^STREAMBOOT-KLOG" "$log" | head -3 | tr '\r\n' '  ')"
	_s=$(shutdown_ok "$log" "${4:-}") || why="${why:+$why; }$_s"
	[ -z "$why" ] && return 0
	echo "$why"
	return 1
}

# Shutdown: the root unmounted and the device removed in the restored
# initramfs (stream-shutdown.sh), streamd alive until then, power-off.
shutdown_ok() {	# shutdown_ok <log> [<kernel's last word>]
	grep -aq "reboot: ${2:-Power down}" "$1" ||
		{ echo "no '${2:-Power down}'"; return 1; }
	if grep -aq "streamd was gone before" "$1"; then
		echo "streamd was gone before the device was released"
		return 1
	fi
	grep -aq "dm-stream: $NAME removed at shutdown" "$1" || {
		echo "the device was not removed at shutdown: $(grep -a "dm-stream: .*shutdown\|finalize DM" "$1" | head -2 | tr '\r\n' '  ')"
		return 1
	}
}

status_field() {	# status_field <log> <n>: dmsetup status word n
	grep -a "^STREAMBOOT-STATUS" "$1" | tail -1 | awk -v n="$2" '{ print $(n + 1) }'
}

