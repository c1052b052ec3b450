// SPDX-License-Identifier: GPL-2.0
/*
 * libFuzzer target for every parser of userspace/lib: the first byte
 * picks the parser, the rest (NUL-terminated) is its input.  Besides the
 * sanitizers, it checks what the parsers promise: a parsed range page
 * stays inside the device and moves the cursor, a status line's present
 * count never exceeds its total, a snapshot answer never has id 0.  Run by tests/fuzz.sh.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parse.h"
#include "status.h"

#define TOTAL	1000

struct seen {
	uint64_t end;
};

static int range_cb(void *ctx, uint64_t first, uint64_t count)
{
	struct seen *s = ctx;

	if (!count || first < s->end || first >= TOTAL || count > TOTAL - first)
		abort();
	s->end = first + count;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct su_status st;
	struct seen seen = { 0 };
	uint64_t v, off, len, next;
	unsigned int u;
	char *s;

	if (!size)
		return 0;
	s = malloc(size);
	if (!s)
		return 0;
	memcpy(s, data + 1, size - 1);
	s[size - 1] = '\0';
	switch (data[0] % 7) {
	case 0:
		/* what parses prints back as the same number */
		if (!su_parse_u64(s, &v)) {
			char buf[32];
			uint64_t w;

			snprintf(buf, sizeof(buf), "%llu", (unsigned long long)v);
			if (su_parse_u64(buf, &w) || w != v)
				abort();
		}
		break;
	case 1:
		su_parse_size(s, &v);
		break;
	case 2:
		if (!su_parse_uint(s, 4096, &u) && u > 4096)
			abort();
		break;
	case 3:
		su_parse_range_line(s, &off, &len);
		break;
	case 4:
		if (!su_parse_status(s, &st) && st.present > st.total)
			abort();
		break;
	case 5:
		if (!su_parse_range_page(s, 10, TOTAL, &next, range_cb, &seen) &&
		    (next > TOTAL || (next <= 10 && next != TOTAL)))
			abort();
		break;
	case 6:
		if (!su_parse_cut(s, &v, &next) && !v)
			abort();
		break;
	}
	free(s);
	return 0;
}
