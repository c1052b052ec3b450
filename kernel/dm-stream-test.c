// SPDX-License-Identifier: GPL-2.0
/*
 * KUnit tests for the dm-stream on-disk format: superblock pack/unpack and
 * every kind of damage the loader must refuse, bitmap block encoding over
 * range edges, bitmap damage, and metadata geometry.  Built into
 * dm-stream.ko when the kernel has CONFIG_KUNIT; the suites run when the
 * module loads.
 */
#include <kunit/test.h>
#include <linux/slab.h>

#include "dm-stream-metadata.h"

/* Byte offsets in struct stream_sb_disk (the format is the contract). */
#define SB_OFF_FLAGS		4
#define SB_OFF_BLOCKNR		8
#define SB_OFF_MAGIC		32
#define SB_OFF_VERSION		40
#define SB_OFF_BLOCK_SECTORS	44
#define SB_OFF_NR_BLOCKS	48
#define SB_OFF_META_BS		64
#define SB_OFF_CONSUMERS	68
#define SB_OFF_BITMAP_BLOCKS	72
#define SB_OFF_INTENT_SHIFT	176
#define SB_OFF_INTENT		184
#define SB_F_INTENT		0x8

struct sb_case {
	const char *desc;
	unsigned int off;	/* byte to change, or ~0 for none */
	u32 value;		/* 32-bit value stored at off */
	bool reseal;		/* recompute the checksum after the change */
	u64 blocknr;		/* location the loader expects */
	int expected;
};

static const struct sb_case sb_cases[] = {
	{ "valid", ~0U, 0, true, 0, 0 },
	{ "bit flip, checksum stale", SB_OFF_NR_BLOCKS, 7, false, 0, -EILSEQ },
	{ "flags changed, checksum stale", SB_OFF_FLAGS, 1, false, 0, -EILSEQ },
	{ "bad magic", SB_OFF_MAGIC, 0x12345678, true, 0, -EBADMSG },
	{ "future version", SB_OFF_VERSION, 3, true, 0, -EPROTONOSUPPORT },
	{ "format 1 (no journal)", SB_OFF_VERSION, 1, true, 0,
	  -EPROTONOSUPPORT },
	{ "unknown flag", SB_OFF_FLAGS, 0x80, true, 0, -EPROTONOSUPPORT },
	{ "reverting flag is known", SB_OFF_FLAGS, 1, true, 0, 0 },
	{ "version zero", SB_OFF_VERSION, 0, true, 0, -EPROTONOSUPPORT },
	{ "wrong location", ~0U, 0, true, 5, -ENXIO },
	{ "blocknr field", SB_OFF_BLOCKNR, 3, true, 0, -ENXIO },
	{ "meta block size", SB_OFF_META_BS, 512, true, 0, -EUCLEAN },
	{ "consumer slots", SB_OFF_CONSUMERS, 2, true, 0, -EUCLEAN },
	{ "bitmap blocks", SB_OFF_BITMAP_BLOCKS, 99, true, 0, -EUCLEAN },
};

static void sb_case_desc(const struct sb_case *c, char *desc)
{
	strscpy(desc, c->desc, KUNIT_PARAM_DESC_SIZE);
}

KUNIT_ARRAY_PARAM(sb, sb_cases, sb_case_desc);

static void sb_info(struct dsm_sb_info *sb)
{
	memset(sb, 0, sizeof(*sb));
	memset(sb->uuid, 0xab, sizeof(sb->uuid));
	sb->block_sectors = 128;
	sb->nr_blocks = 100000;
	sb->generation = 42;
	sb->nr_consumers = DSM_MAX_CONSUMERS;
	sb->bitmap_blocks = dsm_bitmap_blocks(sb->nr_blocks);
}

static void stream_sb_test(struct kunit *test)
{
	const struct sb_case *c = test->param_value;
	struct dsm_sb_info in, out;
	const char *why = NULL;
	u8 *buf;
	int r;

	buf = kunit_kzalloc(test, DSM_BLOCK_SIZE, GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, buf);
	sb_info(&in);
	dsm_sb_pack(&in, 0, buf);
	if (c->off != ~0U) {
		__le32 v = cpu_to_le32(c->value);

		memcpy(buf + c->off, &v, sizeof(v));
		if (c->reseal)
			dsm_sb_reseal(buf);
	}
	out.intent = NULL;
	r = dsm_sb_unpack(buf, c->blocknr, &out, &why);
	KUNIT_EXPECT_EQ(test, r, c->expected);
	if (r) {
		KUNIT_EXPECT_NOT_NULL(test, why);
		return;
	}
	KUNIT_EXPECT_EQ(test, out.block_sectors, in.block_sectors);
	KUNIT_EXPECT_EQ(test, out.nr_blocks, in.nr_blocks);
	KUNIT_EXPECT_EQ(test, out.generation, in.generation);
	KUNIT_EXPECT_EQ(test, out.bitmap_blocks, in.bitmap_blocks);
	KUNIT_EXPECT_EQ(test, memcmp(out.uuid, in.uuid, sizeof(in.uuid)), 0);
}

