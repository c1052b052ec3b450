#!/bin/bash
# Install what a fresh Debian bookworm machine lacks to build and test
# dm-stream, and fetch both stock kernel lines' images for the VM tests.
#
# Versions are resolved at run time from the archive's meta-packages
# (linux-image-amd64, linux-image-6.12-amd64, ...), never pinned.
#
# Usage: scripts/setup.sh            (idempotent; quick when all is there)
# Env:   STREAM_CACHE  cache dir for extracted kernels (default ~/.cache/dm-stream)
set -euo pipefail

CACHE=${STREAM_CACHE:-$HOME/.cache/dm-stream}
mkdir -p "$CACHE"

die() { echo "setup: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || SUDO=sudo
SUDO=${SUDO:-}

PKGS="build-essential gcc make bc flex bison libelf-dev libssl-dev cpio kmod
xz-utils zstd pkg-config libnbd-dev libnbd-bin libdevmapper-dev dmsetup
nbdkit qemu-utils qemu-system-x86 busybox-static sparse linux-source-6.12
linux-headers-amd64 linux-headers-6.12-amd64 e2fsprogs fdisk lvm2 procps
shellcheck util-linux fio libcmocka-dev libjson-c-dev jq clang
libclang-rt-dev cppcheck iproute2 openssl libsystemd-dev
debhelper dh-dkms lintian fakeroot dpkg-dev mmdebstrap socat ipxe-qemu
seabios nbd-client"

missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
		missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "setup: installing:$missing"
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -qq
	# shellcheck disable=SC2086
	$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null ||
		die "apt-get install failed for:$missing"
fi

# Resolve the concrete kernel package behind each meta-package, then
# extract (not install: no bootloader hooks on the host) image + modules.
resolve() {
	apt-cache depends "$1" 2>/dev/null |
		awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}

fetch_kernel() {
	local meta=$1 tag=$2 pkg dir
	pkg=$(resolve "$meta")
	if [ -z "$pkg" ]; then
		$SUDO apt-get update -qq
		pkg=$(resolve "$meta")
	fi
	[ -n "$pkg" ] || die "cannot resolve $meta to a kernel package"
	dir=$CACHE/kernels/$pkg
	if [ ! -e "$dir/.done" ]; then
		echo "setup: fetching $pkg for $tag"
		rm -rf "$dir" && mkdir -p "$dir/deb"
		(cd "$dir/deb" && apt-get download -qq "$pkg") ||
			die "apt-get download $pkg failed"
		dpkg-deb -x "$dir"/deb/*.deb "$dir/root"
		rm -rf "$dir/deb"
		# busybox modprobe/insmod cannot read .ko.xz/.ko.zst
		find "$dir/root/lib/modules" \( -name '*.ko.xz' -o -name '*.ko.zst' \) |
			while read -r m; do
				case $m in
				*.xz) xz -d "$m" ;;
				*.zst) zstd -q -d --rm "$m" ;;
				esac
			done
		local kver
		kver=$(ls "$dir/root/lib/modules")
		depmod -b "$dir/root" "$kver"
		echo "$kver" >"$dir/kver"
		touch "$dir/.done"
	fi
	ln -sfn "$dir" "$CACHE/kernel-$tag"
}

fetch_kernel linux-image-amd64 6.1
fetch_kernel linux-image-6.12-amd64 6.12
echo "setup: ok (cache $CACHE)"
