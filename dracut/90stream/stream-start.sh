#!/bin/sh
# /sbin/stream-start <interface>: set up the dm-stream device rd.stream=
# names, from the initramfs, once the network is up (dm-stream.cmdline(7)).
#
#  1. the metadata and data devices: rd.stream.meta= and rd.stream.data=,
#     or the two partitions of rd.stream.disk=, made on first boot on a
#     completely blank disk and found by their partition types later;
#  2. the table is loaded into a device named <name>-setup (uuid
#     dm-stream-<name>), streamd attaches to it by uuid and only then is
#     it resumed: udev's probe of the new device must find a helper;
#  3. rd.stream.revert=1: the device is reverted to its image while no
#     one can have opened it under its real name;
#  4. renamed to <name>: root=/dev/mapper/<name> appears, and with
#     kpartx in the initramfs the partitions of a whole-disk image as
#     /dev/mapper/<name>p<N>.
#
# streamd runs from the initramfs for the life of the system, marked as a
# root storage daemon (argv[0][0] = '@') so that systemd spares it at
# switch_root and shutdown, and logs to the kernel log.
#
# Exit 0 when the device is up (or another instance is setting it up),
# 1 with a message on the console otherwise: the caller calls dracut's die
# (the emergency shell with rd.shell, else the machine halts).  A later
# attempt removes what a failed one left.  Nothing on a disk that is not blank and not ours is
# ever written.

# shellcheck disable=SC1091 # in the initramfs
. /lib/dracut-lib.sh

# dm-stream's GPT partition types (also in dm-stream.cmdline(7))
META_TYPE=5a2b6c1e-3d7f-4c59-9e84-6d2f0b7a1c01
DATA_TYPE=5a2b6c1e-3d7f-4c59-9e84-6d2f0b7a1c02

RUN=/run/dm-stream

say() {
	echo "dm-stream: $*" >/dev/kmsg
	echo "dm-stream: $*" >/dev/console
}

fail() {
	say "$*"
	exit 1
}

# <number>: a decimal integer
is_uint() {
	case $1 in
	'' | *[!0-9]*) return 1 ;;
	esac
}

# The URI with the TLS settings in its query, for nbdinfo (streamd takes
# them as options).
tls_uri() {
	_u=$uri
	_q=
	[ -n "$tls_certs" ] && _q="tls-certificates=$tls_certs"
	[ -n "$tls_psk" ] && _q="${_q:+$_q&}tls-psk-file=$tls_psk"
	[ -n "$tls_user" ] && case $_u in
		nbds://*) _u="nbds://$tls_user@${_u#nbds://}" ;;
		nbds+unix://*) _u="nbds+unix://$tls_user@${_u#nbds+unix://}" ;;
		esac
	if [ -n "$_q" ]; then
		case $_u in
		*\?*) _u="$_u&$_q" ;;
		*) _u="$_u?$_q" ;;
		esac
	fi
	echo "$_u"
}