static void stream_sb_zero_test(struct kunit *test)
{
	u8 *buf = kunit_kzalloc(test, DSM_BLOCK_SIZE, GFP_KERNEL);
	struct dsm_sb_info out;
	const char *why;

	KUNIT_ASSERT_NOT_NULL(test, buf);
	out.intent = NULL;
	KUNIT_EXPECT_TRUE(test, dsm_buf_is_zero(buf, DSM_BLOCK_SIZE));
	/* An all-zero block is "unformatted", never a valid superblock. */
	KUNIT_EXPECT_LT(test, dsm_sb_unpack(buf, 0, &out, &why), 0);
	buf[DSM_BLOCK_SIZE - 1] = 1;
	KUNIT_EXPECT_FALSE(test, dsm_buf_is_zero(buf, DSM_BLOCK_SIZE));
}

/*
 * The superblock's write-intent map.  100000 blocks in regions of 1 << 4:
 * 6250 regions.  @regions are set before packing, then @off (if not ~0)
 * gets @value and the block is resealed.
 */
struct intent_sb_case {
	const char *desc;
	u32 regions[3];		/* up to three regions, ~0 ends */
	unsigned int off;
	u32 value;
	bool flag;		/* SB_F_INTENT in the block as packed */
	int expected;
};

static const struct intent_sb_case intent_sb_cases[] = {
	{ "regions round-trip", { 0, 63, 6249 }, ~0U, 0, true, 0 },
	{ "no region, no flag", { ~0U }, ~0U, 0, false, 0 },
	{ "flag without a region", { ~0U }, SB_OFF_FLAGS, SB_F_INTENT,
	  false, -EUCLEAN },
	{ "region without the flag", { 5, ~0U }, SB_OFF_FLAGS, 0, true,
	  -EUCLEAN },
	{ "region beyond the device", { 5, ~0U }, SB_OFF_INTENT + 6250 / 8,
	  0x4, true, -EUCLEAN },
	{ "region shift beyond the largest device", { 5, ~0U },
	  SB_OFF_INTENT_SHIFT, 31, true, -EUCLEAN },
	{ "region shift unknown, no region", { ~0U }, SB_OFF_INTENT_SHIFT,
	  64, false, -EUCLEAN },
};

static void intent_sb_case_desc(const struct intent_sb_case *c, char *desc)
{
	strscpy(desc, c->desc, KUNIT_PARAM_DESC_SIZE);
}

KUNIT_ARRAY_PARAM(intent_sb, intent_sb_cases, intent_sb_case_desc);

static void stream_sb_intent_test(struct kunit *test)
{
	const struct intent_sb_case *c = test->param_value;
	size_t sz = BITS_TO_LONGS(DSM_INTENT_BITS) * sizeof(long);
	unsigned long *in_map = kunit_kzalloc(test, sz, GFP_KERNEL);
	unsigned long *out_map = kunit_kzalloc(test, sz, GFP_KERNEL);
	u8 *buf = kunit_kzalloc(test, DSM_BLOCK_SIZE, GFP_KERNEL);
	struct dsm_sb_info in, out;
	const char *why = NULL;
	unsigned int i;
	__le32 flags;
	int r;

	KUNIT_ASSERT_NOT_NULL(test, in_map);
	KUNIT_ASSERT_NOT_NULL(test, out_map);
	KUNIT_ASSERT_NOT_NULL(test, buf);
	sb_info(&in);
	in.intent_shift = 4;
	in.intent = in_map;
	for (i = 0; i < ARRAY_SIZE(c->regions) && c->regions[i] != ~0U; i++)
		set_bit(c->regions[i], in_map);
	dsm_sb_pack(&in, 0, buf);
	memcpy(&flags, buf + SB_OFF_FLAGS, sizeof(flags));
	KUNIT_EXPECT_EQ(test, !!(le32_to_cpu(flags) & SB_F_INTENT), c->flag);
	if (c->off == SB_OFF_FLAGS) {
		flags = cpu_to_le32(c->value);
		memcpy(buf + c->off, &flags, sizeof(flags));
		dsm_sb_reseal(buf);
	} else if (c->off != ~0U) {
		buf[c->off] |= c->value;
		if (c->off == SB_OFF_INTENT_SHIFT)
			buf[c->off] = c->value;
		dsm_sb_reseal(buf);
	}
	out.intent = out_map;
	r = dsm_sb_unpack(buf, 0, &out, &why);
	KUNIT_EXPECT_EQ(test, r, c->expected);
	if (r) {
		KUNIT_EXPECT_NOT_NULL(test, why);
		return;
	}
	KUNIT_EXPECT_EQ(test, out.intent_shift, 4U);
	KUNIT_EXPECT_TRUE(test, bitmap_equal(in_map, out_map,
					     DSM_INTENT_BITS));
}

