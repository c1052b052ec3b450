/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The unit tests' allocation-failure shim: a test that includes this file
 * is linked with -Wl,--wrap=malloc,--wrap=calloc (tests/unit.sh), and
 * its Nth allocation fails when fail_at is N, so that every ENOMEM path
 * runs; the sanitizer build then checks that nothing leaks on the way out.
 * Only the code under test is wrapped, not the C library's own calls.
 */
#ifndef STREAM_LIB_TEST_ALLOC_SHIM_H
#define STREAM_LIB_TEST_ALLOC_SHIM_H

#include <stddef.h>

/* Owned by the test cases, which run one at a time. */
static int fail_at;		/* 0: never fail */
static int calls;		/* allocations since the case reset it */

void *__real_malloc(size_t size);
void *__real_calloc(size_t nmemb, size_t size);
void *__wrap_malloc(size_t size);
void *__wrap_calloc(size_t nmemb, size_t size);

void *__wrap_malloc(size_t size)
{
	if (fail_at && ++calls == fail_at)
		return NULL;
	return __real_malloc(size);
}

void *__wrap_calloc(size_t nmemb, size_t size)
{
	if (fail_at && ++calls == fail_at)
		return NULL;
	return __real_calloc(nmemb, size);
}

#endif
