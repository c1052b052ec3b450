// SPDX-License-Identifier: GPL-2.0
/* Strict number parsing: see parse.h for the grammar. */
#include <errno.h>
#include <stdbool.h>

#include "parse.h"

static int digit(char c, unsigned int base)
{
	unsigned int d;

	if (c >= '0' && c <= '9')
		d = c - '0';
	else if (c >= 'a' && c <= 'f')
		d = c - 'a' + 10;
	else if (c >= 'A' && c <= 'F')
		d = c - 'A' + 10;
	else
		return -1;
	return d < base ? (int)d : -1;
}

int su_parse_u64_prefix(const char *s, const char **end, uint64_t *v)
{
	unsigned int base = 10;
	uint64_t x = 0;
	const char *p = s;
	bool any = false;
	int d;

	if (!s)
		return -EINVAL;
	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
		base = 16;
		p += 2;
	}
	for (; (d = digit(*p, base)) >= 0; p++) {
		if (x > (UINT64_MAX - d) / base)
			return -ERANGE;
		x = x * base + d;
		any = true;
	}
	if (!any)
		return -EINVAL;
	*end = p;
	*v = x;
	return 0;
}

int su_parse_u64_max(const char *s, uint64_t max, uint64_t *v)
{
	const char *end;
	uint64_t x;
	int r;

	r = su_parse_u64_prefix(s, &end, &x);
	if (r)
		return r;
	if (*end)
		return -EINVAL;
	if (x > max)
		return -ERANGE;
	*v = x;
	return 0;
}

int su_parse_u64(const char *s, uint64_t *v)
{
	return su_parse_u64_max(s, UINT64_MAX, v);
}

int su_parse_uint(const char *s, unsigned int max, unsigned int *v)
{
	uint64_t x;
	int r = su_parse_u64_max(s, max, &x);

	if (!r)
		*v = (unsigned int)x;
	return r;
}

int su_parse_size(const char *s, uint64_t *v)
{
	const char *end;
	uint64_t x, mul = 1;
	int r;

	r = su_parse_u64_prefix(s, &end, &x);
	if (r)
		return r;
	switch (*end) {
	case 'k':
	case 'K':
		mul = 1ULL << 10;
		end++;
		break;
	case 'm':
	case 'M':
		mul = 1ULL << 20;
		end++;
		break;
	case 'g':
	case 'G':
		mul = 1ULL << 30;
		end++;
		break;
	}
	if (*end)
		return -EINVAL;
	if (x > UINT64_MAX / mul)
		return -ERANGE;
	*v = x * mul;
	return 0;
}
