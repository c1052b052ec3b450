#!/bin/sh
# Run by tests/boot/mkimage.sh inside the image (chroot): install
# dm-stream's packages (DKMS builds the module for the image's kernel),
# configure dracut to include the stream module, and add the test hooks.
set -eu

export DEBIAN_FRONTEND=noninteractive
# the kernel the machine boots: bookworm's default line (6.1), the one
# linux-image-amd64 names; the 6.12 line is there for DKMS (its headers
# bring its image along)
kver=$(dpkg-query -W -f='${Depends}' linux-image-amd64 |
	sed -n 's/^linux-image-\([0-9][^ ,]*\).*/\1/p')
[ -e "/boot/vmlinuz-$kver" ] ||
	{ echo "no kernel image for linux-image-amd64 ($kver)"; exit 1; }
echo "$kver" >/boot/kver

# As a user would (apt install ./*.deb); the base holds every
# dependency, so nothing is downloaded.  The base has no initramfs
# (mmdebstrap's hook removed it): installing must not make one, since the
# packages change nothing an initramfs holds until dracut is asked for
# the stream module.
(cd /tmp/debs && apt-get install -y --no-install-recommends \
	./dm-stream-dkms_*.deb ./dm-stream-tools_*.deb)
# DKMS builds at install time for the running (here: the newest) kernel;
# every kernel line with headers must build, as dkms autoinstall does at
# boot for a kernel installed later.
for d in /lib/modules/*/; do
	k=$(basename "$d")
	[ -e "/lib/modules/$k/build" ] || continue
	dkms autoinstall -k "$k"
	dkms status -m dm-stream -k "$k" | grep -q ": installed" ||
		{ echo "DKMS did not build dm-stream for $k"; exit 1; }
done
dkms status
dkms status -m dm-stream | grep -q "6\.1\..*: installed" ||
	{ echo "no DKMS build for the 6.1 line"; exit 1; }
dkms status -m dm-stream | grep -q "6\.12\..*: installed" ||
	{ echo "no DKMS build for the 6.12 line"; exit 1; }
modinfo -k "$kver" dm-stream >/dev/null
if ls /boot/initrd.img-* >/dev/null 2>&1; then
	echo "installing the packages made an initramfs: $(ls /boot/initrd.img-*)"
	exit 1
fi

# Opt-in: an initramfs made with the packages installed but no
# configuration has neither the module nor streamd.
dracut -q -f --kver "$kver" /tmp/plain.img
if lsinitrd /tmp/plain.img | grep -q 'bin/streamd\|stream-start'; then
	echo "the stream module is in an initramfs that did not ask for it"
	exit 1
fi
rm -f /tmp/plain.img

# Test-only dracut module for the benchmark's copy-then-boot machine:
# with streamboot.copy=1, nbdcopy the whole image to /dev/vda once the
# network is up, then have its partitions read (root=/dev/vda1 appears).
mkdir -p /usr/lib/dracut/modules.d/99streambench
cat >/usr/lib/dracut/modules.d/99streambench/module-setup.sh <<'EOF'
#!/bin/bash
check() { return 255; }
depends() { echo network; }
install() {
	inst_multiple nbdcopy date blockdev udevadm
	inst_hook initqueue/online 50 "$moddir/copy.sh"
}
EOF
cat >/usr/lib/dracut/modules.d/99streambench/copy.sh <<'EOF'
#!/bin/sh
if getargbool 0 streamboot.copy && [ ! -e /run/streambench.copied ]; then
	: >/run/streambench.copied
	t0=$(date +%s%N)
	nbdcopy nbd://10.0.2.100:10809 /dev/vda || die "nbdcopy failed"
	blockdev --rereadpt /dev/vda || die "re-reading the copied partition table failed"
	udevadm settle -t 30
	echo "STREAMBOOT-COPIED $((($(date +%s%N) - t0) / 1000000)) ms" >/dev/console
fi
EOF
chmod 0755 /usr/lib/dracut/modules.d/99streambench/*.sh

cat >/etc/dracut.conf.d/90-stream.conf <<'EOF'
# dm-stream streamed root (tests/boot): the module is opt-in.
add_dracutmodules+=" stream lvm crypt network-legacy streambench "
# the LUKS image's key (luks_root: rd.luks.key= names it)
install_items+=" /etc/streamboot-luks.key "
omit_dracutmodules+=" systemd-networkd network-manager connman "
EOF
# TLS with a pre-shared key (the kiosk scenario): dracut's stream module
# puts /etc/dm-stream/tls/* into the initramfs.  A test key, also known to
# tests/boot/lib.sh.
mkdir -p /etc/dm-stream/tls
echo "streamboot:5a2b6c1e3d7f4c599e846d2f0b7a1c015a2b6c1e3d7f4c599e846d2f0b7a1c01" \
	>/etc/dm-stream/tls/streamboot.psk
chmod 0600 /etc/dm-stream/tls/streamboot.psk
# The key of image-luks.raw's partition (tests/boot/mkimage.sh).
printf '%s' streamboot-luks-key >/etc/streamboot-luks.key
chmod 0400 /etc/streamboot-luks.key
# The image server by name, known to the initramfs alone: after
# switch_root streamd must reconnect to the address resolved before
# (tests/boot/run.sh, outage).
[ -e /etc/hosts ] && cp /etc/hosts /tmp/hosts.orig	# (minbase has none)
echo "10.0.2.100 imageserver" >>/etc/hosts
dracut -f --kver "$kver" "/boot/initrd.img-$kver"
rm /etc/hosts
[ -e /tmp/hosts.orig ] && mv /tmp/hosts.orig /etc/hosts
lsinitrd "/boot/initrd.img-$kver" | grep -q 'bin/streamd' ||
	{ echo "streamd is not in the initramfs"; exit 1; }
lsinitrd "/boot/initrd.img-$kver" | grep -q 'sbin/kpartx' ||
	{ echo "kpartx is not in the initramfs"; exit 1; }
lsinitrd "/boot/initrd.img-$kver" | grep -q 'sbin/lvm$' ||
	{ echo "lvm is not in the initramfs"; exit 1; }
lsinitrd "/boot/initrd.img-$kver" | grep -q 'systemd-cryptsetup$' ||
	{ echo "systemd-cryptsetup is not in the initramfs"; exit 1; }
lsinitrd "/boot/initrd.img-$kver" | grep -q 'etc/streamboot-luks.key$' ||
	{ echo "the LUKS key is not in the initramfs"; exit 1; }
lsinitrd -f etc/hosts "/boot/initrd.img-$kver" | grep -q imageserver ||
	{ echo "the initramfs has no /etc/hosts naming the image server"; exit 1; }

echo streamboot >/etc/hostname
printf '/dev/mapper/streamvg-root / ext4 defaults,errors=remount-ro 0 1\n' \
	>/etc/fstab
passwd -d root
useradd -m -s /bin/sh alice

# The test hook: once the system is up, print the verdict of
# is-system-running (and any failed unit), run the action the kernel
# command line names (streamboot.run=<name>), print STREAMBOOT-DONE and
# power off.
mkdir -p /usr/local/lib/streamboot
cat >/usr/local/lib/streamboot/ready.sh <<'EOF'
#!/bin/sh
con=/dev/ttyS0
state=$(systemctl is-system-running --wait)
echo "STREAMBOOT-READY $state" >$con
systemctl --failed --no-legend --plain | sed 's/^/STREAMBOOT-FAILED /' >$con
run=$(sed -n 's/.*streamboot\.run=\([^ ]*\).*/\1/p' /proc/cmdline)
rc=0
# a comma-separated list of actions, done in turn
for act in $(echo "$run" | tr , ' '); do
case $act in
none) ;;
bounce)		# the host restarts the server on seeing the marker:
		# streamd reconnects after switch_root, when the initramfs'
		# resolver files are gone, then absent blocks are read
	echo "STREAMBOOT-BOUNCE" >$con
	sleep 15
	if timeout 120 dd if=/dev/mapper/streamroot of=/dev/null bs=1M \
		skip=1900 count=16 iflag=direct 2>/dev/null; then
		echo "STREAMBOOT-LATE-READ ok" >$con
	else
		echo "STREAMBOOT-LATE-READ failed" >$con
		rc=1
	fi
	;;
