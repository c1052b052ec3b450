// SPDX-License-Identifier: GPL-2.0
/* Unit tests of parse.c (cmocka). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "parse.h"

struct num_case {
	const char *in;
	int ret;
	uint64_t v;
};

static const struct num_case u64_cases[] = {
	{ "0", 0, 0 },
	{ "42", 0, 42 },
	{ "0x2a", 0, 42 },
	{ "0X2A", 0, 42 },
	{ "010", 0, 10 },			/* never octal */
	{ "0000065536", 0, 65536 },
	{ "18446744073709551615", 0, UINT64_MAX },
	{ "0xffffffffffffffff", 0, UINT64_MAX },
	{ "18446744073709551616", -ERANGE, 0 },	/* no wrap-around */
	{ "0x10000000000000000", -ERANGE, 0 },
	{ "", -EINVAL, 0 },
	{ "0x", -EINVAL, 0 },
	{ "-1", -EINVAL, 0 },
	{ "+1", -EINVAL, 0 },
	{ " 1", -EINVAL, 0 },
	{ "1 ", -EINVAL, 0 },
	{ "1a", -EINVAL, 0 },
	{ "0x1g", -EINVAL, 0 },
	{ "1e3", -EINVAL, 0 },
	{ "1K", -EINVAL, 0 },
};

static void test_u64(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(u64_cases) / sizeof(u64_cases[0]); i++) {
		const struct num_case *c = &u64_cases[i];
		uint64_t v = 12345;
		int r = su_parse_u64(c->in, &v);

		print_message("'%s'\n", c->in);
		assert_int_equal(r, c->ret);
		assert_true(v == (r ? 12345 : c->v));
	}
	assert_int_equal(su_parse_u64(NULL, &(uint64_t){ 0 }), -EINVAL);
}

static void test_uint_max(void **state)
{
	unsigned int v = 7;

	(void)state;
	assert_int_equal(su_parse_uint("3", 3, &v), 0);
	assert_int_equal(v, 3);
	assert_int_equal(su_parse_uint("4", 3, &v), -ERANGE);
	assert_int_equal(su_parse_uint("4294967296", UINT32_MAX, &v), -ERANGE);
	assert_int_equal(su_parse_uint("", 3, &v), -EINVAL);
	assert_int_equal(v, 3);
}

static const struct num_case size_cases[] = {
	{ "1", 0, 1 },
	{ "1K", 0, 1024 },
	{ "1k", 0, 1024 },
	{ "2M", 0, 2 << 20 },
	{ "0x10G", 0, 16ULL << 30 },
	{ "17179869183G", 0, 17179869183ULL << 30 },
	{ "17179869184G", -ERANGE, 0 },
	{ "1KB", -EINVAL, 0 },
	{ "K", -EINVAL, 0 },
	{ "1T", -EINVAL, 0 },
	{ "", -EINVAL, 0 },
};

static void test_size(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(size_cases) / sizeof(size_cases[0]); i++) {
		const struct num_case *c = &size_cases[i];
		uint64_t v = 0;

		print_message("'%s'\n", c->in);
		assert_int_equal(su_parse_size(c->in, &v), c->ret);
		if (!c->ret)
			assert_true(v == c->v);
	}
}

static void test_prefix(void **state)
{
	const char *end;
	uint64_t v;

	(void)state;
	assert_int_equal(su_parse_u64_prefix("12+3", &end, &v), 0);
	assert_true(v == 12);
	assert_string_equal(end, "+3");
	assert_int_equal(su_parse_u64_prefix("+3", &end, &v), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_u64),
		cmocka_unit_test(test_uint_max),
		cmocka_unit_test(test_size),
		cmocka_unit_test(test_prefix),
	};

	return cmocka_run_group_tests_name("parse", tests, NULL, NULL);
}