/* Bitmap ranges: which bits to set, over how many, in which slice. */
struct bitmap_case {
	const char *desc;
	u64 nr_bits;
	u32 slice;
	u64 first, last;	/* set bits [first, last] (inclusive) */
};

#define BPB DSM_BITS_PER_BLOCK
static const struct bitmap_case bitmap_cases[] = {
	{ "single bit", 1, 0, 0, 0 },
	{ "first word", 100, 0, 0, 63 },
	{ "word boundary", 200, 0, 63, 64 },
	{ "full slice", BPB, 0, 0, BPB - 1 },
	{ "tail of partial slice", BPB + 5, 1, BPB, BPB + 4 },
	{ "middle of second slice", 3 * BPB, 1, BPB + 17, 2 * BPB - 3 },
	{ "last bit of device", 2 * BPB + 1, 2, 2 * BPB, 2 * BPB },
};

static void bitmap_case_desc(const struct bitmap_case *c, char *desc)
{
	strscpy(desc, c->desc, KUNIT_PARAM_DESC_SIZE);
}

KUNIT_ARRAY_PARAM(bitmap, bitmap_cases, bitmap_case_desc);

static unsigned long *test_bitmap(struct kunit *test, u64 nr_bits)
{
	unsigned long *b = kunit_kcalloc(test, BITS_TO_LONGS(nr_bits),
					 sizeof(long), GFP_KERNEL);

	KUNIT_ASSERT_NOT_NULL(test, b);
	return b;
}

static void stream_bitmap_test(struct kunit *test)
{
	const struct bitmap_case *c = test->param_value;
	unsigned long *in = test_bitmap(test, c->nr_bits);
	unsigned long *out = test_bitmap(test, c->nr_bits);
	u64 lo = (u64)c->slice * BPB;
	u64 hi = min_t(u64, lo + BPB, c->nr_bits);
	const char *why;
	u8 *buf;
	u64 i;

	buf = kunit_kzalloc(test, DSM_BLOCK_SIZE, GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, buf);
	/* Bits outside the slice must not leak into it. */
	bitmap_fill(in, c->nr_bits);
	for (i = lo; i < hi; i++)
		if (i < c->first || i > c->last)
			__clear_bit(i, in);

	dsm_bitmap_pack(in, NULL, c->nr_bits, c->slice, 7, 1234, buf);
	KUNIT_ASSERT_EQ(test, dsm_bitmap_unpack(buf, 1234, 7, out, c->nr_bits,
						c->slice, &why), 0);
	for (i = 0; i < c->nr_bits; i++) {
		bool want = i >= c->first && i <= c->last;

		if (test_bit(i, out) != want) {
			KUNIT_FAIL(test, "bit %llu: expected %d", i, want);
			break;
		}
	}
	KUNIT_EXPECT_EQ(test, bitmap_weight(out, c->nr_bits),
			(unsigned int)(c->last - c->first + 1));
}

struct damage_case {
	const char *desc;
	unsigned int off;
	u8 xor;
	bool reseal;
	u64 blocknr;
	u32 index;
	u64 nr_bits;
	int expected;
};

static const struct damage_case damage_cases[] = {
	{ "intact", 0, 0, false, 20, 3, 1000, 0 },
	{ "bit flipped", 100, 0x10, false, 20, 3, 1000, -EILSEQ },
	{ "torn tail", DSM_BLOCK_SIZE - 1, 0xff, false, 20, 3, 1000, -EILSEQ },
	{ "misdirected", 0, 0, false, 21, 3, 1000, -ENXIO },
	{ "other bitmap", 0, 0, false, 20, 4, 1000, -ENXIO },
	{ "bad magic", 16, 0x01, true, 20, 3, 1000, -EBADMSG },
	{ "future version", 20, 0x02, true, 20, 3, 1000, -EPROTONOSUPPORT },
	{ "bit beyond device", 24 + 125, 0x80, true, 20, 3, 1000, -EUCLEAN },
};

static void damage_case_desc(const struct damage_case *c, char *desc)
{
	strscpy(desc, c->desc, KUNIT_PARAM_DESC_SIZE);
}

KUNIT_ARRAY_PARAM(damage, damage_cases, damage_case_desc);

static void stream_bitmap_damage_test(struct kunit *test)
{
	const struct damage_case *c = test->param_value;
	unsigned long *bits = test_bitmap(test, 1000);
	const char *why = NULL;
	u8 *buf;
	int r;

	buf = kunit_kzalloc(test, DSM_BLOCK_SIZE, GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, buf);
	__set_bit(5, bits);
	dsm_bitmap_pack(bits, NULL, 1000, 0, 3, 20, buf);
	buf[c->off] ^= c->xor;
	if (c->reseal)
		dsm_bitmap_reseal(buf);
	bitmap_zero(bits, 1000);
	r = dsm_bitmap_unpack(buf, c->blocknr, c->index, bits, c->nr_bits, 0,
			      &why);
	KUNIT_EXPECT_EQ(test, r, c->expected);
	if (r)
		KUNIT_EXPECT_NOT_NULL(test, why);
	else
		KUNIT_EXPECT_TRUE(test, test_bit(5, bits));
}

