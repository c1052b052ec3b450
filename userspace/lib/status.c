// SPDX-License-Identifier: GPL-2.0
/* Parsers of the target's answers: see status.h. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "parse.h"
#include "status.h"

/* Cursor over a line of blank-separated words. */
struct words {
	const char *p;
};

/* The next word, into @buf (NUL-terminated); -EPROTO if none or too long. */
static int next_word(struct words *w, char *buf, size_t len)
{
	size_t n;

	while (*w->p == ' ')
		w->p++;
	n = strcspn(w->p, " ");
	if (!n || n >= len)
		return -EPROTO;
	memcpy(buf, w->p, n);
	buf[n] = '\0';
	w->p += n;
	return 0;
}

static int next_u64(struct words *w, uint64_t *v)
{
	char buf[32];

	if (next_word(w, buf, sizeof(buf)) || su_parse_u64(buf, v))
		return -EPROTO;
	return 0;
}

/* "<a><sep><b>..." with @n numbers */
static int split_u64(const char *word, char sep, uint64_t *v, int n)
{
	const char *p = word, *end;
	int i;

	for (i = 0; i < n; i++) {
		if (su_parse_u64_prefix(p, &end, &v[i]))
			return -EPROTO;
		if (i + 1 < n) {
			if (*end != sep)
				return -EPROTO;
			p = end + 1;
		} else if (*end) {
			return -EPROTO;
		}
	}
	return 0;
}

int su_parse_status(const char *params, struct su_status *st)
{
	struct words w = { params };
	char buf[80];
	uint64_t v[3];
	int i;

	if (!params)
		return -EPROTO;
	memset(st, 0, sizeof(*st));
	if (next_word(&w, buf, sizeof(buf)) ||
	    su_parse_uint(buf, 1U << 16, &st->block_sectors) ||
	    !st->block_sectors)
		return -EPROTO;
	if (next_word(&w, buf, sizeof(buf)) || split_u64(buf, '/', v, 2) ||
	    v[0] > v[1])
		return -EPROTO;
	st->present = v[0];
	st->total = v[1];
	if (next_u64(&w, &st->dirty) || next_u64(&w, &st->parked))
		return -EPROTO;
	if (next_word(&w, buf, sizeof(buf)))
		return -EPROTO;
	if (!strcmp(buf, "attached"))
		st->attached = true;
	else if (strcmp(buf, "detached"))
		return -EPROTO;
	if (next_word(&w, st->mode, sizeof(st->mode)) ||
	    (strcmp(st->mode, "rw") && strcmp(st->mode, "ro") &&
	     strcmp(st->mode, "fail")))
		return -EPROTO;
	if (next_u64(&w, &st->fetched) || next_u64(&w, &st->zero) ||
	    next_u64(&w, &st->errors) || next_u64(&w, &st->generation))
		return -EPROTO;
	if (next_word(&w, buf, sizeof(buf)))
		return -EPROTO;
	if (!strcmp(buf, "on"))
		st->fill_on = true;
	else if (strcmp(buf, "off"))
		return -EPROTO;
	if (next_u64(&w, &st->fill_rate) ||
	    next_word(&w, st->image, sizeof(st->image)))
		return -EPROTO;
	if (!strcmp(st->image, "-"))
		st->image[0] = '\0';
	for (i = 0; i < SU_NR_CONSUMERS; i++) {
		if (next_word(&w, buf, sizeof(buf)) ||
		    split_u64(buf, ':', v, 3))
			return -EPROTO;
		st->c[i].dirty = v[0];
		st->c[i].snap_id = v[1];
		st->c[i].snap_blocks = v[2];
	}
	/* Added later at the end: older modules lack it. */
	if (!next_word(&w, buf, sizeof(buf))) {
		if (su_parse_u64(buf, &st->oldest_ms))
			return -EPROTO;
		st->has_oldest = true;
	}
	return 0;
}

int su_parse_range_page(const char *resp, uint64_t cursor, uint64_t total,
			uint64_t *next,
			int (*fn)(void *ctx, uint64_t first, uint64_t count),
			void *ctx)
{
	const char *p, *end;
	uint64_t n, first, count, last = 0;
	int r;

	if (!resp || su_parse_u64_prefix(resp, &end, &n))
		return -EPROTO;
	if (n > total || (n <= cursor && n != total))
		return -EPROTO;
	for (p = end; *p; p = end) {
		if (*p == '\n' && !p[1])
			break;
		if (*p != ' ')
			return -EPROTO;
		while (*p == ' ')
			p++;
		if (!*p || *p == '\n')
			break;
		if (su_parse_u64_prefix(p, &end, &first) || *end != '+' ||
		    su_parse_u64_prefix(end + 1, &end, &count))
			return -EPROTO;
		if (*end && *end != ' ' && *end != '\n')
			return -EPROTO;
		/* in order, inside the device, not empty */
		if (!count || first < last || first >= total ||
		    count > total - first)
			return -EPROTO;
		last = first + count;
		r = fn(ctx, first, count);
		if (r)
			return r;
		if (*end == '\n')
			end++;
	}
	*next = n;
	return 0;
}

int su_parse_range_line(const char *line, uint64_t *off, uint64_t *len)
{
	const char *p = line, *end;
	uint64_t a, b;

	while (*p == ' ' || *p == '\t')
		p++;
	if (!*p || *p == '#' || *p == '\n' || *p == '\r')
		return 0;
	if (su_parse_u64_prefix(p, &end, &a) || (*end != ' ' && *end != '\t'))
		return -EINVAL;
	for (p = end; *p == ' ' || *p == '\t'; p++)
		;
	if (su_parse_u64_prefix(p, &end, &b))
		return -EINVAL;
	for (p = end; *p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'; p++)
		;
	if (*p && *p != '#')
		return -EINVAL;
	*off = a;
	*len = b;
	return 1;
}

int su_parse_cut(const char *resp, uint64_t *gen, uint64_t *nr)
{
	const char *p;

	if (!resp || su_parse_u64_prefix(resp, &p, gen) || *p != ' ' ||
	    su_parse_u64_prefix(p + 1, &p, nr) || (*p && strcmp(p, "\n")) ||
	    !*gen)
		return -EPROTO;
	return 0;
}
