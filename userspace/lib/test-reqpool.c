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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pool_get_put),
		cmocka_unit_test(test_pool_enomem),
		cmocka_unit_test(test_queue),
	};

	return cmocka_run_group_tests_name("reqpool", tests, NULL, NULL);
}