# After switch_root the initramfs' resolver files are gone: give streamd
# a numeric address.  Kept as a name with X.509, whose check needs it.
resolve_uri() {
	case $uri in
	nbd://* | nbds://*) ;;
	*) return 0 ;;
	esac
	[ -n "$tls_certs" ] && return 0
	_scheme=${uri%%://*}
	_rest=${uri#*://}
	_hostport=${_rest%%/*}
	_path=${_rest#"$_hostport"}
	_host=${_hostport%:*}
	_port=${_hostport#"$_host"}
	case $_host in
	'' | \[* | *[!0-9.]*) ;;
	*) return 0 ;;	# numeric already
	esac
	case $_host in
	\[*) return 0 ;;	# IPv6 literal
	esac
	_addr=$(getent ahostsv4 "$_host" | awk 'NR == 1 { print $1 }')
	if [ -z "$_addr" ]; then
		say "cannot resolve $_host now: keeping the name (reconnecting after switch_root will need it resolved)"
		return 0
	fi
	uri="$_scheme://$_addr$_port$_path"
}

# The image size, asked of the server; waits for it (with a message every
# 30 s): a machine with a blank disk has nothing else to do.
image_size() {
	_t=0
	while :; do
		if _s=$(nbdinfo --size "$(tls_uri)" 2>"$RUN/nbdinfo.err"); then
			is_uint "$_s" || fail "nbdinfo --size $uri: '$_s'"
			echo "$_s"
			return 0
		fi
		[ $((_t % 30)) = 0 ] &&
			say "waiting for the image server: $(tail -n 1 "$RUN/nbdinfo.err")"
		sleep 1
		_t=$((_t + 1))
	done
}

# Partition nodes of $disk: "<node> <type guid>" lines.
# (Node names may hold ':' and partition names ',' or "type=": split at
# " : ", take the first type= after it.)
disk_parts() {
	sfdisk -d "$disk" 2>/dev/null | awk '
		/^\// {
			i = index($0, " : ")
			if (!i)
				next
			node = substr($0, 1, i - 1)
			sub(/[ \t]+$/, "", node)
			rest = substr($0, i + 3)
			if (!match(rest, /type= *[0-9A-Fa-f-]+/))
				next
			t = substr(rest, RSTART, RLENGTH)
			sub(/type= */, "", t)
			print node, tolower(t)
		}'
}

# 1 MiB of zeros at byte offset $2 of $1?
zero_mib_at() {	# <dev> <byte offset> [<bytes>, default 1 MiB]
	dd if="$1" bs=1M iflag=skip_bytes,count_bytes skip="$2" \
		count="${3:-1048576}" 2>/dev/null |
		cmp -s -n "${3:-1048576}" - /dev/zero
}

# Does any signature blkid knows sit at one of the places a partition of
# an erased table would start?  (A table zapped by dd or sgdisk leaves the
# filesystems behind it.)
signature_inside() {	# <dev> <bytes>
	for _o in 32256 1048576 2097152 16777216 $(($2 / 2)); do
		[ "$_o" -lt "$2" ] || continue
		blkid -p -O "$_o" "$1" >/dev/null 2>&1
		[ $? = 2 ] || return 0
	done
	return 1
}

# Wait up to 60 s for a block device (its driver may still be probing).
wait_block() {	# wait_block <dev> <what, for the message>
	_t=0
	while [ ! -b "$1" ]; do
		[ $_t -ge 60 ] && fail "$2: no such block device"
		sleep 1
		_t=$((_t + 1))
	done
}

