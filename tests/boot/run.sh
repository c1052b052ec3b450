#!/bin/bash
# Boot a real Debian bookworm system streamed by dm-stream (issue 9): the
# image from tests/boot/mkimage.sh, served by nbdkit on the host's
# loopback and reached from the guest through QEMU's guestfwd
# (10.0.2.100:10809, user networking with restrict=on); the machine's only
# disk starts blank.  Each scenario is asserted from the serial console
# (tests/boot/guest-setup.sh prints STREAMBOOT-* lines) and from the
# server's request log (nbdkit's log filter).
#
# Prints "PASS|FAIL|SKIP <name> <why>" and "MEASURED <name> <text>" lines.
# Env: STREAM_BOOT_ONLY="netboot reboot ..." to choose scenarios.
#
# Usage: tests/boot/run.sh <dir of dm-stream .debs> <work dir>
set -uo pipefail

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEBS=${1:?usage: run.sh <debs dir> <work dir>}
BW=${2:?usage: run.sh <debs dir> <work dir>}
PLAN=$(tr "\n" " " <"$TOP/tests/plans/boot.plan")
ONLY=${STREAM_BOOT_ONLY:-$PLAN}
mkdir -p "$BW"

result() { echo "$1 $2 ${3:-}"; }
# A scenario starts only while the scenarios are within their time
# budget (STREAM_BOOT_BUDGET seconds from the image being ready, 40 min
# by default); one that cannot start fails, and no boot runs past the
# budget plus 10 min (tests/boot/lib.sh vm), so that a lane of hung
# boots still ends within CI's time.
BUDGET=${STREAM_BOOT_BUDGET:-2400}
OVER=" "
want() {
	case " $ONLY " in *" $1 "*) ;; *) return 1 ;; esac
	[ $(($(date +%s) - T_START)) -lt "$BUDGET" ] && return 0
	case $OVER in *" $1 "*) ;; *)
		result FAIL "$1" "not started: the boot lane's budget of $BUDGET s was spent"
		OVER="$OVER$1 " ;;
	esac
	return 1
}

# shellcheck source=tests/boot/lib.sh
. "$TOP/tests/boot/lib.sh"
T_START=$(date +%s)
if ! boot_image; then
	for t in $PLAN; do want "$t" && result FAIL "$t" "the image was not built"; done
	exit 0
fi
trap "server_stop; qemu_server_stop" EXIT
T_START=$(date +%s)
BOOT_DEADLINE=$((T_START + BUDGET + 600))

t0=$(date +%s)