static void stream_geometry_test(struct kunit *test)
{
	static const struct { u64 blocks; u32 bb; u64 total; } g[] = {
		{ 0, 0, DSM_FIRST_BITMAP + DSM_JNL_BLOCKS },
		{ 1, 1, DSM_FIRST_BITMAP + DSM_NR_BITMAPS + DSM_JNL_BLOCKS },
		{ BPB, 1, DSM_FIRST_BITMAP + DSM_NR_BITMAPS + DSM_JNL_BLOCKS },
		{ BPB + 1, 2, DSM_FIRST_BITMAP + 2 * DSM_NR_BITMAPS +
		  DSM_JNL_BLOCKS },
		/* 1 TiB of 64 KiB blocks */
		{ 1ULL << 24, 516, DSM_FIRST_BITMAP + 516 * DSM_NR_BITMAPS +
		  DSM_JNL_BLOCKS },
	};
	unsigned int i;

	KUNIT_EXPECT_EQ(test, BPB / 8 + 24, DSM_BLOCK_SIZE);
	for (i = 0; i < ARRAY_SIZE(g); i++) {
		KUNIT_EXPECT_EQ(test, dsm_bitmap_blocks(g[i].blocks), g[i].bb);
		KUNIT_EXPECT_EQ(test, dsm_total_blocks(g[i].blocks),
				g[i].total);
	}
}

/*
 * Commit state machine.  A script of steps over an in-core metadata:
 *   'P' b  block b's data write completed: dsm_set_present(b)
 *   'D' b  block b written: dsm_set_dirty(b)
 *   'B'    commit step 1 (take the present bits; the data flush follows)
 *   'A'    commit step 3 for what the last 'B' took
 *   'C' b  expect b committable (its present bit may reach the disk)
 *   'N' b  expect b not committable
 *   'L' n  expect the last 'B' to have taken n new blocks
 *   'S' s  expect present slice s marked changed; 'T' s dirty slice s
 */
struct step {
	char op;
	u64 arg;
};

struct commit_case {
	const char *desc;
	struct step steps[12];
};

static const struct commit_case commit_cases[] = {
	{ "present after flush is committed",
	  { {'P', 3}, {'N', 3}, {'B'}, {'L', 1}, {'A'}, {'C', 3}, {'S', 0} } },
	{ "present completing after the flush point waits a commit",
	  { {'P', 3}, {'B'}, {'P', 4}, {'A'}, {'C', 3}, {'N', 4},
	    {'B'}, {'L', 1}, {'A'}, {'C', 4} } },
	{ "present twice is pending once",
	  { {'P', 9}, {'P', 9}, {'B'}, {'L', 1}, {'A'}, {'C', 9} } },
	{ "nothing pending, nothing applied",
	  { {'B'}, {'L', 0}, {'A'}, {'N', 0}, {'N', 1} } },
	{ "dirty marks its bitmap slice",
	  { {'D', BPB + 2}, {'T', 1}, {'B'}, {'L', 0}, {'N', BPB + 2} } },
	{ "present in two slices",
	  { {'P', 1}, {'P', 2 * BPB}, {'B'}, {'L', 2}, {'A'}, {'S', 0},
	    {'S', 2}, {'C', 2 * BPB} } },
};

static void commit_case_desc(const struct commit_case *c, char *desc)
{
	strscpy(desc, c->desc, KUNIT_PARAM_DESC_SIZE);
}

KUNIT_ARRAY_PARAM(commit, commit_cases, commit_case_desc);

static void stream_commit_test(struct kunit *test)
{
	const struct commit_case *c = test->param_value;
	struct dm_stream_metadata *md = dsm_create_incore(3 * BPB);
	const struct step *s;
	u64 n = 0;

	KUNIT_ASSERT_NOT_NULL(test, md);
	for (s = c->steps; s->op; s++) {
		switch (s->op) {
		case 'P':
			KUNIT_EXPECT_FALSE(test, dsm_set_present(md, s->arg));
			KUNIT_EXPECT_TRUE(test, dsm_test(dsm_present_map(md),
							 s->arg));
			break;
		case 'D':
			dsm_set_dirty(md, s->arg);
			KUNIT_EXPECT_TRUE(test, dsm_changed(md));
			break;
		case 'B':
			n = dsm_commit_begin(md);
			break;
		case 'A':
			dsm_commit_apply(md);
			break;
		case 'C':
			KUNIT_EXPECT_TRUE(test, dsm_committable(md, s->arg));
			break;
		case 'N':
			KUNIT_EXPECT_FALSE(test, dsm_committable(md, s->arg));
			break;
		case 'L':
			KUNIT_EXPECT_EQ(test, n, s->arg);
			break;
		case 'S':
			KUNIT_EXPECT_TRUE(test, dsm_slice_changed(md, false,
								  s->arg));
			break;
		case 'T':
			KUNIT_EXPECT_TRUE(test, dsm_slice_changed(md, true,
								  s->arg));
			break;
		}
	}
	dsm_destroy_incore(md);
}

