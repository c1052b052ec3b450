#!/bin/bash
# Host-side unit tests of userspace/lib (cmocka): each test-*.c is built
# twice, plainly (-Werror) and under AddressSanitizer + UBSan, and run with
# TAP output.  Prints "PASS|FAIL unit:<variant>:<file>:<case>" lines; a
# test program whose plan ("1..N") is not met by N results, or that does
# not build or exits non-zero, is a FAIL.  Exit status: 0 if all passed.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=${STREAM_UNIT_DIR:-$top/build/unit}
mkdir -p "$out"
lib=$top/userspace/lib
srcs=()
for f in "$lib"/*.c; do
	case $(basename "$f") in test-*|fuzz-*|dm.c|tls.c) ;; *) srcs+=("$f") ;; esac
done
cflags=(-std=gnu11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Werror
	-Wno-unused-parameter -I"$lib" -I"$top/kernel")
fail=0
for t in "$lib"/test-*.c; do
	name=$(basename "$t" .c)
	for v in plain asan; do
		extra=()
		# shellcheck disable=SC2054 # one option: address,undefined
		[ $v = asan ] && extra=(-fsanitize=address,undefined
					-fno-sanitize-recover=all
					-fno-omit-frame-pointer)
		bin=$out/$name-$v
		# a test with the allocation-failure shim wraps these
		# shellcheck disable=SC2054 # one linker option
		grep -q '^#include "test-alloc-shim.h"' "$t" &&
			extra+=(-Wl,--wrap=malloc,--wrap=calloc)
		# a test that stands in for libdevmapper links dm.c
		dm=()
		grep -q "^struct dm_task \*dm_task_create" "$t" && dm=("$lib/dm.c")
		# ... and one of tls.c's links it (with libnbd)
		grep -q "su_tls_keep(" "$t" && dm+=("$lib/tls.c" -lnbd)
		if ! gcc "${cflags[@]}" "${extra[@]}" -o "$bin" "$t" "${srcs[@]}" \
			"${dm[@]}" -lcmocka 2>"$bin.build.log"; then
			cat "$bin.build.log" >&2
			echo "FAIL unit:$v:$name:build"
			fail=1
			continue
		fi
		CMOCKA_MESSAGE_OUTPUT=TAP "$bin" >"$bin.tap" 2>&1
		rc=$?
		plan=$(sed -n 's/^1\.\.\([0-9]*\)$/\1/p' "$bin.tap" | head -1)
		n=0
		while read -r line; do
			case $line in
			"ok "*) echo "PASS unit:$v:$name:${line#ok [0-9]* - }" ;;
			"not ok "*) echo "FAIL unit:$v:$name:${line#not ok [0-9]* - }"
				    fail=1 ;;
			*) continue ;;
			esac
			n=$((n + 1))
		done < <(grep -E "^(not )?ok [0-9]+ - " "$bin.tap")
		if [ -z "$plan" ] || [ "$n" != "$plan" ] || [ $rc != 0 ]; then
			echo "FAIL unit:$v:$name:complete plan=${plan:-none} results=$n exit=$rc (see $bin.tap)"
			fail=1
		fi
	done
done
exit $fail
