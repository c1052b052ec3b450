# make bench: the tables, from the guest's console log (tests/guest/bench.sh).
#   BENCHRUN <metric> <run> <stream us> <reference us>
#   CLONE <metric> <us> run<i>      (dm-clone, tests/guest/bench-clone.sh)
#   BENCHMEM <geometry> <blocks> <kB>
#   BENCHNOTE <text>
# Medians are of per-run ratios (each run's pair was measured side by
# side); every run's ratio is printed too.

function median(list, n,    a, i, j, t) {
	split(list, a, " ")
	for (i = 1; i <= n; i++)
		for (j = i + 1; j <= n; j++)
			if (a[j] + 0 < a[i] + 0) {
				t = a[i]; a[i] = a[j]; a[j] = t
			}
	if (n % 2)
		return a[(n + 1) / 2]
	return (a[n / 2] + a[n / 2 + 1]) / 2
}

function minmax(list, n,    a, i, lo, hi) {
	split(list, a, " ")
	lo = hi = a[1]
	for (i = 2; i <= n; i++) {
		if (a[i] + 0 < lo + 0) lo = a[i]
		if (a[i] + 0 > hi + 0) hi = a[i]
	}
	return sprintf("%.2f-%.2f", lo, hi)
}

BEGIN {
	# the issue's targets (time ratios; lower is better)
	target["cold_seq1m_bs128"] = "<= 1.10 vs nbdcopy"
	target["cold_seq1m_bs8"] = "<= 1.10 vs nbdcopy"
	target["cold_rand4k_bs8"] = "<= 1.20 vs libnbd"
	target["fill_whole_bs128"] = "<= 1.10 vs nbdcopy"
	target["fill_whole_bs8"] = "<= 1.10 vs nbdcopy"
	target["fill_whole_bs128_vs_nbdcopy_to_disk"] = "<= 1.10"
	target["fill_whole_bs8_vs_nbdcopy_to_disk"] = "<= 1.10"
	target["second_rand4k_bs8_vs_linear"] = "<= 1.10"
	target["present_seq_read_vs_linear"] = "<= 1.02"
	target["present_rand_read_vs_linear"] = "<= 1.02"
	target["present_seq_write_vs_linear"] = "<= 1.02"
	target["present_rand_write_vs_linear"] = "<= 1.02"
	target["first_seq_write_present_clean_vs_linear"] = "<= 1.05"
}

{ sub(/\r$/, "") }

$1 == "BENCHRUN" && NF == 5 {
	m = $2
	if (!(m in n)) order[++nm] = m
	n[m]++
	r = ($5 > 0) ? $4 / $5 : 0
	ratios[m] = ratios[m] " " sprintf("%.2f", r)
	sa[m] = sa[m] " " $4
	sb[m] = sb[m] " " $5
}

$1 == "CLONE" && NF >= 3 {
	c = $2
	if (!(c in cn)) corder[++ncm] = c
	cn[c]++
	cl[c] = cl[c] " " $3
}

$1 == "BENCHMEM" { mem[++nmem] = $0 }
$1 == "BENCHNOTE" { sub(/^BENCHNOTE /, ""); notes[++nnotes] = $0 }

END {
	printf "%-42s %7s %11s %9s %9s  %-20s %s\n", "metric (stream / reference)",
	       "median", "range", "stream ms", "ref ms", "target", "runs"
	for (i = 1; i <= nm; i++) {
		m = order[i]
		printf "%-42s %7.2f %11s %9.1f %9.1f  %-20s%s\n", m,
		       median(ratios[m], n[m]), minmax(ratios[m], n[m]),
		       median(sa[m], n[m]) / 1000, median(sb[m], n[m]) / 1000,
		       (m in target) ? target[m] : "-", ratios[m]
	}
	for (i = 1; i <= nmem; i++) {
		split(mem[i], f, " ")
		printf "in-core memory, %s: %d blocks, %d kB: %.1f bits/block\n",
		       f[2], f[3], f[4], f[4] * 8192 / f[3]
	}
	if (ncm) {
		print ""
		# The two columns are timed minutes apart: the same nbdcopy of
		# the whole image to null:, timed beside each, scales out a
		# change of the load on the host in between.
		norm = 0
		if (("fill_whole_bs8" in n) && ("nbdcopy_whole" in cn)) {
			ns = median(sb["fill_whole_bs8"], n["fill_whole_bs8"])
			nc = median(cl["nbdcopy_whole"], cn["nbdcopy_whole"])
			if (ns > 0)
				norm = nc / ns
		}
		print "Side by side with dm-clone over nbd.ko (4 KiB blocks/regions, same image, server and VM; medians, ms)"
		if (norm)
			printf "(nbdcopy of the image to null: took %.1f ms beside dm-stream, %.1f ms beside dm-clone: ratio/load scales dm-stream by %.2f)\n", ns / 1000, nc / 1000, norm
		printf "%-26s %10s %10s %8s %10s\n", "", "dm-stream", "dm-clone", "ratio", "ratio/load"
		peer("cold random 4 KiB", "cold_rand4k_bs8", "cold_rand4k")
		peer("second pass, same blocks", "second_rand4k_bs8_vs_linear", "second_rand4k")
		peer("cold sequential 1 MiB", "cold_seq1m_bs8", "cold_seq1m")
		peer("fill, default hydration", "fill_whole_bs8", "hydrate_default")
		peer("fill, tuned hydration", "fill_whole_bs8", "hydrate_tuned")
		for (i = 1; i <= ncm; i++)
			printf "  dm-clone %s runs (ms):%s\n", corder[i], ms(cl[corder[i]])
	}
	for (i = 1; i <= nnotes; i++)
		print "note: " notes[i]
}

function ms(list,    a, k, s, out) {
	k = split(list, a, " ")
	out = ""
	for (s = 1; s <= k; s++)
		out = out sprintf(" %.1f", a[s] / 1000)
	return out
}

function peer(label, sm, cm,    x, y) {
	if (!(sm in n) || !(cm in cn)) {
		printf "%-26s %10s %10s %8s\n", label, (sm in n) ? "" : "-",
		       (cm in cn) ? "" : "-", "-"
		return
	}
	x = median(sa[sm], n[sm]) / 1000
	y = median(cl[cm], cn[cm]) / 1000
	printf "%-26s %10.1f %10.1f %8.2f", label, x, y, (y > 0) ? x / y : 0
	if (norm && y > 0)
		printf " %10.2f", x * norm / y
	printf "\n"
}
