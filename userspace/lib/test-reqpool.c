// SPDX-License-Identifier: GPL-2.0
/*
 * Unit tests of reqpool.c (cmocka), with an allocation-failure shim:
 * malloc and calloc are wrapped (-Wl,--wrap, see tests/unit.sh) and fail
 * the Nth call when fail_at is N, so that every ENOMEM path runs; the
 * sanitizer build then checks that nothing leaks on the way out.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "test-alloc-shim.h"

#include "reqpool.h"

static void test_pool_get_put(void **state)
{
	struct su_reqpool p;
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	struct su_req *a, *b, *c;

	(void)state;
	assert_int_equal(su_reqpool_init(&p, 2, 48, 8192), 0);
	assert_int_equal(p.nr_free, 2);
	a = su_req_get(&p);
	b = su_req_get(&p);
	assert_non_null(a);
	assert_non_null(b);
	assert_non_null(a->buf);
	assert_ptr_not_equal(a, b);
	/* the payload after the header starts a page, and all of it is ours */
	assert_int_equal((uintptr_t)(a->buf + 48) % page, 0);
	assert_int_equal((uintptr_t)(b->buf + 48) % page, 0);
	memset(a->buf, 0xa5, 48 + 8192);
	memset(b->buf, 0x5a, 48 + 8192);
	assert_int_equal(a->buf[0], 0xa5);
	assert_null(su_req_get(&p));	/* exhausted, not allocated */
	a->tag = 7;
	a->retries = 3;
	su_req_put(&p, a);
	c = su_req_get(&p);
	assert_ptr_equal(c, a);
	assert_true(c->tag == 0 && c->retries == 0 && c->buf);	/* reset */
	assert_int_equal((uintptr_t)(c->buf + 48) % page, 0);	/* kept */
	su_req_put(&p, b);
	su_req_put(&p, c);
	assert_int_equal(p.nr_free, 2);
	su_reqpool_destroy(&p);
}

/* Every allocation of init fails in turn: -ENOMEM, nothing leaks. */
static void test_pool_enomem(void **state)
{
	struct su_reqpool p;
	int n;

	(void)state;
	for (n = 1; n <= 5; n++) {
		fail_at = n;
		calls = 0;
		assert_int_equal(su_reqpool_init(&p, 4, 48, 512), -ENOMEM);
		assert_null(p.reqs);
		assert_int_equal(p.nr_free, 0);
	}
	fail_at = 6;		/* 1 + 4 callocs: all succeed */
	calls = 0;
	assert_int_equal(su_reqpool_init(&p, 4, 48, 512), 0);
	fail_at = 0;
	su_reqpool_destroy(&p);
}

static void test_queue(void **state)
{
	struct su_req r[3] = { { 0 } };
	struct su_reqq q;

	(void)state;
	su_reqq_init(&q);
	assert_null(su_reqq_pop(&q));
	su_reqq_push(&q, &r[0]);
	su_reqq_push(&q, &r[1]);
	su_reqq_push_front(&q, &r[2]);
	assert_ptr_equal(su_reqq_pop(&q), &r[2]);
	assert_ptr_equal(su_reqq_pop(&q), &r[0]);
	assert_ptr_equal(su_reqq_pop(&q), &r[1]);
	assert_null(su_reqq_pop(&q));
	/* the tail is right again after emptying */
	su_reqq_push_front(&q, &r[1]);
	su_reqq_push(&q, &r[0]);
	assert_ptr_equal(su_reqq_pop(&q), &r[1]);
	assert_ptr_equal(su_reqq_pop(&q), &r[0]);
	assert_null(su_reqq_pop(&q));
}

/*
 * A split request of @n blocks from 1000 over a server whose blocks in
 * @bad fail, served the way streamd does: every block must be answered
 * exactly once, the bad ones as errors; returns the reads it took.
 */
static unsigned int serve_split(uint32_t n, const uint64_t *bad,
				unsigned int nr_bad)
{
	struct su_req r = { .block = 1000, .count = n };
	unsigned char answered[256] = { 0 };
	unsigned int reads = 1, i;	/* the whole read that failed */
	uint64_t b;
	bool failed, more = true;

	assert_true(n <= sizeof(answered));
	su_req_split(&r);
	while (more) {
		assert_true(r.count >= 1);
		assert_true(r.block + r.count <= 1000 + n);
		reads++;
		failed = false;
		for (b = r.block; b < r.block + r.count; b++)
			for (i = 0; i < nr_bad; i++)
				failed |= bad[i] == b;
		if (failed && su_req_split_halve(&r))
			continue;
		for (b = r.block; b < r.block + r.count; b++)
			answered[b - 1000] += failed ? 16 : 1;
		more = su_req_split_next(&r, failed, false);
	}
	for (b = 1000; b < 1000 + n; b++) {
		bool is_bad = false;

		for (i = 0; i < nr_bad; i++)
			is_bad |= bad[i] == b;
		assert_int_equal(answered[b - 1000], is_bad ? 16 : 1);
	}
	assert_int_equal(r.split_bad, nr_bad);
	return reads;
}

static void test_split(void **state)
{
	static const uint64_t one_mid[] = { 1004 }, first[] = { 1000 },
		last[] = { 1127 }, two[] = { 1001, 1090 };
	uint64_t all[128];
	unsigned int i, reads;

	(void)state;
	/* one bad block of 8: a few reads, not one per block */
	reads = serve_split(8, one_mid, 1);
	assert_true(reads <= 8);
	serve_split(128, first, 1);
	reads = serve_split(128, last, 1);
	assert_true(reads <= 2 * 8 + 2);
	serve_split(128, two, 2);
	serve_split(2, first, 1);
	/* all bad: one read a block after the first halvings */
	for (i = 0; i < 128; i++)
		all[i] = 1000 + i;
	reads = serve_split(128, all, 128);
	assert_true(reads <= 128 + 8);
	/* none bad (the whole read failed for a passing reason) */
	reads = serve_split(128, NULL, 0);
	assert_true(reads <= 4);
}

/* Two refused answers in a row end a split; one does not. */
static void test_split_refused(void **state)
{
	struct su_req r = { .block = 10, .count = 8 };

	(void)state;
	su_req_split(&r);
	assert_int_equal(r.block, 10);
	assert_int_equal(r.count, 4);
	assert_true(su_req_split_next(&r, false, true));
	assert_int_equal(r.block, 14);
	assert_int_equal(r.count, 4);
	assert_true(su_req_split_halve(&r));
	assert_true(su_req_split_halve(&r));
	assert_false(su_req_split_halve(&r));
	assert_true(su_req_split_next(&r, true, false));
	assert_int_equal(r.block, 15);
	assert_int_equal(r.count, 1);
	assert_true(su_req_split_next(&r, false, true));
	assert_false(su_req_split_next(&r, false, true));
	/* not split: nothing to go on with */
	r = (struct su_req){ .block = 10, .count = 8 };
	assert_false(su_req_split_next(&r, false, false));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pool_get_put),
		cmocka_unit_test(test_pool_enomem),
		cmocka_unit_test(test_queue),
		cmocka_unit_test(test_split),
		cmocka_unit_test(test_split_refused),
	};

	return cmocka_run_group_tests_name("reqpool", tests, NULL, NULL);
}