# Use the two dm-stream partitions of $disk, or make them on a blank disk.
prepare_disk() {
	wait_block "$disk" "rd.stream.disk=$disk"
	disk=$(readlink -f "$disk")
	_parts=$(disk_parts)
	blkid -p "$disk" >/dev/null 2>&1
	_probe=$?
	if [ -n "$_parts" ] || [ "$_probe" != 2 ]; then
		meta=$(echo "$_parts" | awk -v t="$META_TYPE" '$2 == t { print $1 }')
		data=$(echo "$_parts" | awk -v t="$DATA_TYPE" '$2 == t { print $1 }')
		if [ -z "$meta" ] || [ -z "$data" ] ||
		   [ "$(echo "$_parts" | wc -l)" != 2 ]; then
			fail "rd.stream.disk=$disk holds something else (not blank, not dm-stream's two partitions): it is left as it is"
		fi
		udevadm settle -t 30 2>/dev/null
		return 0
	fi
	_bytes=$(blockdev --getsize64 "$disk") || fail "blockdev $disk failed"
	_ss=$(blockdev --getss "$disk") || fail "blockdev $disk failed"
	_spm=$((1048576 / _ss))		# logical sectors a MiB
	# Blank means nothing a probe knows, at the start or where partitions
	# of an erased table would be, and zeros at both ends.
	if ! zero_mib_at "$disk" 0 ||
	   ! zero_mib_at "$disk" $((_bytes - 1048576)) ||
	   signature_inside "$disk" "$_bytes"; then
		fail "rd.stream.disk=$disk is not blank (data at its start or end, or a filesystem inside): it is left as it is"
	fi
	_img=$(image_size) || exit 1
	[ $((_img % bs)) = 0 ] ||
		fail "the image ($_img bytes) is not a multiple of rd.stream.block=$bs"
	# metadata for as many blocks as the whole disk has (a later, larger
	# image version fits): (16 + 9 * B + 130) * 4 KiB, B = bitmap blocks
	_nr=$((_bytes / bs))
	_b=$(((_nr + 32575) / 32576))
	_meta=$(((16 + 9 * _b + 130) * 4096))
	_meta_mib=$(((_meta + 1048575) / 1048576))
	_need=$(((2 + _meta_mib) * 1048576 + _img))
	[ "$_need" -le "$_bytes" ] ||
		fail "rd.stream.disk=$disk: $_bytes bytes, the image and its metadata need $_need"
	zero_mib_at "$disk" 1048576 $((_meta_mib * 1048576)) ||
		fail "rd.stream.disk=$disk: data where the metadata would go: it is left as it is"
	say "preparing blank disk $disk: metadata ${_meta_mib} MiB, data $_img bytes"
	# Zero the metadata first: until the partition table is written the
	# disk still reads as blank, so a power cut here starts over.
	dd if=/dev/zero of="$disk" bs=1M seek=1 count="$_meta_mib" \
		oflag=direct conv=fsync 2>/dev/null || fail "zeroing $disk failed"
	printf 'label: gpt\nstart=%s, size=%s, type=%s, name="dm-stream metadata"\nsize=%s, type=%s, name="dm-stream data"\n' \
		"$_spm" $((_meta_mib * _spm)) "$META_TYPE" $((_img / _ss)) "$DATA_TYPE" |
		sfdisk -q "$disk" >"$RUN/sfdisk.log" 2>&1 ||
		fail "sfdisk $disk failed: $(cat "$RUN/sfdisk.log")"
	udevadm settle -t 30 2>/dev/null
	_parts=$(disk_parts)
	meta=$(echo "$_parts" | awk -v t="$META_TYPE" '$2 == t { print $1 }')
	data=$(echo "$_parts" | awk -v t="$DATA_TYPE" '$2 == t { print $1 }')
	if [ -z "$meta" ] || [ -z "$data" ]; then
		fail "partitions of $disk not found after sfdisk"
	fi
}

# An image of a whole disk: its partitions as <name>p1, <name>p2...
# (device-mapper devices have no partition scanning of their own).  No
# partition table, no mapping (kpartx -a again maps nothing new); LVM and
# LUKS inside are found by their own dracut modules' udev rules.
map_partitions() {
	command -v kpartx >/dev/null || return 0
	kpartx -a -s -p p "/dev/mapper/$name" >"$RUN/kpartx.log" 2>&1 ||
		fail "kpartx -a /dev/mapper/$name failed: $(cat "$RUN/kpartx.log")"
	_p=$(kpartx -l -p p "/dev/mapper/$name" 2>/dev/null | wc -l)
	[ "$_p" = 0 ] || say "$name: $_p partitions mapped (${name}p1...)"
}

mkdir -p "$RUN"
exec 9>"$RUN/lock"
flock -n 9 || exit 0		# another interface's hook is at it
[ -e "$RUN/done" ] && exit 0

name=$(getarg rd.stream=)
uri=$(getarg rd.stream.uri=)
disk=$(getarg rd.stream.disk=)
meta=$(getarg rd.stream.meta=)
data=$(getarg rd.stream.data=)
bs=$(getarg rd.stream.block=)
fill=$(getarg rd.stream.fill=)
timeout=$(getarg rd.stream.timeout=)
tls_certs=$(getarg rd.stream.tls.certificates=)
tls_psk=$(getarg rd.stream.tls.psk=)
tls_user=$(getarg rd.stream.tls.username=)

: "${bs:=65536}"
if ! is_uint "$bs" || [ "$bs" -lt 4096 ] || [ "$bs" -gt 1048576 ] ||
   [ $((bs & (bs - 1))) != 0 ]; then
	fail "rd.stream.block=$bs: a power of two from 4096 to 1048576"
