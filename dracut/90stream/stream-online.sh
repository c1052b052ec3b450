#!/bin/sh
# initqueue/online hook of the dracut "stream" module, sourced with the
# interface that came up as $1: set up the rd.stream= device once.

# shellcheck disable=SC1091 # in the initramfs
type getarg >/dev/null 2>&1 || . /lib/dracut-lib.sh

if [ -n "$(getarg rd.stream=)" ] && [ ! -e /run/dm-stream/done ]; then
	if ! /sbin/stream-start "$1"; then
		[ -e /run/dm-stream/done ] ||
			die "dm-stream: setting up $(getarg rd.stream=) failed (see above)"
	fi
fi
