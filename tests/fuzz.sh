#!/bin/bash
# libFuzzer targets of userspace/lib (userspace/lib/fuzz-*.c), built with
# clang under ASan and UBSan and run for STREAM_FUZZ_SECONDS (60) each from
# the seed corpus in tests/fuzz/<target>/ (copied: the run's finds stay in
# the work directory).  Prints "PASS|FAIL fuzz:<target> <why>" and a
# "MEASURED" line with the executions; exit status 0 if all passed.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=${STREAM_FUZZ_DIR:-$top/build/fuzz}
secs=${STREAM_FUZZ_SECONDS:-60}
lib=$top/userspace/lib
mkdir -p "$out"
srcs=()
for f in "$lib"/*.c; do
	case $(basename "$f") in test-*|fuzz-*|dm.c|tls.c) ;; *) srcs+=("$f") ;; esac
done
fail=0
for t in "$lib"/fuzz-*.c; do
	name=$(basename "$t" .c)
	name=${name#fuzz-}
	bin=$out/fuzz-$name
	if ! clang -g -O1 -fsanitize=fuzzer,address,undefined \
		-fno-sanitize-recover=all -I"$lib" -o "$bin" "$t" "${srcs[@]}" \
		2>"$bin.build.log"; then
		cat "$bin.build.log" >&2
		echo "FAIL fuzz:$name does not build"
		fail=1
		continue
	fi
	rm -rf "$out/corpus-$name" "$out/crash-$name"
	mkdir -p "$out/corpus-$name" "$out/crash-$name"
	cp "$top/tests/fuzz/$name"/* "$out/corpus-$name/" 2>/dev/null
	"$bin" -max_total_time="$secs" -artifact_prefix="$out/crash-$name/" \
		"$out/corpus-$name" >"$out/$name.log" 2>&1
	rc=$?
	runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$out/$name.log")
	if [ $rc = 0 ] && [ -n "$runs" ] && [ "$runs" -gt 0 ]; then
		echo "PASS fuzz:$name"
		echo "MEASURED fuzz:$name: $runs executions in $secs s"
	else
		echo "FAIL fuzz:$name exit $rc, ${runs:-no} runs (see $out/$name.log, $out/crash-$name)"
		fail=1
	fi
done
exit $fail