fi
if [ -n "$timeout" ]; then
	if ! is_uint "$timeout" || [ "$timeout" -gt 86400 ]; then
		fail "rd.stream.timeout=$timeout: seconds, 0-86400"
	fi
fi
set --
[ -n "$tls_certs" ] && set -- "$@" --tls-certificates "$tls_certs"
[ -n "$tls_psk" ] && set -- "$@" --tls-psk-file "$tls_psk"
[ -n "$tls_user" ] && set -- "$@" --tls-username "$tls_user"
case $fill in
off) ;;
'' | on) set -- "$@" --fill ;;
*) set -- "$@" --fill --fill-rate "$fill" ;;
esac
resolve_uri

modprobe dm-stream 2>/dev/null || modprobe dm_stream ||
	fail "cannot load the dm-stream module"

if [ -n "$disk" ]; then
	prepare_disk
	size=$(blockdev --getsize64 "$data") || fail "blockdev $data failed"
else
	wait_block "$meta" "rd.stream.meta=$meta"
	wait_block "$data" "rd.stream.data=$data"
	size=$(image_size) || exit 1
fi

table="0 $((size / 512)) stream $meta $data $((bs / 512))"
[ -n "$timeout" ] && table="$table 2 fetch_timeout $timeout"
setup="$name-setup"
uuid="dm-stream-$name"

# A device of ours already under its real name: set up by an earlier run.
if [ "$(dmsetup info -c --noheadings -o uuid "$name" 2>/dev/null)" = "$uuid" ]; then
	map_partitions		# (what an attempt that failed there left)
	: >"$RUN/done"
	exit 0
fi
# Leftovers of a failed attempt: its streamd, its half-made device.
if [ -s "$RUN/streamd.pid" ]; then
	kill "$(cat "$RUN/streamd.pid")" 2>/dev/null
	sleep 1
fi
if dmsetup info "$setup" >/dev/null 2>&1; then
	dmsetup remove --retry "$setup" ||
		fail "cannot remove the leftover $setup of an earlier attempt"
fi
dmsetup create "$setup" --uuid "$uuid" --notable ||
	fail "dmsetup create $setup failed"
dmsetup load "$setup" --table "$table" ||
	fail "the table was refused: $table (see the kernel log)"
# For the life of the system: '@' (-R), no controlling terminal, cwd /.
(
	cd / || exit 1
	exec setsid streamd -R -u "$@" "$uuid" "$uri" </dev/null >/dev/kmsg 2>&1 9>&-
) &
echo $! >"$RUN/streamd.pid"
# Every miss of the root waits on it: the OOM killer must not pick it.
echo -1000 >"/proc/$(cat "$RUN/streamd.pid")/oom_score_adj" 2>/dev/null
# Attached to the loaded table before anything can read the device.
_t=0
until dmsetup status --inactive "$setup" 2>/dev/null |
	awk '$8 == "attached" { ok = 1 } END { exit !ok }'; do
	kill -0 "$(cat "$RUN/streamd.pid")" 2>/dev/null ||
		fail "streamd exited (see the kernel log)"
	[ $_t -ge 300 ] && fail "streamd did not attach to $setup"
	sleep 0.1
	_t=$((_t + 1))
done
dmsetup resume "$setup" || fail "dmsetup resume $setup failed"

if getargbool 0 rd.stream.revert; then
	udevadm settle -t 30 2>/dev/null
	_t=0
	until _out=$(streamctl revert "$setup" 2>&1); do
		[ $_t -ge 10 ] && fail "kiosk revert of $name failed: $_out"
		sleep 0.5
		udevadm settle -t 30 2>/dev/null
		_t=$((_t + 1))
	done
	say "kiosk revert: $_out"
fi

dmsetup rename "$setup" "$name" || fail "dmsetup rename $setup $name failed"
map_partitions
# dracut-shutdown.service restores the initramfs at shutdown, where
# stream-shutdown.sh removes the device once the root is unmounted.
need_shutdown
: >"$RUN/done"
say "$name: streaming $uri into $data (metadata $meta)"
exit 0