/*
 * Many blocks made present between two commits need no memory (they are
 * tracked per bitmap slice); the last absent block reports completion.
 */
static void stream_pending_growth_test(struct kunit *test)
{
	struct dm_stream_metadata *md = dsm_create_incore(BPB + 5000);
	u64 b;

	KUNIT_ASSERT_NOT_NULL(test, md);
	for (b = 0; b < BPB + 5000; b += 2)
		KUNIT_EXPECT_FALSE(test, dsm_set_present(md, b));
	KUNIT_EXPECT_EQ(test, dsm_nr_present(md), (BPB + 5000ULL) / 2);
	KUNIT_EXPECT_EQ(test, dsm_commit_begin(md), (BPB + 5000ULL) / 2);
	dsm_commit_apply(md);
	for (b = 0; b < BPB + 5000; b++)
		if (dsm_committable(md, b) != !(b & 1)) {
			KUNIT_FAIL(test, "block %llu", b);
			break;
		}
	/* a second commit finds nothing new */
	KUNIT_EXPECT_EQ(test, dsm_commit_begin(md), 0ULL);
	for (b = 1; b < BPB + 5000 - 1; b += 2)
		KUNIT_EXPECT_FALSE(test, dsm_set_present(md, b));
	KUNIT_EXPECT_TRUE(test, dsm_set_present(md, BPB + 5000 - 1));
	dsm_destroy_incore(md);
}

static struct kunit_case stream_commit_cases[] = {
	KUNIT_CASE_PARAM(stream_commit_test, commit_gen_params),
	KUNIT_CASE(stream_pending_growth_test),
	{}
};

static struct kunit_suite stream_commit_suite = {
	.name = "dm_stream_commit",
	.test_cases = stream_commit_cases,
};

/*
 * Per-consumer dirty maps and in-core snapshots.  Script steps:
 *   'D' - b  block b written: dsm_set_dirty(b)
 *   'X' c -  cut a snapshot of consumer c (in core)
 *   'M' c -  merge (abort) consumer c's snapshot
 *   'd' c n  expect n blocks dirty for c (snapshot not counted)
 *   'y' c b  expect b dirty for c; 'n' c b not dirty for c
 *   's' c b  expect b in c's snapshot
 *   'A' - b  expect b dirty for every consumer; 'a' - b not for all
 */
struct snap_step {
	char op;
	unsigned int c;
	u64 arg;
};

struct snap_case {
	const char *desc;
	struct snap_step steps[14];
};

static const struct snap_case snap_cases[] = {
	{ "a write marks every consumer",
	  { {'D', 0, 5}, {'d', 0, 1}, {'d', 3, 1}, {'A', 0, 5},
	    {'a', 0, 6} } },
	{ "a cut moves the dirty set into the snapshot",
	  { {'D', 0, 5}, {'D', 0, 7}, {'X', 1}, {'d', 1, 0}, {'s', 1, 5},
	    {'s', 1, 7}, {'n', 1, 5}, {'d', 0, 2}, {'a', 0, 5} } },
	{ "a rewrite after the cut is dirty again",
	  { {'D', 0, 5}, {'X', 1}, {'D', 0, 5}, {'d', 1, 1}, {'y', 1, 5},
	    {'s', 1, 5}, {'A', 0, 5} } },
	{ "abort restores the set without counting twice",
	  { {'D', 0, 5}, {'D', 0, 7}, {'X', 1}, {'D', 0, 7}, {'M', 1},
	    {'d', 1, 2}, {'y', 1, 5}, {'y', 1, 7} } },
	{ "a cut of one consumer leaves the others",
	  { {'D', 0, 5}, {'X', 2}, {'d', 0, 1}, {'d', 1, 1}, {'d', 2, 0},
	    {'d', 3, 1} } },
	{ "a cut across bitmap slices",
	  { {'D', 0, 1}, {'D', 0, BPB + 1}, {'D', 0, 2 * BPB + 7},
	    {'X', 3}, {'s', 3, BPB + 1}, {'s', 3, 2 * BPB + 7},
	    {'d', 3, 0}, {'M', 3}, {'d', 3, 3} } },
};

static void snap_case_desc(const struct snap_case *c, char *desc)
{
	strscpy(desc, c->desc, KUNIT_PARAM_DESC_SIZE);
}

KUNIT_ARRAY_PARAM(snap, snap_cases, snap_case_desc);

