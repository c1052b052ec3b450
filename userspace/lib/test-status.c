// SPDX-License-Identifier: GPL-2.0
/* Unit tests of status.c (cmocka): status line, range pages, range lines. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "status.h"

#define GOOD "128 5/512 3 2 attached rw 9 1 0 77 on 1048576 img-1 " \
	     "3:0:0 1:4:2 0:0:0 0:0:0"

static void test_status_good(void **state)
{
	struct su_status st;

	(void)state;
	assert_int_equal(su_parse_status(GOOD, &st), 0);
	assert_int_equal(st.block_sectors, 128);
	assert_true(st.present == 5 && st.total == 512 && st.dirty == 3);
	assert_true(st.parked == 2 && st.attached);
	assert_string_equal(st.mode, "rw");
	assert_true(st.fetched == 9 && st.zero == 1 && st.errors == 0);
	assert_true(st.generation == 77 && st.fill_on);
	assert_true(st.fill_rate == 1048576);
	assert_string_equal(st.image, "img-1");
	assert_true(st.c[1].dirty == 1 && st.c[1].snap_id == 4 &&
		    st.c[1].snap_blocks == 2);
	assert_false(st.has_oldest);

	assert_int_equal(su_parse_status(GOOD " 1500", &st), 0);
	assert_true(st.has_oldest && st.oldest_ms == 1500);

	assert_int_equal(su_parse_status("8 0/0 0 0 detached fail 0 0 0 0 off 0 - 0:0:0 0:0:0 0:0:0 0:0:0",
					 &st), 0);
	assert_string_equal(st.image, "");
	assert_false(st.attached);
}

static const char *const bad_status[] = {
	"",
	"128",
	"0 5/512 3 2 attached rw 9 1 0 77 on 0 - 0:0:0 0:0:0 0:0:0 0:0:0",
	"128 6/5 3 2 attached rw 9 1 0 77 on 0 - 0:0:0 0:0:0 0:0:0 0:0:0",
	"128 5/512 3 2 maybe rw 9 1 0 77 on 0 - 0:0:0 0:0:0 0:0:0 0:0:0",
	"128 5/512 3 2 attached rx 9 1 0 77 on 0 - 0:0:0 0:0:0 0:0:0 0:0:0",
	"128 5/512 -3 2 attached rw 9 1 0 77 on 0 - 0:0:0 0:0:0 0:0:0 0:0:0",
	"128 5/512 3 2 attached rw 9 1 0 77 yes 0 - 0:0:0 0:0:0 0:0:0 0:0:0",
	"128 5/512 3 2 attached rw 9 1 0 77 on 0 - 0:0:0 0:0 0:0:0 0:0:0",
	"128 5/512 3 2 attached rw 9 1 0 77 on 0 - 0:0:0 0:0:0 0:0:0",
	"128 5/512 3 2 attached rw 9 1 0 77 on 0 - 0:0:0 0:0:0 0:0:0 0:0:0 x",
	"128 5/512 3 2 attached rw 99999999999999999999 1 0 77 on 0 - 0:0:0 0:0:0 0:0:0 0:0:0",
	"128 5/512 3 2 attached rw 9 1 0 77 on 0 " "an-image-id-much-longer-than-sixty-three-characters-is-not-from-us" " 0:0:0 0:0:0 0:0:0 0:0:0",
};

static void test_status_bad(void **state)
{
	struct su_status st;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad_status) / sizeof(bad_status[0]); i++) {
		print_message("'%s'\n", bad_status[i]);
		assert_int_equal(su_parse_status(bad_status[i], &st), -EPROTO);
	}
	assert_int_equal(su_parse_status(NULL, &st), -EPROTO);
}

struct collect {
	uint64_t r[8][2];
	int n;
	int fail_at;			/* callback error at this range */
};

static int collect(void *ctx, uint64_t first, uint64_t count)
{
	struct collect *c = ctx;

	if (c->n == c->fail_at)
		return -EIO;
	c->r[c->n][0] = first;
	c->r[c->n][1] = count;
	c->n++;
	return 0;
}

