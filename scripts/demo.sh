#!/bin/bash
# make demo: boot a VM with an empty local disk, stream an ext4 image from
# an NBD server into it, mount it, read a few files, and report what was
# fetched against the image size and how long the first read took.
set -euo pipefail
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/../tests/lib.sh"
tag=${STREAM_DEMO_KERNEL:-6.12}
echo "demo: building module and programs for Debian's $tag kernel"
build_tools
ko=$(build_module "$tag")
initrd=$(build_initramfs "$tag" "$ko")

d=$WORK/demo
rm -rf "$d" && mkdir -p "$d/tree/docs" "$d/tree/data"
# A small file tree: some text, some binaries, one larger file.
cp /usr/share/common-licenses/GPL-2 /usr/share/common-licenses/Apache-2.0 "$d/tree/docs/"
cp /bin/busybox "$d/tree/data/"
head -c $((8 << 20)) /dev/urandom >"$d/tree/data/blob.bin"
sha256sum "$d/tree/docs/GPL-2" "$d/tree/data/blob.bin" |
	sed "s|$d/tree|/mnt|" >"$d/tree/SHA256SUMS"
truncate -s 256M "$d/image.raw"
mkfs.ext4 -q -F -b 4096 -d "$d/tree" -L demo "$d/image.raw"
truncate -s 256M "$d/data.raw"
truncate -s 4M "$d/meta.raw"
truncate -s 64K "$d/tiny.raw"
truncate -s 1M "$d/scratch.raw"
echo "demo: booting a VM (QEMU, no KVM) that streams a 256 MiB ext4 image"
log=$d/demo.log
run_vm "$tag" "$initrd" "$log" "stream.suite=demo" -- \
	"$d/image.raw" "$d/data.raw" "$d/meta.raw" "$d/tiny.raw" "$d/scratch.raw"
grep -a "^DEMO" "$log" | tr -d '\r' | sed 's/^DEMO //'
grep -aq "^DEMO ok" "$log" || { echo "demo failed, see $log"; exit 1; }
