#!/bin/bash
# Host-side helpers for dm-stream's VM tests: per-kernel module builds,
# initramfs images and QEMU runs.  Sourced by tests/run-all.sh, tests/bench.sh
# and scripts/demo.sh.
# shellcheck disable=SC2034

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${STREAM_CACHE:-$HOME/.cache/dm-stream}
WORK=${STREAM_WORK:-$TOP/build}
mkdir -p "$WORK"

die() { echo "error: $*" >&2; exit 1; }

# Kernel tags: 6.1 and 6.12 (Debian's stock kernels), debug (KUnit/KASAN).
kernel_kver() {
	case $1 in
	debug) make -s -C "$(debug_kdir)" kernelrelease ;;
	*) cat "$CACHE/kernel-$1/kver" ;;
	esac
}

# STREAM_DEBUG_KDIR: use that debug kernel tree as it is (no build, no
# cache check), e.g. while scripts/build-debug-kernel.sh is still busy
# with the modules after bzImage is done.
debug_kdir() {
	if [ -n "${STREAM_DEBUG_KDIR:-}" ]; then
		echo "$STREAM_DEBUG_KDIR"
	else
		"$TOP/scripts/build-debug-kernel.sh"
	fi
}

kernel_kdir() {
	case $1 in
	debug) debug_kdir ;;
	*) echo "/usr/src/linux-headers-$(kernel_kver "$1")" ;;
	esac
}

kernel_image() {
	case $1 in
	debug) echo "$(debug_kdir)/arch/x86/boot/bzImage" ;;
	*) echo "$CACHE/kernel-$1/root/boot/vmlinuz-$(kernel_kver "$1")" ;;
	esac
}

# TLS material for the helper suite, made fresh for each initramfs with
# openssl: a PSK file and a wrong one; a CA, a server and a client
# certificate (SAN localhost, 127.0.0.1), and a client directory trusting
# another CA.
make_tls_assets() {	# make_tls_assets <dir>
	local d=$1 s x
	rm -rf "$d"
	mkdir -p "$d"/{server,client,untrusted,ca,other}
	(
		set -e
		cd "$d"
		echo "alice:$(openssl rand -hex 32)" >psk.keys
		echo "alice:$(openssl rand -hex 32)" >wrong.keys
		for x in ca other; do
			openssl req -x509 -newkey rsa:2048 -nodes -days 3650 \
				-keyout $x/ca-key.pem -out $x/ca-cert.pem \
				-subj "/CN=dm-stream test $x" \
				-addext "basicConstraints=critical,CA:TRUE" \
				-addext "keyUsage=critical,keyCertSign,cRLSign"
		done
		for x in server client; do
			s=serverAuth
			[ $x = client ] && s=clientAuth
			openssl req -newkey rsa:2048 -nodes -keyout $x/$x-key.pem \
				-out $x/$x.csr -subj "/CN=localhost"
			printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" \
				"extendedKeyUsage=$s" \
				"keyUsage=critical,digitalSignature,keyEncipherment" \
				>$x/ext
			openssl x509 -req -in $x/$x.csr -CA ca/ca-cert.pem \
				-CAkey ca/ca-key.pem -CAcreateserial -days 3650 \
				-extfile $x/ext -out $x/$x-cert.pem
			cp ca/ca-cert.pem $x/
			rm -f $x/$x.csr $x/ext
		done
		# Without dh-params.pem qemu-nbd generates 2048-bit DH
		# parameters at start-up: 0.25 s here, seconds under TCG.
		openssl genpkey -genparam -algorithm DH \
			-pkeyopt group:ffdhe2048 -out server/dh-params.pem
		cp client/client-cert.pem client/client-key.pem untrusted/
		cp other/ca-cert.pem untrusted/
	) >"$d.log" 2>&1 || die "making TLS test material failed (see $d.log)"
}

