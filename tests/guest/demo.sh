# shellcheck shell=sh
# shellcheck disable=SC2086 # device paths and numbers never hold spaces
# make demo: stream an ext4 image, mount it, read files.
ms() { read -r _up _ </proc/uptime; _f=${_up#*.}; echo $(( ${_up%.*} * 1000 + ${_f#0} * 10 )); }
demo() {
	echo "DEMO image: $((SZ / 2048)) MiB ext4 served by nbdkit; local disk empty"
	fresh_meta_only
	nbdkit -U $SOCK -P /tmp/nbd.pid --filter=log file file=$IMG logfile=/tmp/nbd.log
	wait_for 10 test -S $SOCK
	create
	helper_start
	echo "DEMO table: $(dmsetup table s)"
	t0=$(ms)
	mount -t ext4 $DEV /mnt
	head -c 200 /mnt/docs/GPL-2 >/dev/null
	t1=$(ms)
	echo "DEMO mounted and read the first file in $((t1 - t0)) ms"
	echo "DEMO files:"
	find /mnt/docs /mnt/data -type f | sed 's/^/DEMO   /'
	sha256sum -c /mnt/SHA256SUMS | sed 's/^/DEMO   /'
	umount /mnt
	# shellcheck disable=SC2046 # split the status into words
	set -- $(dmsetup status s)
	kib=$(( ${5%/*} * BB / 1024 ))
	echo "DEMO present now: ${5%/*} of ${5#*/} blocks ($kib KiB of $((SZ / 2)) KiB), $(helper_stat bytes) bytes transferred, $(helper_stat zero) blocks answered as zero without transfer"
	echo "DEMO ok"
}
fresh_meta_only() {
	dd if=/dev/zero of=$META bs=64k count=16 conv=fsync 2>/dev/null
}
# 4 KiB blocks, the ext4 block size; read by create in lib.sh.
# shellcheck disable=SC2034
BS=8 BB=4096
( set -e; demo ) || echo "DEMO failed"
teardown
