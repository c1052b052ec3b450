#!/bin/sh
# shutdown hook of the dracut "stream" module, run in the initramfs that
# dracut-shutdown.service restored once systemd has unmounted what it could
# and dracut's shutdown has unmounted /oldroot: remove the device, then
# stop its streamd (which systemd spared, argv[0][0] = '@').  Returning
# non-zero asks dracut to call again; "final" is the last call.

# shellcheck disable=SC1091 # in the initramfs
type getarg >/dev/null 2>&1 || . /lib/dracut-lib.sh

# Names of the dm devices stacked on major:minor $1 (kpartx's partitions,
# LVM volumes on those, a LUKS mapping...), the topmost first.
stacked_on() {
	{
		dmsetup info -c --noheadings -o name,major,minor --separator ' '
		echo --
		dmsetup table
	} 2>/dev/null | awk -v root="$1" '
		$0 == "--" { tables = 1; next }
		!tables { mm[$1] = $2 ":" $3; next }
		{
			name = $1
			sub(/:$/, "", name)
			t[name] = t[name] " " $0 " "
		}
		END {
			s[root] = 1
			n = 0
			do {
				added = 0
				for (d in t) {
					if (d in seen)
						continue
					for (m in s)
						if (index(t[d], " " m " ")) {
							seen[d] = 1
							order[++n] = d
							s[mm[d]] = 1
							added = 1
							break
						}
				}
			} while (added)
			for (i = n; i >= 1; i--)
				print order[i]
		}'
}

oldroot_mounted() {
	while read -r _ _mp _; do
		[ "$_mp" = /oldroot ] && return 0
	done </proc/mounts
	return 1
}

_name=$(getarg rd.stream=)
if [ -n "$_name" ]; then
	_pids=""
	# streamd -R: its argv[0] starts with '@' ("@treamd")
	for _p in /proc/[0-9]*; do
		case $(readlink "$_p/exe" 2>/dev/null) in
		*/streamd | */streamd" (deleted)") ;;
		*) continue ;;
		esac
		_c=$(tr '\000' ' ' <"$_p/cmdline" 2>/dev/null)
		case $_c in @*) _pids="$_pids ${_p#/proc/}" ;; esac
	done
	if dmsetup info "$_name" >/dev/null 2>&1; then
		# What is stacked on it first, top down: the partitions
		# kpartx mapped, LVM volumes or LUKS mappings on those.
		_mm=$(dmsetup info -c --noheadings -o major,minor "$_name" 2>/dev/null)
		for _dev in $(stacked_on "$_mm"); do
			dmsetup remove --noudevsync --retry "$_dev" >/dev/null 2>&1
		done
		[ -n "$_pids" ] ||
			echo "dm-stream: streamd was gone before $_name was released" >/dev/console
		# no udev here: --noudevsync, or dmsetup waits for it forever
		if ! dmsetup remove --noudevsync "$_name" >/dev/null 2>&1 &&
		   ! oldroot_mounted && [ -n "$_pids" ]; then
			# The root is gone: what still holds the device is
			# streamd itself (its fill), which has nothing left
			# to serve.
			# shellcheck disable=SC2086 # a list of pids
			kill $_pids 2>/dev/null
			_pids=""
			sleep 1
		fi
		if dmsetup info "$_name" >/dev/null 2>&1 &&
		   ! dmsetup remove --noudevsync --retry "$_name" >/dev/null 2>&1; then
			if [ "$1" != final ]; then
				sleep 0.5
				return 1
			fi
			echo "dm-stream: $_name is still in use at shutdown" >/dev/console
		else
			echo "dm-stream: $_name removed at shutdown" >/dev/console
		fi
	fi
	# shellcheck disable=SC2086 # a list of pids
	[ -n "$_pids" ] && kill $_pids 2>/dev/null
fi
return 0