# Build dm-stream.ko for kernel $1 in its own directory; prints the path.
build_module() {
	local tag=$1 dir=$WORK/mod-$1 kdir
	kdir=$(kernel_kdir "$tag")
	# Sources only: objects of an in-tree "make" are for another kernel.
	rm -rf "$dir/kernel"
	mkdir -p "$dir/kernel/uapi"
	cp "$TOP"/kernel/*.[ch] "$dir/kernel/"
	cp "$TOP"/kernel/uapi/*.h "$dir/kernel/uapi/"
	cp "$TOP/Kbuild" "$dir/"
	make -s -C "$kdir" M="$dir" modules >"$dir/build.log" 2>&1 ||
		{ cat "$dir/build.log" >&2; die "module build for $tag failed"; }
	if grep -E "warning:|error:" "$dir/build.log" >&2; then
		die "module build for $tag has warnings"
	fi
	# The test-only module beside it (tests/kmod), never installed.
	rm -rf "$dir/kmod"
	mkdir -p "$dir/kmod"
	cp "$TOP"/tests/kmod/*.c "$TOP/tests/kmod/Kbuild" "$dir/kmod/"
	make -s -C "$kdir" M="$dir/kmod" modules >"$dir/kmod/build.log" 2>&1 ||
		{ cat "$dir/kmod/build.log" >&2; die "test module build for $tag failed"; }
	if grep -E "warning:|error:" "$dir/kmod/build.log" >&2; then
		die "test module build for $tag has warnings"
	fi
	echo "$dir/dm-stream.ko"
}

build_tools() {
	make -s -C "$TOP" WERROR=1 programs >&2 || die "building programs failed"
	mkdir -p "$WORK/tools"
	gcc -O2 -Wall -D_GNU_SOURCE -o "$WORK/tools/stream-io" \
		"$TOP/tests/tools/stream-io.c" -lpthread -lnbd || die "stream-io"
	gcc -O2 -Wall -o "$WORK/tools/stream-meta" \
		"$TOP/tests/tools/stream-meta.c" || die "stream-meta"
	gcc -O2 -Wall -I"$TOP/kernel" -o "$WORK/tools/stream-chan" \
		"$TOP/tests/tools/stream-chan.c" || die "stream-chan"
	gcc -O2 -Wall -I"$TOP/kernel" -o "$WORK/tools/stream-pin" \
		"$TOP/tests/tools/stream-pin.c" -lpthread || die "stream-pin"
	gcc -O2 -Wall -Wextra -Wno-unused-parameter -D_GNU_SOURCE \
		-o "$WORK/tools/stream-replay" \
		"$TOP/tests/tools/stream-replay.c" || die "stream-replay"
}

# Copy a binary and the shared libraries it needs into root $1.
copy_bin() {
	local root=$1 bin=$2 dest=${3:-/bin} lib
	install -D -m 0755 "$bin" "$root$dest/$(basename "$bin")"
	for lib in $(ldd "$bin" 2>/dev/null | awk '/=>/ {print $3} /^\t\// {print $1}'); do
		[ -e "$root$lib" ] || install -D -m 0755 "$lib" "$root$lib"
	done
}

copy_lib() {
	local root=$1 so=$2 lib
	install -D -m 0755 "$so" "$root$so"
	for lib in $(ldd "$so" 2>/dev/null | awk '/=>/ {print $3}'); do
		[ -e "$root$lib" ] || install -D -m 0755 "$lib" "$root$lib"
	done
}

# dm-clone for the benchmark's comparison (STREAM_BENCH_CLONE=1), built
# for stock kernel $1 out of tree: Debian does not build it
# (CONFIG_DM_CLONE is off), so its sources and the private headers they
# include are taken from Debian's linux-source-6.12 tarball into $WORK,
# never into the tree, and built against the headers build_module uses.
# It needs dm-persistent-data and dm-bufio, which Debian builds as
# modules.  Cached by source package version and kernel version; prints
# the path of dm-clone.ko.
build_dm_clone() {
	local tag=$1 kver kdir pv tarball="" t dir out
	[ "$tag" != debug ] ||
		die "dm-clone is built for the stock kernels only (the debug kernel has no dm-persistent-data)"
	kver=$(kernel_kver "$tag")
	kdir=$(kernel_kdir "$tag")
	pv=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null) ||
		die "linux-source-6.12 missing (run scripts/setup.sh)"
	out=$CACHE/dm-clone/$pv-$kver
	if [ -e "$out/dm-clone.ko" ]; then
		echo "$out/dm-clone.ko"
		return 0
	fi
	for t in /usr/src/linux-source-6.12.tar.*; do
		[ -e "$t" ] && tarball=$t
	done
	[ -n "$tarball" ] || die "linux-source-6.12 missing (run scripts/setup.sh)"
	dir=$WORK/dm-clone-$tag
	rm -rf "$dir"
	mkdir -p "$dir"
	# dm-clone-target.c includes dm.h (and dm.h dm-stats.h); the
	# metadata code includes persistent-data's headers.
	tar -xf "$tarball" -C "$dir" --strip-components=3 --wildcards \
		--no-wildcards-match-slash \
		linux-source-6.12/drivers/md/dm-clone-target.c \
		linux-source-6.12/drivers/md/dm-clone-metadata.c \
		linux-source-6.12/drivers/md/dm-clone-metadata.h \
		linux-source-6.12/drivers/md/dm.h \
		linux-source-6.12/drivers/md/dm-stats.h \
		'linux-source-6.12/drivers/md/persistent-data/*.h' ||
		die "extracting dm-clone from $tarball failed"
	printf '%s\n' "obj-m := dm-clone.o" \
		"dm-clone-y := dm-clone-target.o dm-clone-metadata.o" >"$dir/Kbuild"
	make -s -C "$kdir" M="$dir" modules >"$dir/build.log" 2>&1 ||
		{ cat "$dir/build.log" >&2; die "dm-clone build for $tag failed"; }
	if grep -E "warning:|error:" "$dir/build.log" >&2; then
		die "dm-clone build for $tag has warnings"
	fi
	mkdir -p "$out"
	# Without its debug information: 100 KiB in the initramfs, not 900.
	strip --strip-debug -o "$out/dm-clone.ko.tmp" "$dir/dm-clone.ko"
	mv "$out/dm-clone.ko.tmp" "$out/dm-clone.ko"
	echo "$out/dm-clone.ko"
}

# Modules the guest loads, in order, for a stock kernel.  crc32c_generic
# first: busybox ignores the soft dependency libcrc32c has on it.
# dm-log-writes records the replay suite's workload (built into the debug
# kernel).
GUEST_MODULES="crc32c_generic libcrc32c virtio_pci virtio_blk dm-mod dm-bufio
dm-flakey dm-delay dm-log-writes loop ext4 sch_netem"
# And for dm-clone (STREAM_BENCH_CLONE=1): its dependency, and the kernel's
# NBD client for its source device.
CLONE_MODULES="dm-persistent-data nbd"

# Build the initramfs for kernel $1 with module $2; prints its path.
# STREAM_BENCH_CLONE=1 (make bench, stock kernels): with dm-clone, the
# modules it needs and nbd-client (tests/guest/bench-clone.sh).
build_initramfs() {
	local tag=$1 ko=$2 root=$WORK/initramfs-$1 kver mroot m f clone_ko="" mods=$GUEST_MODULES
	kver=$(kernel_kver "$tag")
	if [ "${STREAM_BENCH_CLONE:-0}" = 1 ]; then
		clone_ko=$(build_dm_clone "$tag") || exit 1
		command -v nbd-client >/dev/null ||
			die "nbd-client missing (run scripts/setup.sh)"
		mods="$mods $CLONE_MODULES"
	fi
	rm -rf "$root"
	mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,mnt,lib/modules,tests}
	cp /bin/busybox "$root/bin/busybox"
	copy_bin "$root" "$(command -v dmsetup)" /sbin
	copy_bin "$root" "$TOP/userspace/streamd" /sbin
	copy_bin "$root" "$TOP/userspace/streamctl" /sbin
	copy_bin "$root" "$WORK/tools/stream-io"
	copy_bin "$root" "$WORK/tools/stream-meta"
	copy_bin "$root" "$WORK/tools/stream-chan"
	copy_bin "$root" "$WORK/tools/stream-pin"
	copy_bin "$root" "$WORK/tools/stream-replay"
	copy_bin "$root" "$(command -v nbdkit)"
	copy_bin "$root" "$(command -v qemu-nbd)"
	copy_bin "$root" "$(command -v nbdcopy)"
	copy_bin "$root" "$(command -v qemu-img)"
	copy_bin "$root" "$(command -v qemu-io)"
	copy_bin "$root" "$(command -v mke2fs)" /opt/bin
	# The fio suite's oracle (Debian's fio; its libraries come along).
	copy_bin "$root" "$(command -v fio)"
	# streamctl --json is checked with a real parser.
	copy_bin "$root" "$(command -v jq)"
	# tc netem: the helper suite's network drop.
	copy_bin "$root" "$(command -v tc)" /opt/bin
	for f in /usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-file-plugin.so \
		 /usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-log-filter.so \
		 /usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-delay-filter.so; do
		copy_lib "$root" "$f"
	done
	: >"$root/etc/modules.load"
	if [ "$tag" != debug ]; then
		mroot=$CACHE/kernel-$tag/root
		for m in $mods; do
			modprobe -d "$mroot" -S "$kver" --show-depends "$m" |
				awk '$1 == "insmod" {print $2}'
		done | awk '!seen[$0]++' | while read -r f; do
			# at /lib/modules/...: the guest mounts a tmpfs on
			# /tmp, which would hide a cache under /tmp
			install -D -m 0644 "$f" "$root${f#"$mroot"}"
			echo "${f#"$mroot"}" >>"$root/etc/modules.load"
		done
	fi
	if [ -n "$clone_ko" ]; then
		install -m 0644 "$clone_ko" "$root/lib/modules/dm-clone.ko"
		echo /lib/modules/dm-clone.ko >>"$root/etc/modules.load"
		# /sbin: busybox's nbd-client applet (TCP only) is in /bin.
		copy_bin "$root" "$(command -v nbd-client)" /sbin
	fi
	# make profile (tests/profile.sh): perf, for cpu-clock sampling.
	if [ "${STREAM_PROFILE:-0}" = 1 ]; then
		copy_bin "$root" "$(command -v perf)"
	fi
	install -m 0644 "$ko" "$root/lib/modules/dm-stream.ko"
	# KUnit kernels: the test cases are a module of their own.
	if [ -e "$(dirname "$ko")/dm-stream-test.ko" ]; then
		install -m 0644 "$(dirname "$ko")/dm-stream-test.ko" \
			"$root/lib/modules/dm-stream-test.ko"
	fi
	install -m 0644 "$(dirname "$ko")/kmod/stream-delay.ko" \
		"$root/lib/modules/stream-delay.ko"
	cp "$TOP"/tests/guest/*.sh "$root/tests/"
	make_tls_assets "$root/tests/tls"
	install -m 0755 "$TOP/tests/guest/init" "$root/init"
	(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) \
		>"$WORK/initramfs-$tag.cpio.gz"
	echo "$WORK/initramfs-$tag.cpio.gz"
}

stop_watchdog() {	# safe under set -e: it may already be gone
	pkill -P "$1" sleep 2>/dev/null || true
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# Under TCG on a loaded 2-core host, early boot (ACPI link probing) of the
# debug kernel once kept RCU's grace-period kthread off the CPU for over
# the default 21 s, and PROVE_RCU's gp-start check warned before any
# dm-stream code was loaded.  Emulated time is not real time: allow 300 s
# (the maximum) before RCU calls a stall.
RCU_TCG="rcupdate.rcu_cpu_stall_timeout=300"

# run_vm <tag> <initrd> <log> <cmdline extra> [--kill-on MARKER] -- disks...
# Disks are raw files attached as virtio disks in order (vda, vdb, ...);
# the first one is read-only.  Returns QEMU's exit status (or 137 when
# killed on the marker).
#
# A boot whose kernel never reaches /init (no STREAMTEST-INIT) within
# STREAM_BOOT_TIMEOUT seconds (400) is killed and booted once more: under
# TCG the debug kernel has been seen to hang in PCI enumeration, before
# any dm-stream code ran.  So is one whose kernel complains before /init
# (kernel_log_bad): the debug kernel has twice reported a KASAN
# wild-memory-access in handle_edge_irq during identify_cpu, 1.4 s into
# start_kernel; a report taints the kernel, which turns lockdep off, and
# KASAN reports only its first, so the tests would run without either.
# Nothing has touched the disks before /init.  The log is kept as
# <log>.hung and the retry is said on stderr, so it shows in the run's
# output.
run_vm() {
	local tag=$1 initrd=$2 log=$3 extra=$4 kill_on="" args=() i=0 d try rc why t0
	shift 4
	if [ "${1:-}" = --kill-on ]; then kill_on=$2; shift 2; fi
	[ "${1:-}" = -- ] && shift
	for d in "$@"; do
		if [ $i = 0 ]; then
			args+=(-drive "file=$d,format=raw,if=virtio,readonly=on,cache=none,aio=threads")
		else
			args+=(-drive "file=$d,format=raw,if=virtio,cache=none,aio=threads")
		fi
		i=$((i + 1))
	done
	t0=$(date +%s)
	for try in 1 2; do
		run_vm_once "$tag" "$initrd" "$log" "$extra" "$kill_on" "${args[@]}"
		rc=$?
		case $rc in
		200) why="hung before /init" ;;
		201) why="the kernel panicked before /init, before anything of ours ran" ;;
		202) why="a kernel complaint before /init, before anything of ours ran: $(kernel_log_bad "$log" | head -n 1 | tr -d '\r')" ;;
		*)	# host seconds of the boot, next to the tests' own
			echo "boot $(basename "$log" .log) $(($(date +%s) - t0))" \
				>>"$(dirname "$log")/times"
			return $rc ;;
		esac
		mv "$log" "$log.hung"
		echo "run_vm: [$tag] boot $try: $why (log $log.hung)" >&2
		[ $try = 1 ] && echo "run_vm: [$tag] booting again" >&2
	done
	return 1
}

# One QEMU run; returns its status, 137 when killed on the marker, 124
# when the watchdog killed it, 200 when the kernel did not reach /init in
# time, 201 when it panicked before /init (seen under TCG: an int3 oops
# while the 6.12 kernel patches its own text at boot), 202 when it
# complained before /init (see run_vm).
run_vm_once() {
	local tag=$1 initrd=$2 log=$3 extra=$4 kill_on=$5 pid dog t0 begun=0
	shift 5
	: >"$log"
	# CPUs: two for the debug kernel, whose lockdep and KASAN profit
	# most from real parallelism, and for the regress suite's races
	# (run-all.sh); one otherwise.  The host has two cores for two
	# guests at a time, and a two-CPU guest on an oversubscribed host
	# spins on locks whose holder's thread is not running: 6.12's main
	# suite took 360 s with one CPU, 510 s with two, side by side.
	# STREAM_VM_SMP overrides.
	local smp=1
	[ "$tag" = debug ] && smp=2
	qemu-system-x86_64 -accel tcg -cpu max -m "${STREAM_VM_MEM:-1024}" -smp "${STREAM_VM_SMP:-$smp}" \
		-nographic -no-reboot -serial "file:$log" -monitor none \
		-nic none -kernel "$(kernel_image "$tag")" -initrd "$initrd" \
		-append "console=ttyS0 panic=-1 oops=panic loglevel=5 log_buf_len=4M $RCU_TCG $extra" \
		"$@" </dev/null >/dev/null 2>&1 &
	pid=$!
	# A hung guest must not hang the suite.
	# Its fds go to /dev/null: a pipe reader (CI, "| tail") must not wait
	# for the watchdog's sleep.
	(sleep "${STREAM_VM_TIMEOUT:-1500}"; kill -9 $pid) >/dev/null 2>&1 &
	dog=$!
	t0=$(date +%s)
	while kill -0 $pid 2>/dev/null; do
		if [ -n "$kill_on" ] && grep -q "$kill_on" "$log"; then
			kill -9 $pid
			wait $pid 2>/dev/null
			stop_watchdog $dog
			return 137
		fi
		if [ $begun = 0 ]; then
			if grep -aq "^STREAMTEST-INIT" "$log"; then
				begun=1
			elif kernel_log_bad "$log" >/dev/null; then
				kill -9 $pid
				wait $pid 2>/dev/null
				stop_watchdog $dog
				return 202
			elif [ $(($(date +%s) - t0)) -gt "${STREAM_BOOT_TIMEOUT:-400}" ]; then
				kill -9 $pid
				wait $pid 2>/dev/null
				stop_watchdog $dog
				return 200
			fi
		fi
		sleep 0.5
	done
	wait $pid
	local rc=$?
	# The watchdog fired (it exits once it has killed): a hang, not a
	# kill on the marker.
	kill -0 $dog 2>/dev/null || rc=124
	stop_watchdog $dog
	if ! grep -aq "^STREAMTEST-INIT" "$log" && grep -aq "Kernel panic" "$log"; then
		return 201
	fi
	return $rc
}

# Kernel complaints that fail a run whatever the tests said.
kernel_log_bad() {
	grep -aE "BUG:|WARNING:|KASAN:|Oops|general protection|Kernel panic|UBSAN:|suspicious RCU usage|DEBUG_LOCKS_WARN_ON|INFO: task .* blocked" "$1"
}
