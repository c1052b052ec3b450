#!/bin/sh
# cmdline hook of the dracut "stream" module: check rd.stream.* (grammar in
# dm-stream.cmdline(7)) and make the initqueue wait for the device.
# Setting up the device waits for the network (stream-online.sh).

# shellcheck disable=SC1091 # in the initramfs
type getarg >/dev/null 2>&1 || . /lib/dracut-lib.sh

stream_name=$(getarg rd.stream=)
if [ -n "$stream_name" ]; then
	case $stream_name in
	*[!A-Za-z0-9_.+-]* | -*)
		die "rd.stream=$stream_name: a device name is letters, digits and . _ + -"
		;;
	esac
	[ -n "$(getarg rd.stream.uri=)" ] ||
		die "rd.stream=$stream_name needs rd.stream.uri=<NBD URI>"
	if [ -n "$(getarg rd.stream.disk=)" ]; then
		[ -z "$(getarg rd.stream.meta=)$(getarg rd.stream.data=)" ] ||
			die "rd.stream.disk= excludes rd.stream.meta= and rd.stream.data="
	elif [ -z "$(getarg rd.stream.meta=)" ] || [ -z "$(getarg rd.stream.data=)" ]; then
		die "rd.stream=$stream_name needs rd.stream.disk= or both rd.stream.meta= and rd.stream.data="
	fi
	# the network is needed even when root= does not say so
	echo "rd.neednet=1" >/etc/cmdline.d/90stream-neednet.conf
	wait_for_dev -n "/dev/mapper/$stream_name"
fi
unset stream_name
