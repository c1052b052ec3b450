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
#            image.raw     ext4 root filesystem (what the server exports)
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

# What the image holds besides dm-stream.  dkms pulls the compiler, the
# headers let it build for the installed kernel (6.1) and for the 6.12
# line, whose headers alone are there to prove the package builds for
# both; dracut (not initramfs-tools) with its network-legacy module
# (dhclient).
PKGS="systemd-sysv udev dbus kmod procps iproute2 isc-dhcp-client
linux-image-amd64 linux-headers-amd64 linux-headers-6.12-amd64 dkms
dracut dracut-network
dmsetup libnbd0 libnbd-bin libdevmapper1.02.1 libjson-c5 libsystemd0
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
	cat "$TOP/tests/boot/guest-setup.sh") | hash_of)
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
	mkfs.ext4 -q -F -L streamroot -d "$out/root" "$out/image.raw" \
		"${IMAGE_MB}M" || die "mkfs.ext4 -d failed"
	rm -rf "$out/root"
	touch "$out/.done"
fi
echo "$out" >&3