# 1. Blank disk, network boot (iPXE from QEMU's TFTP) -> multi-user.
# 2. and 6. The machine reboots itself (systemctl reboot, QEMU's reset:
#    firmware, iPXE and all): shutdown completes with streamd alive until
#    the device is released, and the second boot fetches nothing the
#    first fetched.  The server restarts between the two, to keep each
#    boot's requests apart.
if want netboot || want reboot_no_refetch; then
	new_disk
	server_start "$BW/net.req"
	t=$(date +%s)
	after="" reboot=0
	if want reboot_no_refetch; then
		after="streamboot.after=reboot-once"
		reboot=1
	fi
	: >"$BW/netall.log"	# polled below before QEMU opens it
	VM_REBOOT=$reboot vm "$BW/netall.log" 1 \
		"rd.stream.fill=off streamboot.run=status $after" &
	vmpid=$!
	secs="" restarted=0
	while kill -0 $vmpid 2>/dev/null; do
		[ -z "$secs" ] && grep -aq "STREAMBOOT-READY" "$BW/netall.log" &&
			secs=$(($(date +%s) - t))
		if [ $reboot = 1 ] &&
		   grep -aq "reboot: Restarting system" "$BW/netall.log"; then
			server_stop
			server_start "$BW/reboot.req"
			restarted=1
			break
		fi
		sleep 0.2
	done
	wait $vmpid
	rc=$?
	server_stop
	# the console of each boot
	awk -v a="$BW/net.log" -v b="$BW/reboot.log" '
		{ print > (n ? b : a) }
		/reboot: Restarting system/ { n = 1 }' "$BW/netall.log"
	[ -e "$BW/reboot.log" ] || : >"$BW/reboot.log"
	bytes=$(read_bytes "$BW/net.req")
	last="Power down"
	[ $reboot = 1 ] && last="Restarting system"
	if ! grep -aq "tftp://10.0.2.2/initrd.img.* ok" "$BW/net.log"; then
		result FAIL netboot "iPXE did not load the initramfs over TFTP (log $BW/net.log)"
	elif why=$(boot_ok "$BW/net.log" $rc status "$last"); then
		result PASS netboot
		echo "MEASURED netboot blank disk, network boot to multi-user in ${secs:-?} s; fetched $bytes of $IMG_BYTES image bytes ($((bytes * 100 / IMG_BYTES))%); present $(status_field "$BW/net.log" 5); partitions: $(grep -a "partitions mapped" "$BW/net.log" | head -1 | tr -d '\r' | sed 's/.*streamroot: //')"
	else
		result FAIL netboot "$why (log $BW/net.log)"
	fi

	if [ $reboot = 1 ]; then
		again=$(comm -12 <(read_offsets "$BW/net.req" | sort -u) \
			<(read_offsets "$BW/reboot.req" 2>/dev/null | sort -u) | wc -l)
		if [ $restarted = 0 ]; then
			result FAIL reboot_no_refetch "the machine did not reboot (log $BW/netall.log)"
		elif ! why=$(boot_ok "$BW/reboot.log" $rc status); then
			result FAIL reboot_no_refetch "$why (log $BW/reboot.log)"
		elif ! grep -aq "tftp://10.0.2.2/initrd.img.* ok" "$BW/reboot.log"; then
			result FAIL reboot_no_refetch "the reboot did not go through the firmware's network boot (log $BW/reboot.log)"
		elif [ "$bytes" -lt $((1 << 20)) ]; then
			result FAIL reboot_no_refetch "the first boot's request log shows $bytes bytes read: nothing to compare"
		elif [ "$again" != 0 ]; then
			result FAIL reboot_no_refetch "$again offsets read by the first boot were read again"
		else
			result PASS reboot_no_refetch
			echo "MEASURED reboot_no_refetch rebooted by systemctl reboot; second boot fetched $(read_bytes "$BW/reboot.req") bytes, none fetched before"
		fi
	fi
fi

# 4. Kiosk: a user writes a file; the next boot (rd.stream.revert=1) has
#    the image's content again and a clean filesystem.  Both boots over
#    TLS with a pre-shared key, the server named (imageserver, in the
#    initramfs' /etc/hosts only); in the first, the server restarts
#    after switch_root and streamd must reconnect to the address it
#    resolved before.
if want kiosk_revert; then
	new_disk
	export SERVER_TLS=1
	VM_CMD="${BASE_CMD/rd.stream.uri=nbd:\/\/10.0.2.100:10809/$TLS_CMD}"
	export VM_CMD
	server_start "$BW/kiosk.req"
	: >"$BW/kiosk1.log"
	vm "$BW/kiosk1.log" 0 "rd.stream.fill=off streamboot.run=bounce,write-file" &
	vmpid=$!
	bounced=0
	while kill -0 $vmpid 2>/dev/null; do
		if grep -aq "^STREAMBOOT-BOUNCE" "$BW/kiosk1.log"; then
			server_stop
			server_start "$BW/kiosk-late.req"
			bounced=1
			break
		fi
		sleep 0.2
	done
	wait $vmpid
	rc1=$?
	server_stop
	server_start "$BW/kiosk2.req"
	vm "$BW/kiosk2.log" 0 "rd.stream.fill=off rd.stream.revert=1 streamboot.run=check-file"
	rc2=$?
	server_stop
	unset SERVER_TLS VM_CMD
	if ! grep -aq "streaming nbds://10.0.2.100:10809" "$BW/kiosk1.log"; then
		result FAIL kiosk_revert "the server's name was not resolved to its address in the initramfs: $(grep -a "dm-stream: .*streaming" "$BW/kiosk1.log" | head -1 | tr -d '\r')"
	elif ! why=$(boot_ok "$BW/kiosk1.log" $rc1 bounce,write-file); then
		result FAIL kiosk_revert "first boot: $why (log $BW/kiosk1.log)"
	elif [ $bounced = 0 ] || [ "$(read_bytes "$BW/kiosk-late.req")" -lt $((1 << 20)) ]; then
		result FAIL kiosk_revert "no reads after the server restarted ($(read_bytes "$BW/kiosk-late.req" 2>/dev/null) bytes): streamd did not reconnect after switch_root"
	elif ! why=$(boot_ok "$BW/kiosk2.log" $rc2 check-file); then
		result FAIL kiosk_revert "revert boot: $why (log $BW/kiosk2.log)"
	elif ! grep -aq "^STREAMBOOT-FILE absent" "$BW/kiosk2.log"; then
		result FAIL kiosk_revert "the user's file survived the revert"
	elif ! grep -aq "kiosk revert: .*reverted [1-9][0-9]* blocks" "$BW/kiosk2.log"; then
		result FAIL kiosk_revert "no revert of the written blocks on the console: $(grep -a "kiosk revert:" "$BW/kiosk2.log" | head -1 | tr -d '\r')"
	else
		result PASS kiosk_revert
		echo "MEASURED kiosk_revert $(grep -a "kiosk revert:" "$BW/kiosk2.log" | head -1 | tr -d '\r' | sed 's/.*kiosk revert: //'); over TLS-PSK, $(read_bytes "$BW/kiosk-late.req") bytes read after a server restart past switch_root"
	fi