static void test_range_page(void **state)
{
	struct collect c = { .fail_at = -1 };
	uint64_t next = 0;

	(void)state;
	assert_int_equal(su_parse_range_page("512 0+5 6+1 8+504", 0, 512,
					     &next, collect, &c), 0);
	assert_true(next == 512 && c.n == 3);
	assert_true(c.r[2][0] == 8 && c.r[2][1] == 504);

	c.n = 0;
	assert_int_equal(su_parse_range_page("100", 50, 512, &next, collect,
					     &c), 0);
	assert_true(next == 100 && c.n == 0);
	assert_int_equal(su_parse_range_page("512 3+1\n", 0, 512, &next,
					     collect, &c), 0);

	c.fail_at = 0;
	c.n = 0;
	assert_int_equal(su_parse_range_page("512 3+1", 0, 512, &next,
					     collect, &c), -EIO);
}

static const char *const bad_pages[] = {
	"", "x", "50",		/* cursor must move (asked at 50) */
	"513",			/* beyond the device */
	"512 1", "512 1+", "512 +1", "512 1+0", "512 511+2", "512 5+1 3+1",
	"512 1+1x", "512  1+1,2+1", "512 0x1+0x1 -3+1",
	"512 18446744073709551615+2",
};

static void test_range_page_bad(void **state)
{
	struct collect c = { .fail_at = -1 };
	uint64_t next = 7;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad_pages) / sizeof(bad_pages[0]); i++) {
		print_message("'%s'\n", bad_pages[i]);
		assert_int_equal(su_parse_range_page(bad_pages[i], 50, 512,
						     &next, collect, &c),
				 -EPROTO);
		assert_true(next == 7);
	}
}

static void test_range_line(void **state)
{
	uint64_t off = 0, len = 0;

	(void)state;
	assert_int_equal(su_parse_range_line("4096 65536\n", &off, &len), 1);
	assert_true(off == 4096 && len == 65536);
	assert_int_equal(su_parse_range_line("\t0x1000\t0x10 # c\n", &off,
					     &len), 1);
	assert_true(off == 4096 && len == 16);
	assert_int_equal(su_parse_range_line("0000065536 1", &off, &len), 1);
	assert_true(off == 65536);
	assert_int_equal(su_parse_range_line("# only a comment\n", &off, &len),
			 0);
	assert_int_equal(su_parse_range_line("   \n", &off, &len), 0);
	assert_int_equal(su_parse_range_line("1", &off, &len), -EINVAL);
	assert_int_equal(su_parse_range_line("1 2 3", &off, &len), -EINVAL);
	assert_int_equal(su_parse_range_line("-1 2", &off, &len), -EINVAL);
	assert_int_equal(su_parse_range_line("1 18446744073709551616", &off,
					     &len), -EINVAL);
	assert_int_equal(su_parse_range_line("1,2", &off, &len), -EINVAL);
}

static void test_cut(void **state)
{
	static const char *const bad[] = {
		"", "7", "7 ", " 7 3", "0 3", "7 3 4", "7 -3", "7 3\n\n",
		"7\t3", "18446744073709551616 1", "7 3x", "x 3",
	};
	uint64_t gen = 0, nr = 0;
	size_t i;

	(void)state;
	assert_int_equal(su_parse_cut("7 300", &gen, &nr), 0);
	assert_true(gen == 7 && nr == 300);
	assert_int_equal(su_parse_cut("18446744073709551615 0\n", &gen, &nr),
			 0);
	assert_true(gen == UINT64_MAX && nr == 0);
	assert_int_equal(su_parse_cut(NULL, &gen, &nr), -EPROTO);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		print_message("cut '%s'\n", bad[i]);
		assert_int_equal(su_parse_cut(bad[i], &gen, &nr), -EPROTO);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_status_good),
		cmocka_unit_test(test_status_bad),
		cmocka_unit_test(test_range_page),
		cmocka_unit_test(test_range_page_bad),
		cmocka_unit_test(test_range_line),
		cmocka_unit_test(test_cut),
	};

	return cmocka_run_group_tests_name("status", tests, NULL, NULL);
}