write-file)	# a user writes a file (kiosk test)
	su -c 'echo kiosk-session >/home/alice/session.txt && sync' alice ||
		rc=$?
	;;
capture)	# a change, then a snapshot for consumer 0 to the host
	su -c 'echo captured >/home/alice/session.txt && sync' alice || rc=$?
	out=$(streamctl snapshot streamroot --consumer 0 \
		--to nbd://10.0.2.100:10810 2>&1) || rc=$?
	echo "STREAMBOOT-CAPTURE $out" >$con
	;;
unit-volume)	# a second streamed volume, its helper streamd@.service
	sz=$(($(blockdev --getsize64 /dev/mapper/streamroot) / 512))
	mkdir -p /etc/dm-stream
	echo "STREAMD_URI=nbd://10.0.2.100:10809" >/etc/dm-stream/vol-b.conf
	step=create
	dmsetup create vol-b --notable 2>$con &&
	step=load &&
	dmsetup load vol-b --table "0 $sz stream /dev/vdb /dev/vdc 128" 2>$con &&
	step="systemctl start" &&
	systemctl start streamd@vol-b 2>$con &&
	step="attached once started (readiness)" &&
	[ "$(dmsetup status --inactive vol-b | awk '{ print $8 }')" = attached ] &&
	step=resume &&
	dmsetup resume vol-b 2>$con &&
	step=read &&
	sum=$(head -c 4194304 /dev/mapper/vol-b | sha256sum) &&
	step=done
	if [ "$step" = done ]; then
		# the host compares the sum with the image's
		echo "STREAMBOOT-UNIT ${sum%% *}; streamd@vol-b $(systemctl is-active streamd@vol-b)" >$con
	else
		echo "STREAMBOOT-UNIT failed at $step" >$con
		journalctl -b -u streamd@vol-b --no-pager | tail -n 8 >$con
		rc=1
	fi
	dmsetup remove vol-b
	systemctl stop streamd@vol-b
	;;
