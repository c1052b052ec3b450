// SPDX-License-Identifier: GPL-2.0
/*
 * Unit tests of dm.c (cmocka) against a stand-in for libdevmapper: the
 * test defines the dm_task_* calls dm.c makes (it is linked without
 * -ldevmapper), answering each message from a script.  Covers paging
 * through range answers of any size (an answer over 8 KiB was once cut
 * short), a cursor that does not move, a failing message and the status
 * call's refusals.
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <libdevmapper.h>

#include "dm.h"

/* --- the stand-in: one script of answers per test, owned by the test --- */

struct dm_task {
	int type;
	char msg[128];
};

#define MAX_PAGES 8
static struct {
	const char *pages[MAX_PAGES];	/* answers to successive messages */
	unsigned int nr, next;
	char msgs[MAX_PAGES][128];	/* the messages dm.c sent */
	bool fail_run;			/* dm_task_run fails */
	bool exists;
	const char *type, *params;	/* the table's only target */
} fake;

struct dm_task *dm_task_create(int type)
{
	struct dm_task *t = calloc(1, sizeof(*t));

	if (t)
		t->type = type;
	return t;
}

void dm_task_destroy(struct dm_task *dmt)
{
	free(dmt);
}

int dm_task_set_name(struct dm_task *dmt, const char *name)
{
	return 1;
}

int dm_task_set_uuid(struct dm_task *dmt, const char *uuid)
{
	return 1;
}

int dm_task_set_sector(struct dm_task *dmt, uint64_t sector)
{
	return 1;
}

int dm_task_set_message(struct dm_task *dmt, const char *message)
{
	snprintf(dmt->msg, sizeof(dmt->msg), "%s", message);
	return 1;
}

int dm_task_run(struct dm_task *dmt)
{
	if (fake.fail_run)
		return 0;
	if (dmt->type == DM_DEVICE_TARGET_MSG) {
		if (fake.next >= fake.nr)
			return 0;
		snprintf(fake.msgs[fake.next], sizeof(fake.msgs[0]), "%s",
			 dmt->msg);
	}
	return 1;
}

const char *dm_task_get_message_response(struct dm_task *dmt)
{
	return fake.pages[fake.next++];
}

int dm_task_get_info(struct dm_task *dmt, struct dm_info *dmi)
{
	memset(dmi, 0, sizeof(*dmi));
	dmi->exists = fake.exists;
	dmi->open_count = 2;
	return 1;
}

void *dm_get_next_target(struct dm_task *dmt, void *next, uint64_t *start,
			 uint64_t *length, char **target_type, char **params)
{
	*start = 0;
	*length = 1024;
	*target_type = (char *)fake.type;
	*params = (char *)fake.params;
	return NULL;
}

const char *dm_task_get_name(const struct dm_task *dmt)
{
	return "s";
}

/* --- tests --- */

static const struct su_dev dev = { .id = "s", .quiet = true };

struct seen {
	uint64_t ranges, blocks, last;
	bool ordered;
};

static int count_range(void *ctx, uint64_t first, uint64_t count)
{
	struct seen *s = ctx;

	if (first < s->last)
		s->ordered = false;
	s->last = first + count;
	s->ranges++;
	s->blocks += count;
	return 0;
}

/* "<next> 0+1 2+1 4+1 ..." from @first: @n ranges of one block, 2 apart */
static char *page(uint64_t next, uint64_t first, unsigned int n)
{
	size_t len = 32 + (size_t)n * 24;
	char *p = malloc(len), *w = p;
	unsigned int i;

	assert_non_null(p);
	w += sprintf(w, "%" PRIu64, next);
	for (i = 0; i < n; i++)
		w += sprintf(w, " %" PRIu64 "+1", first + 2 * (uint64_t)i);
	return p;
}

static void reset(void)
{
	memset(&fake, 0, sizeof(fake));
	fake.exists = true;
}

/* Three answers of over 8 KiB each: every range of each is seen. */
static void test_ranges_big_pages(void **state)
{
	struct seen s = { .ordered = true };
	char *p[3];
	unsigned int i;

	(void)state;
	reset();
	p[0] = page(4000, 0, 2000);
	p[1] = page(8000, 4000, 2000);
	p[2] = page(12000, 8000, 2000);
	for (i = 0; i < 3; i++) {
		assert_true(strlen(p[i]) > 8192);
		fake.pages[i] = p[i];
	}
	fake.nr = 3;
	assert_int_equal(su_dm_for_each_range(&dev, "absent", 12000,
					      count_range, &s), 0);
	assert_int_equal(s.ranges, 6000);
	assert_int_equal(s.blocks, 6000);
	assert_true(s.ordered);
	assert_int_equal(fake.next, 3);
	assert_string_equal(fake.msgs[0], "absent 0");
	assert_string_equal(fake.msgs[1], "absent 4000");
	assert_string_equal(fake.msgs[2], "absent 8000");
	for (i = 0; i < 3; i++)
		free(p[i]);
}