static void stream_snapshot_test(struct kunit *test)
{
	const struct snap_case *c = test->param_value;
	struct dm_stream_metadata *md = dsm_create_incore(3 * BPB);
	const struct snap_step *s;
	u64 gen = 1;

	KUNIT_ASSERT_NOT_NULL(test, md);
	for (s = c->steps; s->op; s++) {
		switch (s->op) {
		case 'D':
			dsm_set_dirty(md, s->arg);
			break;
		case 'X':
			KUNIT_ASSERT_EQ(test, dsm_snapshot_incore(md, s->c, gen++),
					0);
			break;
		case 'M':
			dsm_snapshot_merge(md, s->c);
			break;
		case 'd':
			KUNIT_EXPECT_EQ(test, dsm_nr_dirty(md, s->c), s->arg);
			break;
		case 'y':
		case 'n':
			KUNIT_EXPECT_EQ(test, dsm_dirty_test(md, s->c, s->arg),
					s->op == 'y');
			break;
		case 's':
			KUNIT_EXPECT_TRUE(test, dsm_test(dsm_snap_map(md, s->c),
							 s->arg));
			break;
		case 'A':
		case 'a':
			KUNIT_EXPECT_EQ(test, dsm_dirty_all(md, s->arg),
					s->op == 'A');
			break;
		}
	}
	dsm_destroy_incore(md);
}

/*
 * The write-intent state machine, in core, regions of 8 blocks.  Steps:
 *   'W' - b  a write to b must wait (dsm_write_ready() false)
 *   'w' - b  a write to b may go
 *   'r' - b  a write to b may go, b not the first block of its bio
 *   'U' - b  a REQ_FUA write to b must wait
 *   'C' - -  a commit's intent steps (begin, then end: durable)
 *   'F' - -  a commit that fails (begin, then end: not durable)
 *   'T' - n  a tick; n: 1 if it must ask for a commit, 0 if not
 *   'D' - -  drop every region at the next commit (suspend)
 *   'h' - n  n regions held
 *   'M' - b  b's commit completed (dsm_mark_durable)
 *   'O' - -  write intent off
 *   'P' - b  b is present, and a commit recorded it
 *   'p' - b  b is present in core only (no commit since)
 *   'A' - n  dsm_intent_ahead(): n 1 if a region was asked for ahead
 */
struct intent_case {
	const char *desc;
	struct snap_step steps[20];
};

static const struct intent_case intent_cases[] = {
	{ "the first write in a region waits, the next ones go",
	  { {'W', 0, 5}, {'h', 0, 0}, {'C'}, {'h', 0, 1}, {'w', 0, 6},
	    {'w', 0, 0}, {'w', 0, 7}, {'W', 0, 8}, {'C'}, {'h', 0, 2},
	    {'w', 0, 15} } },
	{ "a region idle for three ticks is dropped",
	  { {'W', 0, 5}, {'C'}, {'w', 0, 4}, {'T', 0, 0}, {'T', 0, 0},
	    {'T', 0, 0}, {'T', 0, 1}, {'h', 0, 1}, {'C'}, {'h', 0, 0},
	    {'W', 0, 4} } },
	{ "a region in use is kept",
	  { {'W', 0, 5}, {'C'}, {'T', 0, 0}, {'w', 0, 4}, {'T', 0, 0},
	    {'w', 0, 4}, {'T', 0, 0}, {'w', 0, 2}, {'T', 0, 0}, {'C'},
	    {'h', 0, 1}, {'w', 0, 3} } },
	{ "suspend drops every region",
	  { {'W', 0, 5}, {'W', 0, 100}, {'C'}, {'h', 0, 2}, {'D'}, {'C'},
	    {'h', 0, 0}, {'W', 0, 5}, {'W', 0, 101} } },
	{ "a FUA write waits even in an open region, not once durable",
	  { {'W', 0, 5}, {'C'}, {'w', 0, 4}, {'U', 0, 4}, {'C'},
	    {'M', 0, 4}, {'w', 0, 4}, {'h', 0, 1} } },
	{ "a failed commit grants nothing and asks again",
	  { {'W', 0, 5}, {'F'}, {'h', 0, 0}, {'W', 0, 6}, {'C'},
	    {'h', 0, 1}, {'w', 0, 7} } },
	{ "intent off: every first write waits",
	  { {'O'}, {'W', 0, 5}, {'C'}, {'h', 0, 0}, {'W', 0, 6},
	    {'M', 0, 6}, {'w', 0, 6} } },
	{ "a block committed dirty goes without a region",
	  { {'W', 0, 5}, {'C'}, {'M', 0, 5}, {'D'}, {'C'}, {'h', 0, 0},
	    {'w', 0, 5}, {'W', 0, 6} } },
	{ "the commit that closes a region makes its written blocks durable",
	  { {'P', 0, 5}, {'P', 0, 6}, {'P', 0, 7}, {'W', 0, 5}, {'C'},
	    {'w', 0, 6}, {'D'}, {'C'}, {'h', 0, 0}, {'w', 0, 5},
	    {'w', 0, 6}, {'W', 0, 7}, {'h', 0, 0} } },
	{ "an idle region's written blocks are durable once it is dropped",
	  { {'P', 0, 5}, {'W', 0, 5}, {'C'}, {'w', 0, 5}, {'T', 0, 0},
	    {'T', 0, 0}, {'T', 0, 0}, {'T', 0, 1}, {'C'}, {'h', 0, 0},
	    {'w', 0, 5} } },
	{ "a block not yet committed present is not durable after the close",
	  { {'P', 0, 5}, {'p', 0, 6}, {'W', 0, 5}, {'C'}, {'w', 0, 6},
	    {'D'}, {'C'}, {'w', 0, 5}, {'W', 0, 6} } },
	{ "a closing commit that fails makes nothing durable",
	  { {'P', 0, 5}, {'W', 0, 5}, {'C'}, {'w', 0, 5}, {'D'}, {'F'},
	    {'h', 0, 0}, {'W', 0, 5} } },
	{ "a sequential writer near a region's end opens the next one ahead",
	  { {'W', 0, 4}, {'A', 0, 0}, {'C'}, {'w', 0, 5}, {'A', 0, 0},
	    {'w', 0, 6}, {'A', 0, 1}, {'A', 0, 0}, {'w', 0, 7},
	    {'A', 0, 0}, {'h', 0, 1}, {'C'}, {'h', 0, 2}, {'w', 0, 8},
	    {'w', 0, 14}, {'A', 0, 0}, {'w', 0, 15}, {'A', 0, 1} } },
	{ "a write near a region's end after a clean block opens nothing",
	  { {'W', 0, 4}, {'C'}, {'w', 0, 7}, {'A', 0, 0}, {'C'},
	    {'h', 0, 1}, {'W', 0, 8} } },
	{ "a write after a block whose bits are on disk opens nothing",
	  { {'W', 0, 5}, {'C'}, {'M', 0, 5}, {'w', 0, 6}, {'A', 0, 0},
	    {'C'}, {'h', 0, 1}, {'W', 0, 8} } },
	{ "a block after the first of a bio does not ask ahead",
	  { {'W', 0, 5}, {'C'}, {'M', 0, 5}, {'w', 0, 6}, {'r', 0, 7},
	    {'A', 0, 0}, {'C'}, {'h', 0, 1}, {'W', 0, 8} } },
	{ "a region asked for ahead is dropped by a suspend",
	  { {'W', 0, 5}, {'C'}, {'w', 0, 6}, {'A', 0, 1}, {'D'}, {'C'},
	    {'h', 0, 0}, {'W', 0, 8} } },
	{ "the last region asks for nothing ahead",
	  { {'W', 0, 3 * BPB - 3}, {'C'}, {'w', 0, 3 * BPB - 2},
	    {'A', 0, 0}, {'w', 0, 3 * BPB - 1}, {'A', 0, 0},
	    {'h', 0, 1} } },
};