check-file)
	if [ -e /home/alice/session.txt ]; then
		echo "STREAMBOOT-FILE present $(cat /home/alice/session.txt)" >$con
	else
		echo "STREAMBOOT-FILE absent" >$con
	fi
	;;
fill)		# fill to completion, the device then needs no server
	streamctl fill streamroot on || rc=$?
	# status: 0 <len> stream <bs> <present>/<total> ...
	while :; do
		pt=$(dmsetup status streamroot | awk '{ print $5 }')
		[ "${pt%/*}" = "${pt#*/}" ] && break
		sleep 2
	done
	echo "STREAMBOOT-FILLED $pt" >$con
	;;
status) ;;
*)
	echo "STREAMBOOT-ACTION unknown $act" >$con
	rc=1
	;;
esac
done
echo "STREAMBOOT-STATUS $(dmsetup status streamroot)" >$con
# what the root is stacked on, top down ("NAME TYPE" pairs)
echo "STREAMBOOT-ROOTSTACK $(lsblk -s -n -r -o NAME,TYPE "$(findmnt -n -o SOURCE /)" | tr '\n' ' ')" >$con
grep -h . /sys/fs/ext4/*/errors_count 2>/dev/null | sed 's/^/STREAMBOOT-EXT4-ERRORS /' >$con
# the whole kernel log (streamd logs there too), not only the console's
# (QEMU's empty floppy controller is not ours: its fd0 errors are left out)
bad='I/O error|EXT4-fs error|Buffer I/O|blk_update_request|BUG:|WARNING: CPU|Call Trace|dm-stream: .*(failed|refused)|device-mapper: stream[a-z ]*: .*(failed|refused|could not|switching to)|streamd: .*(dropped|malformed)'
dmesg | grep -E "$bad" | grep -vE "dev fd[0-9]|floppy" >/run/streamboot-klog
echo "STREAMBOOT-KLOG-ERRORS $(wc -l </run/streamboot-klog)" >$con
head -n 5 /run/streamboot-klog | sed 's/^/STREAMBOOT-KLOG /' >$con
echo "STREAMBOOT-DONE $run $rc" >$con
case $(sed -n 's/.*streamboot\.after=\([^ ]*\).*/\1/p' /proc/cmdline) in
stay) ;;
reboot) systemctl reboot ;;
reboot-once)	# reboot, and power off after the next boot (the mark
		# is on the streamed root)
	if [ -e /var/lib/streamboot-rebooted ]; then
		systemctl poweroff
	else
		: >/var/lib/streamboot-rebooted
		sync
		systemctl reboot
	fi
	;;
*) systemctl poweroff ;;
esac
EOF
chmod 0755 /usr/local/lib/streamboot/ready.sh
cat >/etc/systemd/system/streamboot-ready.service <<'EOF'
[Unit]
Description=dm-stream boot test: report readiness on the serial console
After=multi-user.target

[Service]
Type=simple
ExecStart=/usr/local/lib/streamboot/ready.sh

[Install]
WantedBy=multi-user.target
EOF
systemctl enable streamboot-ready.service
# A system that falls into emergency or rescue mode says so on the
# console and powers off, instead of waiting at sulogin for the test's
# watchdog (the initramfs does the same with rd.shell=0
# rd.emergency=poweroff on the command line).
for unit in emergency rescue; do
	mkdir -p /etc/systemd/system/$unit.service.d
	cat >/etc/systemd/system/$unit.service.d/streamboot.conf <<EOF2
[Service]
ExecStartPre=
ExecStart=
ExecStart=/bin/sh -c 'echo "STREAMBOOT-EMERGENCY $unit: \$\$(systemctl --failed --no-legend --plain | tr "\\n" " ")" >/dev/ttyS0; systemctl --no-block poweroff'
EOF2
done
# No getty on the serial console: the test hook owns it.
systemctl mask serial-getty@ttyS0.service
apt-get clean
