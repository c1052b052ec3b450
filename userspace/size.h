/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Byte counts on the command lines of streamd and streamctl: decimal or
 * 0x hexadecimal, with an optional K, M or G suffix (powers of 1024).
 */
#ifndef DM_STREAM_SIZE_H
#define DM_STREAM_SIZE_H

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

/*
 * Returns 0 or -errno (-EINVAL: malformed or too large); *v is only
 * meaningful on success.
 */
static inline int parse_size(const char *s, uint64_t *v)
{
	char *end;
	uint64_t mul = 1;

	errno = 0;
	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	*v = strtoull(s, &end, 0);
	if (errno)
		return -errno;
	switch (toupper((unsigned char)*end)) {
	case 'K':
		mul = 1ULL << 10;
		end++;
		break;
	case 'M':
		mul = 1ULL << 20;
		end++;
		break;
	case 'G':
		mul = 1ULL << 30;
		end++;
		break;
	}
	if (*end || *v > UINT64_MAX / mul)
		return -EINVAL;
	*v *= mul;
	return 0;
}

#endif
