#!/bin/bash
# Build the Debian bookworm image the boot tests stream: a real system
# (systemd, the stock 6.1 kernel, dracut with dm-stream's module) made with
# mmdebstrap from the apt archive, dm-stream's packages installed in it so
# that DKMS builds the module there, and a unit that prints
# "STREAMBOOT-READY <state>" on the serial console once
# `systemctl is-system-running --wait` returns.
#
# Two stages, each cached outside the repository keyed by its inputs:
#   base   mmdebstrap (package list + this script) -> $CACHE/bootbase-<h>/root
#   image  base + the .debs + the dracut config   -> $CACHE/bootimg-<h>/
#            image.raw     a whole disk: GPT, LVM in partition 1, the ext4
#                          root in streamvg/root (what the server exports)
#            image-luks.raw the same, partition 1 encrypted (LUKS1)
#            luks-uuid     its LUKS UUID
#            vmlinuz, initrd.img, kver
#
# Usage: tests/boot/mkimage.sh <dir of dm-stream .debs>
#        prints the image directory
set -euo pipefail

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${STREAM_CACHE:-$HOME/.cache/dm-stream}
DEBS=${1:?usage: mkimage.sh <dir of .debs>}
IMAGE_MB=${STREAM_BOOT_IMAGE_MB:-2048}

die() { echo "mkimage: $*" >&2; exit 1; }

# stdout is for the image directory alone (mkfs.ext4 -q still says
# "Creating regular file")
exec 3>&1 1>&2
# One build at a time (run-all.sh's two boot groups): the second finds
# the first's image.
mkdir -p "$CACHE"
exec 8>"$CACHE/.bootimage.lock"
flock 8

# What the image holds besides dm-stream.  dkms pulls the compiler, the
# headers let it build for the installed kernel (6.1) and for the 6.12
# line, whose headers alone are there to prove the package builds for
# both; dracut (not initramfs-tools) with its network-legacy module
# (dhclient).
PKGS="systemd-sysv udev dbus kmod procps iproute2 isc-dhcp-client
linux-image-amd64 linux-headers-amd64 linux-headers-6.12-amd64 dkms
dracut dracut-network
dmsetup lvm2 libnbd0 libnbd-bin libdevmapper1.02.1 libjson-c5 libsystemd0
e2fsprogs fdisk util-linux passwd login"

hash_of() { sha256sum | cut -c1-16; }

# The archive: mmdebstrap's default for a stable suite (the Debian archive
# with its updates and security suites), or STREAM_BOOT_MIRROR (a URI, a
# one-line "deb ..." entry or a sources file, as mmdebstrap takes them).
# Bump BASE_RECIPE when the mmdebstrap call below changes.
BASE_RECIPE=3
base_key=$(echo "$BASE_RECIPE $PKGS ${STREAM_BOOT_MIRROR:-}" | hash_of)
base=$CACHE/bootbase-$base_key
if [ ! -e "$base/.done" ]; then
	rm -rf "$base"
	mkdir -p "$base"
	echo "mkimage: mmdebstrap bookworm into $base (once per input change)" >&2
	# hostonly=no: dracut runs in a chroot, it must not size the
	# initramfs to the build host.
	# shellcheck disable=SC2016 # the hooks' $1 is mmdebstrap's
	mmdebstrap --variant=minbase --mode=root \
		--include="$(printf '%s' "$PKGS" | tr -s ' \n' ',,')" \
		--essential-hook='mkdir -p "$1/etc/dracut.conf.d" && echo hostonly=no >"$1/etc/dracut.conf.d/10-generic.conf"' \
		--customize-hook='rm -f "$1"/boot/initrd.img-*' \
		bookworm "$base/root" ${STREAM_BOOT_MIRROR:+"$STREAM_BOOT_MIRROR"} \
		>"$base/mmdebstrap.log" 2>&1 ||
		die "mmdebstrap failed (see $base/mmdebstrap.log)"
	touch "$base/.done"
fi

ls "$DEBS"/dm-stream-dkms_*.deb "$DEBS"/dm-stream-tools_*.deb >/dev/null ||
	die "no dm-stream packages in $DEBS (make deb)"
