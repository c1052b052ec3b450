/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Strict number parsing for streamd and streamctl: every integer on a
 * command line, in a ranges file or in an answer of the target goes
 * through here.
 *
 * Grammar: decimal digits, or "0x"/"0X" and hexadecimal digits.  Nothing
 * else: no sign, no leading or trailing blanks, no empty string, no octal
 * (a leading 0 is decimal: "010" is ten), no value above the limit (no
 * wrap-around).  Sizes take one optional K, M or G suffix (powers of 1024).
 *
 * All functions return 0 or -errno: -EINVAL (malformed), -ERANGE (above
 * the limit or overflow); *v is written only on success.
 */
#ifndef STREAM_LIB_PARSE_H
#define STREAM_LIB_PARSE_H

#include <stddef.h>
#include <stdint.h>

int su_parse_u64(const char *s, uint64_t *v);
int su_parse_u64_max(const char *s, uint64_t max, uint64_t *v);
int su_parse_uint(const char *s, unsigned int max, unsigned int *v);
int su_parse_size(const char *s, uint64_t *v);

/*
 * Parse a number at the start of @s (same grammar) and set *end past it;
 * what follows is the caller's to check.  For tokenised input (answers of
 * the target, ranges files).
 */
int su_parse_u64_prefix(const char *s, const char **end, uint64_t *v);

#endif