static void intent_case_desc(const struct intent_case *c, char *desc)
{
	strscpy(desc, c->desc, KUNIT_PARAM_DESC_SIZE);
}

KUNIT_ARRAY_PARAM(intent, intent_cases, intent_case_desc);

static void stream_intent_test(struct kunit *test)
{
	const struct intent_case *c = test->param_value;
	struct dm_stream_metadata *md = dsm_create_incore(3 * BPB);
	const struct snap_step *s;

	KUNIT_ASSERT_NOT_NULL(test, md);
	/* no region held: no commit, no device needed */
	KUNIT_ASSERT_EQ(test, dsm_set_intent(md, NULL, 3), 0);
	for (s = c->steps; s->op; s++) {
		switch (s->op) {
		case 'W':
		case 'w':
		case 'r':
			KUNIT_EXPECT_EQ_MSG(test,
					    dsm_write_ready(md, s->arg, false,
							    s->op != 'r'),
					    s->op != 'W', "block %llu", s->arg);
			break;
		case 'U':
			KUNIT_EXPECT_FALSE(test, dsm_write_ready(md, s->arg,
								 true, true));
			break;
		case 'C':
		case 'F':
			dsm_intent_commit_incore(md, s->op == 'C');
			break;
		case 'T':
			KUNIT_EXPECT_EQ(test, dsm_intent_tick(md), !!s->arg);
			break;
		case 'D':
			dsm_intent_drop(md);
			break;
		case 'h':
			KUNIT_EXPECT_EQ(test, dsm_intent_held(md), (u32)s->arg);
			break;
		case 'M':
			dsm_mark_durable(md, s->arg);
			break;
		case 'O':
			KUNIT_ASSERT_EQ(test,
					dsm_set_intent(md, NULL, DSM_INTENT_OFF),
					0);
			break;
		case 'P':
			dsm_set_present(md, s->arg);
			dsm_commit_begin(md);
			dsm_commit_apply(md);
			break;
		case 'p':
			dsm_set_present(md, s->arg);
			break;
		case 'A':
			KUNIT_EXPECT_EQ(test, dsm_intent_ahead(md), !!s->arg);
			break;
		}
	}
	dsm_destroy_incore(md);
}

