#!/bin/bash
# dracut module "stream": a root (or any) device streamed from an NBD image
# server by dm-stream.  Opt-in: add_dracutmodules+=" stream " in a file of
# /etc/dracut.conf.d, or dracut -a stream.  Kernel command line:
# dm-stream.cmdline(7).
# shellcheck disable=SC2154 # moddir, hostonly: set by dracut

# called by dracut
check() {
	require_binaries streamd streamctl dmsetup sfdisk blkid nbdinfo || return 1
	# only when asked for: it brings the network into the initramfs
	return 255
}

# called by dracut
depends() {
	echo network dm
	return 0
}

# called by dracut
installkernel() {
	hostonly='' instmods dm-stream dm-mod
}

# called by dracut
install() {
	inst_multiple streamd streamctl dmsetup sfdisk blkid blockdev nbdinfo \
		cmp dd awk flock getent udevadm setsid wc tail sleep tr readlink \
		cat
	# the partitions of a whole-disk image, when kpartx is installed;
	# the host names of rd.stream.uri= from /etc/hosts too, not only DNS
	# (resolved once, before switch_root)
	inst_multiple -o kpartx /etc/hosts
	inst_hook cmdline 90 "$moddir/parse-stream.sh"
	inst_hook initqueue/online 90 "$moddir/stream-online.sh"
	inst_script "$moddir/stream-start.sh" /sbin/stream-start
	# before dm's own shutdown hook (25), which removes whatever is left
	inst_hook shutdown 20 "$moddir/stream-shutdown.sh"
	# TLS material named by rd.stream.tls.*: streamd copies what it uses
	# to /run before switch_root.
	if [ -d /etc/dm-stream/tls ]; then
		inst_dir /etc/dm-stream/tls
		for f in /etc/dm-stream/tls/*; do
			[ -f "$f" ] && inst_simple "$f"
		done
	fi
	dracut_need_initqueue
}
