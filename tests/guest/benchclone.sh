# shellcheck shell=sh
# shellcheck disable=SC2086 # numbers never hold spaces
# benchclone suite: the benchmark's dm-clone figures alone
# (tests/guest/bench-clone.sh), to try them without the whole benchmark.
# CLONE_RUNS=<n> on the kernel command line reaches this as an
# environment variable; CLONE_TRIAL=<threshold>:<batch>,... times one
# hydration for each pair instead (how CLONE_THRESHOLD and CLONE_BATCH
# were chosen).
# shellcheck source=bench-clone.sh
. /tests/bench-clone.sh

# The benchmark image has no zero region (read by prepare_image).
# shellcheck disable=SC2034
ZERO_FIRST=0 ZERO_END=0

if [ -n "${CLONE_TRIAL:-}" ]; then
	if clone_up && clone_fresh; then
		# What a status poll, a write-counter poll with its nap and a
		# timestamp cost (see clone_hydrate).
		_t0=$(clone_us)
		for _i in 1 2 3 4 5 6 7 8 9 10; do
			clone_hydrated || true
		done
		echo "BENCHNOTE dm-clone: a status poll takes $((($(clone_us) - _t0) / 10)) us"
		_t0=$(clone_us)
		for _i in 1 2 3 4 5 6 7 8 9 10; do
			clone_written
			clone_nap
		done
		echo "BENCHNOTE dm-clone: a write-counter poll and nap $CLONE_POLL take $((($(clone_us) - _t0) / 10)) us"
		_t0=$(clone_us)
		_t1=$(clone_us)
		echo "BENCHNOTE dm-clone: stream-io now: $((_t1 - _t0)) us between two"
		for _p in $(echo "$CLONE_TRIAL" | tr ',' ' '); do
			clone_hydrate "trial_${_p%:*}_${_p#*:}" 1 "${_p%:*}" "${_p#*:}" ||
				true
		done
	fi
	clone_down
else
	clone_bench
fi