# The packages' inputs, not the .debs themselves: a build elsewhere (CI's
# clone) embeds other paths in the binaries' debug data, and would make
# the same image again for nothing.  Outside git: the .debs.
pkg_inputs() {
	if git -C "$TOP" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
		(cd "$TOP" && git ls-files -z --cached --others --exclude-standard \
			-- debian kernel userspace dracut systemd doc Kbuild Makefile |
			xargs -0 sha256sum 2>/dev/null)
	else
		sha256sum "$DEBS"/*.deb | cut -d' ' -f1
	fi
}
img_key=$( (echo "$base_key $IMAGE_MB"; pkg_inputs;
	cat "$TOP/tests/boot/guest-setup.sh" "$TOP/tests/boot/mkimage.sh") |
	hash_of)
out=$CACHE/bootimg-$img_key
if [ ! -e "$out/.done" ]; then
	rm -rf "$out"
	mkdir -p "$out"
	echo "mkimage: installing dm-stream into a copy of the base" >&2
	cp -a "$base/root" "$out/root"
	mkdir -p "$out/root/tmp/debs"
	cp "$DEBS"/*.deb "$out/root/tmp/debs/"
	cp "$TOP/tests/boot/guest-setup.sh" "$out/root/tmp/guest-setup.sh"
	# A private mount namespace: nothing mounted here outlives the chroot.
	# shellcheck disable=SC2016 # the script's $1 is its own
	unshare --mount --propagation private sh -ec '
		r=$1
		mount -t proc proc "$r/proc"
		mount -t sysfs sys "$r/sys"
		mount --rbind /dev "$r/dev"
		chroot "$r" /bin/sh /tmp/guest-setup.sh
	' sh "$out/root" >"$out/setup.log" 2>&1 ||
		die "installing into the image failed (see $out/setup.log)"
	rm -rf "$out/root/tmp/debs" "$out/root/tmp/guest-setup.sh"
	kver=$(cat "$out/root/boot/kver")
	cp "$out/root/boot/vmlinuz-$kver" "$out/vmlinuz"
	cp "$out/root/boot/initrd.img-$kver" "$out/initrd.img"
	echo "$kver" >"$out/kver"
	# A whole disk, as a fleet's images are: a GPT (fixed GUIDs), an
	# LVM physical volume in partition 1 from 1 MiB (1 MiB at the end
	# for the backup GPT), volume group streamvg, and the root
	# filesystem in its one linear volume, root.  The host has no
	# device-mapper: LVM writes its metadata through a loop device with
	# activation off, and the filesystem goes where the volume's first
	# extent is.
	truncate -s $(((IMAGE_MB + 2) << 20)) "$out/image.raw"
	printf 'label: gpt\nlabel-id: 5a2b6c1e-3d7f-4c59-9e84-6d2f0b7a1c10\nstart=2048, size=%s, type=e6d6d379-f507-44c2-a23c-238f2a3df928, uuid=5a2b6c1e-3d7f-4c59-9e84-6d2f0b7a1c11, name="streamroot"\n' \
		$((IMAGE_MB * 2048)) | sfdisk -q "$out/image.raw" >&2 ||
		die "sfdisk on the image failed"
	loop=$(losetup -f --show -o $((1 << 20)) --sizelimit $((IMAGE_MB << 20)) \
		"$out/image.raw") || die "losetup failed"
	mkdir -p "$out/lvm"
	lvm_cfg="global { activation = 0 } devices { filter = [ \"a|^$loop\$|\", \"r|.*|\" ] }"
	lv() { LVM_SYSTEM_DIR=$out/lvm LVM_SUPPRESS_FD_WARNINGS=1 "$@" --config "$lvm_cfg"; }
	if lv pvcreate -q -y "$loop" && lv vgcreate -q streamvg "$loop" &&
	   lv lvcreate -q -an -Zn -n root -l 100%FREE streamvg; then
		pe_start=$(lv pvs --noheadings --units b --nosuffix -o pe_start "$loop" | tr -d ' ')
		lv_bytes=$(lv lvs --noheadings --units b --nosuffix -o lv_size streamvg/root | tr -d ' ')
		ranges=$(lv lvs --noheadings -o seg_pe_ranges streamvg/root | tr -d ' ')
	fi
	losetup -d "$loop"
	case ${ranges:-} in
	"$loop:0-"*) ;;
	*) die "LVM: streamvg/root is not one run of extents from the first: '${ranges:-}'" ;;
	esac
	[ $((pe_start % 1048576)) = 0 ] ||
		die "LVM: data starts at $pe_start bytes, not on a MiB"
	mkfs.ext4 -q -F -L streamroot -d "$out/root" "$out/root.ext4" \
		"$((lv_bytes / 1024))k" || die "mkfs.ext4 -d failed"
	rm -rf "$out/root" "$out/lvm"
	dd if="$out/root.ext4" of="$out/image.raw" bs=1M \
		seek=$((((1 << 20) + pe_start) / 1048576)) \
		conv=notrunc,sparse status=none ||
		die "copying the filesystem into the image failed"
	rm -f "$out/root.ext4"
	# The same disk with partition 1 encrypted (LUKS1, by qemu-img:
	# the host has no dm-crypt), LVM inside: image-luks.raw, for the
	# luks_root scenario.  The key is the image's
	# /etc/streamboot-luks.key (tests/boot/guest-setup.sh); few PBKDF2
	# iterations, since the guest's TCG CPU checks them.
	dd if="$out/image.raw" of="$out/p1.raw" bs=1M skip=1 count="$IMAGE_MB" \
		conv=sparse status=none || die "extracting partition 1 failed"
	# (qemu-img calibrates PBKDF2 on the thread's CPU clock and gives
	# up, "Unable to get accurate CPU usage", when its first round reads
	# 0 ms: seen here once in three builds; the next try measures anew)
	for try in $(seq 10); do
		qemu-img convert -f raw -O luks \
			--object secret,id=k0,data=streamboot-luks-key \
			-o key-secret=k0,iter-time=10 "$out/p1.raw" "$out/p1.luks" &&
			break
		rm -f "$out/p1.luks"
		[ "$try" = 10 ] && die "qemu-img convert to LUKS failed 10 times"
	done
	rm -f "$out/p1.raw"
	luks_mib=$((($(stat -c %s "$out/p1.luks") + 1048575) / 1048576))
	truncate -s $(((luks_mib + 2) << 20)) "$out/image-luks.raw"
	printf 'label: gpt\nlabel-id: 5a2b6c1e-3d7f-4c59-9e84-6d2f0b7a1c12\nstart=2048, size=%s, type=ca7d7ccb-63ed-4c53-861c-1742536059cc, uuid=5a2b6c1e-3d7f-4c59-9e84-6d2f0b7a1c13, name="streamroot"\n' \
		$((luks_mib * 2048)) | sfdisk -q "$out/image-luks.raw" >&2 ||
		die "sfdisk on the LUKS image failed"
	dd if="$out/p1.luks" of="$out/image-luks.raw" bs=1M seek=1 \
		conv=notrunc status=none || die "copying the LUKS partition failed"
	blkid -p -s UUID -o value "$out/p1.luks" >"$out/luks-uuid"
	rm -f "$out/p1.luks"
	[ -s "$out/luks-uuid" ] || die "no LUKS UUID in the encrypted partition"
	touch "$out/.done"
fi
echo "$out" >&3