fi

# 5. The server is unreachable for 30 s in the middle of the first boot:
#    the boot completes after it returns, no I/O error.
if want outage; then
	new_disk
	server_start "$BW/outage.req"
	vm "$BW/outage.log" 0 "rd.stream.fill=off streamboot.run=status" &
	vmpid=$!
	# in the middle: the device is up, the root not mounted yet (the
	# console line of stream-start), so the rest of the boot needs it
	seen=0
	for _ in $(seq 600); do
		grep -aq "dm-stream: $NAME: streaming" "$BW/outage.log" &&
			{ seen=1; break; }
		sleep 0.2
	done
	server_stop
	sleep 30
	server_start "$BW/outage2.req"
	wait $vmpid
	rc=$?
	server_stop
	if [ $seen = 0 ]; then
		result FAIL outage "the device was not set up within 120 s: the outage did not land in the boot (log $BW/outage.log)"
	elif [ "$(read_bytes "$BW/outage2.req")" -lt $((4 << 20)) ]; then
		result FAIL outage "$(read_bytes "$BW/outage2.req") bytes fetched after the outage: it did not hit the boot"
	elif ! why=$(boot_ok "$BW/outage.log" $rc status); then
		result FAIL outage "$why (log $BW/outage.log)"
	else
		result PASS outage
		echo "MEASURED outage server away 30 s from the device set-up on; $(read_bytes "$BW/outage2.req") bytes fetched after it came back"
	fi
fi

# 3. Fill to completion, then boot with no server at all.
if want fill_then_local; then
	new_disk
	server_start "$BW/fill.req"
	vm "$BW/fill1.log" 0 "streamboot.run=fill"
	rc1=$?
	server_stop
	# no server: guestfwd's socat finds nobody listening
	vm "$BW/fill2.log" 0 "streamboot.run=status"
	rc2=$?
	if ! why=$(boot_ok "$BW/fill1.log" $rc1 fill); then
		result FAIL fill_then_local "fill boot: $why (log $BW/fill1.log)"
	elif ! why=$(boot_ok "$BW/fill2.log" $rc2 status); then
		result FAIL fill_then_local "serverless boot: $why (log $BW/fill2.log)"
	else
		result PASS fill_then_local
		echo "MEASURED fill_then_local filled $(read_bytes "$BW/fill.req") bytes of $IMG_BYTES, then booted with no server"
	fi
fi
# A disk that holds something else (here an ext4 filesystem) is never
# touched: the initramfs says so and gives up (dracut's die(): power-off
# or halt), and the disk is byte for byte as it was.
if want foreign_disk; then
	new_disk
	mkfs.ext4 -q -F -L precious "$BW/disk.raw"
	before=$(sha256sum <"$BW/disk.raw")
	server_start "$BW/foreign.req"
	vm "$BW/foreign.log" 0 "rd.stream.fill=off streamboot.run=status"
	rc=$?
	server_stop
	if grep -aq "^STREAMBOOT-READY" "$BW/foreign.log"; then
		result FAIL foreign_disk "the system came up on a disk that was not blank (log $BW/foreign.log)"
	elif ! grep -aq "dm-stream: rd.stream.disk=.* it is left as it is" "$BW/foreign.log"; then
		result FAIL foreign_disk "no refusal on the console (log $BW/foreign.log)"
	elif [ "$before" != "$(sha256sum <"$BW/disk.raw")" ]; then
		result FAIL foreign_disk "the disk was written"
	elif [ "$rc" != 0 ] && [ "$rc" != 125 ]; then
		result FAIL foreign_disk "QEMU status $rc: the machine neither powered off nor halted after the refusal"
	else
		result PASS foreign_disk
	fi