/* dsm_next_range over a fixed map: bits 3-5, 10, 63-65 and 99 of 100. */
struct range_case {
	const char *desc;
	u64 from;
	bool set;
	bool found;
	u64 start, len;
};

static const struct range_case range_cases[] = {
	{ "first set run", 0, true, true, 3, 3 },
	{ "from inside a run", 4, true, true, 4, 2 },
	{ "single bit", 6, true, true, 10, 1 },
	{ "run across a word edge", 11, true, true, 63, 3 },
	{ "last bit of the map", 66, true, true, 99, 1 },
	{ "cursor at the end", 100, true, false, 0, 0 },
	{ "cursor beyond the end", 1000, true, false, 0, 0 },
	{ "first clear run", 0, false, true, 0, 3 },
	{ "clear run up to the end", 98, false, true, 98, 1 },
	{ "no clear bit left", 99, false, false, 0, 0 },
};

static void range_case_desc(const struct range_case *c, char *desc)
{
	strscpy(desc, c->desc, KUNIT_PARAM_DESC_SIZE);
}

KUNIT_ARRAY_PARAM(range, range_cases, range_case_desc);

/* The map of the range and count cases: bits 3-5, 10, 63-65 and 99 of 100. */
static unsigned long *range_test_map(struct kunit *test)
{
	unsigned long *map = kunit_kzalloc(test, BITS_TO_LONGS(100) *
					   sizeof(long), GFP_KERNEL);

	KUNIT_ASSERT_NOT_NULL(test, map);
	bitmap_set(map, 3, 3);
	bitmap_set(map, 10, 1);
	bitmap_set(map, 63, 3);
	bitmap_set(map, 99, 1);
	return map;
}

static void stream_range_test(struct kunit *test)
{
	const struct range_case *c = test->param_value;
	unsigned long *map = range_test_map(test);
	u64 start = 0, len = 0;

	KUNIT_EXPECT_EQ(test, dsm_next_range(map, 100, c->from, c->set,
					     &start, &len), c->found);
	if (c->found) {
		KUNIT_EXPECT_EQ(test, start, c->start);
		KUNIT_EXPECT_EQ(test, len, c->len);
	}
}

/* dsm_count_clear over the same map. */
struct count_case {
	const char *desc;
	u64 first, end, clear;
};

static const struct count_case count_cases[] = {
	{ "whole map", 0, 100, 92 },
	{ "empty range", 5, 5, 0 },
	{ "inside a set run", 3, 6, 0 },
	{ "one clear bit", 6, 7, 1 },
	{ "across a word edge", 60, 70, 7 },
	{ "up to the last bit", 98, 100, 1 },
};

static void count_case_desc(const struct count_case *c, char *desc)
{
	strscpy(desc, c->desc, KUNIT_PARAM_DESC_SIZE);
}

KUNIT_ARRAY_PARAM(count, count_cases, count_case_desc);

static void stream_count_test(struct kunit *test)
{
	const struct count_case *c = test->param_value;
	unsigned long *map = range_test_map(test);

	KUNIT_EXPECT_EQ(test, dsm_count_clear(map, c->first, c->end),
			c->clear);
}

static struct kunit_case stream_snapshot_cases[] = {
	KUNIT_CASE_PARAM(stream_snapshot_test, snap_gen_params),
	KUNIT_CASE_PARAM(stream_intent_test, intent_gen_params),
	KUNIT_CASE_PARAM(stream_range_test, range_gen_params),
	KUNIT_CASE_PARAM(stream_count_test, count_gen_params),
	{}
};

static struct kunit_suite stream_snapshot_suite = {
	.name = "dm_stream_snapshot",
	.test_cases = stream_snapshot_cases,
};

static struct kunit_case stream_format_cases[] = {
	KUNIT_CASE_PARAM(stream_sb_test, sb_gen_params),
	KUNIT_CASE(stream_sb_zero_test),
	KUNIT_CASE_PARAM(stream_sb_intent_test, intent_sb_gen_params),
	KUNIT_CASE(stream_geometry_test),
	{}
};

static struct kunit_suite stream_format_suite = {
	.name = "dm_stream_superblock",
	.test_cases = stream_format_cases,
};

static struct kunit_case stream_bitmap_cases[] = {
	KUNIT_CASE_PARAM(stream_bitmap_test, bitmap_gen_params),
	KUNIT_CASE_PARAM(stream_bitmap_damage_test, damage_gen_params),
	{}
};

static struct kunit_suite stream_bitmap_suite = {
	.name = "dm_stream_bitmap",
	.test_cases = stream_bitmap_cases,
};

kunit_test_suites(&stream_format_suite, &stream_bitmap_suite,
		  &stream_commit_suite, &stream_snapshot_suite);

MODULE_IMPORT_NS(EXPORTED_FOR_KUNIT_TESTING);
MODULE_DESCRIPTION("KUnit tests of the dm-stream metadata encodings and state machines");
MODULE_LICENSE("GPL");