/* An empty last page ends the walk; nothing is asked past the end. */
static void test_ranges_empty(void **state)
{
	struct seen s = { .ordered = true };

	(void)state;
	reset();
	fake.pages[0] = "512";
	fake.nr = 1;
	assert_int_equal(su_dm_for_each_range(&dev, "ranges 1 7", 512,
					      count_range, &s), 0);
	assert_int_equal(s.ranges, 0);
	assert_string_equal(fake.msgs[0], "ranges 1 7 0");
}

/* A cursor that does not move, or goes back, is a protocol error. */
static void test_ranges_stuck_cursor(void **state)
{
	struct seen s = { .ordered = true };

	(void)state;
	reset();
	fake.pages[0] = "100 0+1";
	fake.pages[1] = "100 100+1";
	fake.nr = 2;
	assert_int_equal(su_dm_for_each_range(&dev, "absent", 512,
					      count_range, &s), -EPROTO);
	assert_int_equal(fake.next, 2);

	reset();
	fake.pages[0] = "100 0+1";
	fake.pages[1] = "50 100+1";
	fake.nr = 2;
	assert_int_equal(su_dm_for_each_range(&dev, "absent", 512,
					      count_range, &s), -EPROTO);
}

/* A range outside the device, or out of order, is refused. */
static void test_ranges_bad_range(void **state)
{
	struct seen s = { .ordered = true };

	(void)state;
	reset();
	fake.pages[0] = "512 500+20";
	fake.nr = 1;
	assert_int_equal(su_dm_for_each_range(&dev, "absent", 512,
					      count_range, &s), -EPROTO);
	reset();
	fake.pages[0] = "512 10+1 5+1";
	fake.nr = 1;
	assert_int_equal(su_dm_for_each_range(&dev, "absent", 512,
					      count_range, &s), -EPROTO);
}

/* A message the kernel refuses stops the walk with -EIO. */
static void test_ranges_message_fails(void **state)
{
	struct seen s = { .ordered = true };

	(void)state;
	reset();
	fake.pages[0] = "100 0+1";
	fake.nr = 1;	/* the second message fails */
	assert_int_equal(su_dm_for_each_range(&dev, "absent", 512,
					      count_range, &s), -EIO);
	assert_int_equal(s.ranges, 1);
}

/* The callback's error is passed on and ends the walk. */
static int refuse_second(void *ctx, uint64_t first, uint64_t count)
{
	struct seen *s = ctx;

	return ++s->ranges == 2 ? -ENOSPC : 0;
}

static void test_ranges_callback_error(void **state)
{
	struct seen s = { .ordered = true };

	(void)state;
	reset();
	fake.pages[0] = "100 0+1 2+1 4+1";
	fake.nr = 1;
	assert_int_equal(su_dm_for_each_range(&dev, "absent", 512,
					      refuse_second, &s), -ENOSPC);
	assert_int_equal(s.ranges, 2);
}

static void test_status(void **state)
{
	struct su_status st;
	char name[16];
	int open_count;

	(void)state;
	reset();
	fake.type = "stream";
	fake.params = "128 5/512 3 2 attached rw 9 1 0 77 on 1048576 img-1 "
		      "3:0:0 1:4:2 0:0:0 0:0:0";
	assert_int_equal(su_dm_status(&dev, name, sizeof(name), &st,
				      &open_count), 0);
	assert_string_equal(name, "s");
	assert_int_equal(open_count, 2);
	assert_int_equal(st.present, 5);

	fake.type = "linear";
	assert_int_equal(su_dm_status(&dev, NULL, 0, &st, NULL),
			 -EMEDIUMTYPE);
	fake.type = "stream";
	fake.params = "128 garbage";
	assert_int_equal(su_dm_status(&dev, NULL, 0, &st, NULL), -EPROTO);
	fake.exists = false;
	assert_int_equal(su_dm_status(&dev, NULL, 0, &st, NULL), -ENOENT);
	fake.fail_run = true;
	assert_int_equal(su_dm_status(&dev, NULL, 0, &st, NULL), -EIO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ranges_big_pages),
		cmocka_unit_test(test_ranges_empty),
		cmocka_unit_test(test_ranges_stuck_cursor),
		cmocka_unit_test(test_ranges_bad_range),
		cmocka_unit_test(test_ranges_message_fails),
		cmocka_unit_test(test_ranges_callback_error),
		cmocka_unit_test(test_status),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