fi

# LVM on LUKS inside the image (image-luks.raw, partition 1 encrypted):
# dm-stream maps the partition, dracut's crypt module unlocks it with
# the key named by rd.luks.key= and its lvm module finds the root in it.
if want luks_root; then
	new_disk
	uuid=$(cat "$IMG/luks-uuid")
	SERVER_IMAGE=$IMG/image-luks.raw server_start "$BW/luks.req"
	vm "$BW/luks.log" 0 "rd.stream.fill=off rd.luks.uuid=$uuid rd.luks.key=$uuid=/etc/streamboot-luks.key streamboot.run=status"
	rc=$?
	server_stop
	stack=$(grep -a "^STREAMBOOT-ROOTSTACK" "$BW/luks.log" | tr -d '\r' | cut -d' ' -f2-)
	if ! why=$(boot_ok "$BW/luks.log" $rc status); then
		result FAIL luks_root "$why (log $BW/luks.log)"
	elif ! echo " $stack" | grep -q " crypt .*streamroot "; then
		result FAIL luks_root "the root is not on LUKS on the stream device: '$stack'"
	else
		result PASS luks_root
		echo "MEASURED luks_root root stacked on: $stack; fetched $(read_bytes "$BW/luks.req") bytes"
	fi
fi

# A non-root streamed volume on the running system, served by
# streamd@.service (ready once attached: started between load and resume).
if want unit_volume; then
	new_disk
	rm -f "$BW/volmeta.raw" "$BW/voldata.raw"
	truncate -s 8M "$BW/volmeta.raw"
	truncate -s "$IMG_BYTES" "$BW/voldata.raw"
	server_start "$BW/unit.req"
	VM_DISKS="-drive file=$BW/volmeta.raw,format=raw,if=virtio -drive file=$BW/voldata.raw,format=raw,if=virtio" \
		vm "$BW/unit.log" 0 "rd.stream.fill=off streamboot.run=unit-volume"
	rc=$?
	server_stop
	if ! why=$(boot_ok "$BW/unit.log" $rc unit-volume); then
		result FAIL unit_volume "$why (log $BW/unit.log)"
	elif ! grep -aq "^STREAMBOOT-UNIT $(head -c 4194304 "$IMG/image.raw" | sha256sum | cut -d' ' -f1); streamd@vol-b active" "$BW/unit.log"; then
		result FAIL unit_volume "$(grep -a "^STREAMBOOT-UNIT" "$BW/unit.log" | tr -d '\r')"
	else
		result PASS unit_volume
	fi
fi

# 7. Capture: the running streamed system snapshots itself into a qcow2
#    overlay of the image on the host; a second machine boots from that
#    overlay as its image and sees the change.
if want capture; then
	new_disk
	rm -f "$BW/overlay.qcow2"
	qemu-img create -q -f qcow2 -b "$IMG/image.raw" -F raw "$BW/overlay.qcow2"
	server_start "$BW/capture.req"
	qemu_server_start "$BW/overlay.qcow2" "$PORT2"
	vm "$BW/capture1.log" 0 "rd.stream.fill=off streamboot.run=capture"
	rc1=$?
	server_stop
	qemu_server_stop
	new_disk
	qemu_server_start "$BW/overlay.qcow2" "$PORT" -r
	vm "$BW/capture2.log" 0 "rd.stream.fill=off streamboot.run=check-file"
	rc2=$?
	qemu_server_stop
	if ! why=$(boot_ok "$BW/capture1.log" $rc1 capture); then
		result FAIL capture "capturing boot: $why (log $BW/capture1.log)"
	elif ! why=$(boot_ok "$BW/capture2.log" $rc2 check-file); then
		result FAIL capture "boot from the overlay: $why (log $BW/capture2.log)"
	elif ! grep -aq "^STREAMBOOT-FILE present captured" "$BW/capture2.log"; then
		result FAIL capture "the change is not in the overlay's system: $(grep -a "^STREAMBOOT-FILE" "$BW/capture2.log" | tr -d '\r')"
	else
		result PASS capture
		echo "MEASURED capture $(grep -a "^STREAMBOOT-CAPTURE" "$BW/capture1.log" | tr -d '\r' | sed 's/^STREAMBOOT-CAPTURE //')"
	fi
fi
echo "MEASURED boot_suite $(($(date +%s) - t0)) s"
