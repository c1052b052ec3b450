// SPDX-License-Identifier: GPL-2.0
/*
 * dm-stream metadata: superblock and per-block bitmaps, read and written
 * through dm-bufio.
 *
 * On-disk layout (metadata blocks of DSM_BLOCK_SIZE bytes):
 *
 *   block 0                      superblock (struct stream_sb_disk)
 *   blocks 1 .. 15               reserved (zero), room for later records
 *   then DSM_NR_BITMAPS bitmaps, each bitmap_blocks blocks long:
 *     bitmap 0                   present map
 *     bitmap 1 + 2c              dirty map of consumer c (c < 4)
 *     bitmap 2                   the invalidate set of an image update
 *     bitmap 2 + 2c, c > 0       reserved (zero)
 *
 *   then the journal: 2 slots of DSM_JNL_SLOT_BLOCKS blocks
 *
 * bitmap_blocks = ceil(nr_blocks / DSM_BITS_PER_BLOCK), so the metadata
 * device needs (16 + 9 * bitmap_blocks + 130) * 4 KiB.  Every bitmap block
 * starts with a header (crc32c, bitmap index, block number, magic, format
 * version) so that a misdirected write is detected on load instead of
 * silently changing which blocks are present.
 *
 * Present and dirty maps: the target keeps every map in core; the in-core
 * copies are authoritative for I/O and the on-disk copies trail them by at
 * most one commit.  Every metadata write after format goes through the
 * journal (see "The journal" below), so each batch of block images is
 * atomic: after a power cut at any instant, including half-way through a
 * metadata write, the metadata loads as the state after the last whole
 * batch.
 *
 * Commit protocol (dsm_commit(), in the worker or a quiesced message,
 * serialised by md->commit_lock):
 *
 *   1. Take the blocks that became present since the last commit.  A block
 *      is marked present only after the write of its data to the data
 *      device has completed.
 *   2. If there are any, flush the data device: their data is durable.
 *   3. Write intent: close the idle regions, open the requested ones
 *      (dsm_intent_begin()); take the blocks of the closed regions whose
 *      dirty bits this commit writes (__intent_take_closed()).
 *   4. Stage the changed dirty-map blocks, then the changed present-map
 *      blocks (present bits from md->present_commit: step 1's blocks), then
 *      the superblock (generation, write-intent map), and commit: one
 *      journal write and one metadata flush.  A split batch keeps that
 *      order.
 *
 * Rule 1 (present): a present bit reaches the disk only after the flush of
 * step 2, issued after the block's data write completed.
 *
 * Rule 2 (dirty): a write to a present block is issued only once the
 * metadata says the block is, or may be, dirty: its dirty bits for every
 * consumer are on disk (md->durable), or its write-intent region is open
 * on disk (md->intent).  Otherwise dsm_write_ready() sets its bits in core
 * and asks for the region, and the bio waits in the worker for the next
 * commit (dm-era holds writes the same way).  Writes to absent blocks
 * (whole-block fills) need no wait: until a commit records the block
 * present, a crash makes it absent and it reads as the image again; their
 * dirty bits are staged before their present bits.  A dirty bit without
 * new data only costs a redundant transfer, so over-approximating is safe.
 *
 * Write intent (md's write-intent bitmap): the superblock names regions of
 * 1 << intent_shift blocks that may hold writes whose dirty bits are not
 * on disk.  A write in an open region sets its bits in core and goes; the
 * periodic commit writes the bits.  A region is closed when idle for
 * INTENT_IDLE_TICKS commit periods, or at suspend (dsm_intent_drop()).
 * Closing is safe because of two pairings: the writer sets its bits (and
 * marks their slices changed), smp_mb(), tests the region; the commit
 * clears the region in core, smp_mb(), then stages the changed slices.
 * Either the writer sees the region closed and waits, or the commit that
 * closes the region stages the writer's bits -- and the superblock that
 * closes it is staged after them.  The blocks that commit finds dirty
 * and committed present become durable with it (__intent_take_closed()):
 * their next write goes without a region.  A sequential writer near the
 * end of an open region asks for the next one ahead (intent_ahead()), so
 * it does not wait at every region boundary.  A load that finds regions
 * open (an unclean shutdown) makes all their blocks dirty for every
 * consumer and commits that before anything else (__intent_recover()).
 * SB_F_INTENT is set exactly when a region is open, so a module that does
 * not know write intent refuses such a superblock rather than ignoring
 * it.
 *
 * Snapshots.  Every write marks its block dirty for every consumer.
 * dsm_snapshot() (I/O quiesced) moves consumer c's live dirty bits into an
 * in-core snapshot map and persists the snapshot's id in the superblock
 * (consumer_gen[c]), so an id is never handed out twice, even across a
 * crash.  From then on, commits write dirty[c] | snap[c] as c's on-disk
 * dirty map: the disk does not know about the snapshot, it only ever sees
 * a superset of what is dirty.  Consequences:
 *   - a reload or a power cut aborts a snapshot in progress: its blocks
 *     are simply dirty again (documented; the drain is redone);
 *   - abort is in core only: dirty[c] |= snap[c];
 *   - ack clears snap[c] and rewrites the affected blocks of c's on-disk
 *     dirty map from the live map.  This is the one normal-operation path
 *     where bits go from 1 to 0; a power cut in it leaves each batch old
 *     (still dirty: sent again, never lost) or new (acknowledged).  Blocks
 *     written after the cut are set in the live map, so they stay dirty
 *     (and a crash may make the other blocks of their open write-intent
 *     regions dirty again: sent again, never lost).
 *
 * Revert (dsm_revert(), target suspended, after a normal commit) clears
 * bits over more blocks than one batch holds.  It is made idempotent
 * instead: the superblock is written with SB_F_REVERTING
 * first; then every present-bitmap block is rewritten with
 * present &= ~dirty[0], and the blocks are added to the dirty maps of the
 * other consumers (their copies now differ from the device), and flushed;
 * only then are consumer 0's dirty bitmap blocks cleared and flushed;
 * finally the flag is cleared.  A power cut anywhere leaves the flag set
 * and dirty[0] still naming every block not yet made absent, so dsm_open()
 * simply runs the same steps again.
 *
 * Image update (dsm_invalidate(), target suspended) works the same way:
 * the set of blocks to invalidate is written to bitmap 2 and flushed, then
 * the superblock gets SB_F_INVALIDATING (plus SB_F_INVAL_KEEP for the keep
 * policy) and the new image id; then present &= ~set (with keep, minus the
 * blocks dirty for consumer 0) and dirty[c > 0] |= set are written and
 * flushed, then (discard policy) dirty[0] &= ~set, then bitmap 2 is
 * cleared and the flags dropped.  Every step is idempotent and a load
 * that finds the flag reruns them from bitmap 2.
 */
#include "dm-stream-metadata.h"

#include <linux/crc32c.h>
#include <linux/device-mapper.h>
#include <linux/dm-bufio.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/uuid.h>
#include <kunit/visibility.h>

#define DM_MSG_PREFIX "stream metadata"

#define SB_MAGIC	0x6d61657274736d64ULL	/* "dmstream" */
/* superblock flags */
#define SB_F_REVERTING	0x1U	/* a revert was interrupted: redo it */
#define SB_F_INVALIDATING 0x2U	/* an image update was interrupted */
#define SB_F_INVAL_KEEP	0x4U	/* ... with the keep policy */
#define SB_F_INTENT	0x8U	/* the write-intent map names regions */
/*
 * Consumer 0's dirty map holds blocks of regions recovered after an
 * unclean shutdown: "dirty for 0" no longer means "changed here", which
 * an image update with the keep policy relies on.  Cleared by a revert
 * and by consumer 0's next ack (its snapshot took the whole map).
 */
#define SB_F_APPROX	0x10U
#define SB_KNOWN_FLAGS	(SB_F_REVERTING | SB_F_INVALIDATING | \
			 SB_F_INVAL_KEEP | SB_F_INTENT | SB_F_APPROX)
#define INVAL_MAP	2	/* bitmap holding the invalidate set */
#define SB_CSUM_XOR	0x5e7a11edU
#define BITMAP_CSUM_XOR	0x0b17c0deU
#define BITMAP_MAGIC	0x706d7462U		/* "btmp" */
#define JNL_MAGIC	0x6c6e726a6d727473ULL	/* "strmjrnl" */
#define JNL_CSUM_XOR	0x6a6f7572U

struct stream_sb_disk {
	__le32 csum;		/* crc32c of the rest of the block */
	__le32 flags;
	__le64 blocknr;
	__u8 uuid[16];
	__le64 magic;
	__le32 version;
	__le32 block_sectors;	/* data block size, 512-byte sectors */
	__le64 nr_blocks;
	__le64 generation;	/* commit generation */
	__le32 meta_block_size;
	__le32 nr_consumers;	/* dirty-map slots on disk */
	__le32 bitmap_blocks;	/* metadata blocks per bitmap */
	__le32 first_bitmap;	/* metadata block of bitmap 0 */
	__le64 consumer_gen[DSM_MAX_CONSUMERS];	/* last snapshot id cut */
	char image_id[DSM_IMAGE_ID_LEN];	/* NUL-terminated, or empty */
	__le32 intent_shift;	/* log2 blocks per write-intent region */
	__le32 pad;
	/* regions that may hold writes missing from the dirty maps */
	__le64 intent[DSM_INTENT_WORDS];
} __packed;

struct stream_bitmap_disk {
	__le32 csum;		/* crc32c of the rest of the block */
	__le32 index;		/* which bitmap */
	__le64 blocknr;
	__le32 magic;
	__le32 version;
	__le64 bits[DSM_BITMAP_WORDS];
} __packed;

static_assert(sizeof(struct stream_bitmap_disk) == DSM_BLOCK_SIZE);
static_assert(sizeof(struct stream_sb_disk) <= DSM_BLOCK_SIZE);

/*
 * Journal slot header (metadata block dsm_journal_start() + slot * 65); the
 * slot's block images follow it, one per entry, in entry order.
 */
struct stream_jnl_entry_disk {
	__le64 location;	/* metadata block the image belongs at */
	__le32 csum;		/* crc32c of the image */
	__le32 pad;
} __packed;

struct stream_jnl_disk {
	__le32 csum;		/* crc32c of the rest of the block */
	__le32 nr;		/* block images in this slot */
	__le64 blocknr;
	__u8 uuid[16];		/* the superblock's */
	__le64 magic;
	__le32 version;
	__le32 pad;
	__le64 seq;		/* batch sequence number, slot = seq & 1 */
	struct stream_jnl_entry_disk e[DSM_JNL_ENTRIES];
} __packed;

static_assert(sizeof(struct stream_jnl_disk) <= DSM_BLOCK_SIZE);

struct dm_stream_metadata {
	/* Registry of open metadata (see dsm_open()), under dsm_registry_lock. */
	struct list_head node;
	dev_t dev;
	unsigned int refs;

	struct block_device *bdev;
	struct dm_bufio_client *bufio;
	struct dsm_sb_info sb;
	bool failed;		/* a journal write failed: no more commits */

	/*
	 * The background fill's switch and rate (bytes/s, 0: no limit): not
	 * on disk, but here rather than in the target so that a table
	 * reload, which shares this object, keeps them.  READ_ONCE.
	 */
	bool fill_on;
	u64 fill_rate;

	/* Live maps, any context, atomic bitops. */
	unsigned long *present;
	unsigned long *dirty[DSM_MAX_CONSUMERS];
	atomic64_t nr_present;
	atomic64_t nr_dirty[DSM_MAX_CONSUMERS];

	/*
	 * Bitmap blocks (indexed by block within the bitmap) that differ
	 * from disk.  Atomic bitops, any context.
	 */
	unsigned long *changed_present;
	unsigned long *changed_dirty[DSM_MAX_CONSUMERS];
	/* Slices with present bits set since the last dsm_commit_begin(). */
	unsigned long *pending_present;

	/*
	 * Blocks whose dirty bits, for every consumer, are on disk: writes
	 * to them need no commit first.  Atomic bitops, any context; set
	 * only after a commit (dsm_mark_durable(), or by the commit itself
	 * for the regions it closed: __intent_durable_closed()) or from the
	 * bits loaded, cleared wholesale while the device is quiesced.
	 */
	unsigned long *durable;

	/*
	 * Write intent (see "Write intent" at the top), regions of
	 * 1 << sb.intent_shift blocks (changed only while quiesced).
	 * intent: regions whose intent is on disk; writers test it, only a
	 * commit clears a bit (before staging) or sets one (once its batch
	 * is durable).  intent_want: regions writers wait for; intent_used:
	 * written since the last tick.  All three: atomic bitops, any
	 * context.  Under commit_lock: intent_disk (the superblock's map,
	 * sb.intent points to it), intent_add (regions this commit adds),
	 * intent_clear (idle regions to drop), intent_age (ticks idle) and
	 * intent_drop_all.
	 */
	unsigned long *intent;
	unsigned long *intent_want;
	unsigned long *intent_used;
	unsigned long *intent_disk;
	unsigned long *intent_add;
	unsigned long *intent_clear;
	u8 *intent_age;
	bool intent_drop_all;
	/* a region was asked for ahead (intent_ahead()): commit soon */
	bool intent_ahead;

	/*
	 * Serialises dsm_commit() and every other metadata write; protects
	 * present_commit, present_taken, taken_slices, the journal staging
	 * area, the snapshot state and the invalidate set.  snap_gen is
	 * also read locklessly (READ_ONCE).
	 */
	struct mutex commit_lock;
	unsigned long *present_commit;
	/*
	 * present, as dsm_commit_begin() saw it; after dsm_commit_apply(),
	 * the blocks a commit makes durable (__intent_take_closed())
	 */
	unsigned long *present_taken;
	unsigned long *taken_slices;
	unsigned long *snap[DSM_MAX_CONSUMERS];	/* allocated on first use */
	u64 snap_gen[DSM_MAX_CONSUMERS];	/* 0: no snapshot */
	u64 snap_blocks[DSM_MAX_CONSUMERS];
	unsigned long *inval;			/* allocated on first use */

	/* Journal: the batch being staged (commit_lock). */
	u64 jnl_start;			/* first journal block */
	u64 jnl_seq;			/* sequence number of the next batch */
	unsigned int jnl_nr;		/* block images staged */
	u64 jnl_loc[DSM_JNL_ENTRIES];
	struct page *jnl_pages[DSM_JNL_SLOT_BLOCKS];	/* header + images */

	/*
	 * The last batch's in-place writes (own bios: dm-bufio's write-back
	 * always ends with a flush).  inplace_lock (irqsave, taken in bio
	 * completion) guards inplace_n and inplace_error.
	 */
	struct page *inplace_pages[DSM_JNL_ENTRIES];
	spinlock_t inplace_lock;		/* see above */
	unsigned int inplace_n;
	int inplace_error;
	wait_queue_head_t inplace_wait;
	const void *owner;		/* the dm device using it */
	spinlock_t id_lock;		/* sb.image_id against its readers */
};

/* Open metadata objects, one per metadata device; see dsm_open(). */
static DEFINE_MUTEX(dsm_registry_lock);
static LIST_HEAD(dsm_registry);

u32 dsm_bitmap_blocks(u64 nr_blocks)
{
	return DIV_ROUND_UP_ULL(nr_blocks, DSM_BITS_PER_BLOCK);
}
EXPORT_SYMBOL_IF_KUNIT(dsm_bitmap_blocks);

u64 dsm_journal_start(u64 nr_blocks)
{
	return DSM_FIRST_BITMAP +
		(u64)DSM_NR_BITMAPS * dsm_bitmap_blocks(nr_blocks);
}

u64 dsm_total_blocks(u64 nr_blocks)
{
	return dsm_journal_start(nr_blocks) + DSM_JNL_BLOCKS;
}

u64 dsm_intent_regions(u64 nr_blocks, u32 shift)
{
	return DIV_ROUND_UP_ULL(nr_blocks, 1ULL << shift);
}
EXPORT_SYMBOL_IF_KUNIT(dsm_total_blocks);

static u32 block_csum(const void *buf, u32 xor)
{
	return crc32c(~0U, buf + sizeof(__le32),
		      DSM_BLOCK_SIZE - sizeof(__le32)) ^ xor;
}

void dsm_sb_reseal(void *buf)
{
	*(__le32 *)buf = cpu_to_le32(block_csum(buf, SB_CSUM_XOR));
}
EXPORT_SYMBOL_IF_KUNIT(dsm_sb_reseal);

void dsm_bitmap_reseal(void *buf)
{
	*(__le32 *)buf = cpu_to_le32(block_csum(buf, BITMAP_CSUM_XOR));
}
EXPORT_SYMBOL_IF_KUNIT(dsm_bitmap_reseal);

bool dsm_buf_is_zero(const void *buf, size_t len)
{
	return !memchr_inv(buf, 0, len);
}
EXPORT_SYMBOL_IF_KUNIT(dsm_buf_is_zero);

/*
 * 64 bits of an in-core bitmap of @nr bits from bit @bit, a multiple of 64
 * (slices start at multiples of 64: DSM_BITS_PER_BLOCK is 509 * 64).  Bits
 * at and beyond @nr read as zero.
 */
static u64 get_word(const unsigned long *bits, u64 nr, u64 bit)
{
	u64 word;

	if (BITS_PER_LONG == 64) {
		word = bits[bit / BITS_PER_LONG];
	} else {
		word = bits[bit / BITS_PER_LONG];
		if (bit + 32 < nr)
			word |= (u64)bits[bit / BITS_PER_LONG + 1] << 32;
	}
	if (nr - bit < 64)
		word &= (1ULL << (nr - bit)) - 1;
	return word;
}

/* OR @word into the 64 bits from @bit (a multiple of 64, within the map). */
static void or_word(unsigned long *bits, u64 bit, u64 word)
{
	bits[bit / BITS_PER_LONG] |= (unsigned long)word;
	if (BITS_PER_LONG == 32 && word >> 32)
		bits[bit / BITS_PER_LONG + 1] |= (unsigned long)(word >> 32);
}

void dsm_sb_pack(const struct dsm_sb_info *sb, u64 blocknr, void *buf)
{
	struct stream_sb_disk *d = buf;
	unsigned int c;

	memset(buf, 0, DSM_BLOCK_SIZE);
	d->flags = cpu_to_le32(sb->flags);
	d->blocknr = cpu_to_le64(blocknr);
	memcpy(d->uuid, sb->uuid, sizeof(d->uuid));
	d->magic = cpu_to_le64(SB_MAGIC);
	d->version = cpu_to_le32(DSM_FORMAT_VERSION);
	d->block_sectors = cpu_to_le32(sb->block_sectors);
	d->nr_blocks = cpu_to_le64(sb->nr_blocks);
	d->generation = cpu_to_le64(sb->generation);
	d->meta_block_size = cpu_to_le32(DSM_BLOCK_SIZE);
	d->nr_consumers = cpu_to_le32(sb->nr_consumers);
	d->bitmap_blocks = cpu_to_le32(sb->bitmap_blocks);
	d->first_bitmap = cpu_to_le32(DSM_FIRST_BITMAP);
	for (c = 0; c < DSM_MAX_CONSUMERS; c++)
		d->consumer_gen[c] = cpu_to_le64(sb->consumer_gen[c]);
	strscpy(d->image_id, sb->image_id, sizeof(d->image_id));
	/*
	 * SB_F_INTENT exactly when regions are named: a module that does not
	 * know write intent refuses such a superblock instead of losing the
	 * dirty state the regions stand for.
	 */
	d->flags &= ~cpu_to_le32(SB_F_INTENT);
	d->intent_shift = cpu_to_le32(sb->intent_shift);
	if (sb->intent && !bitmap_empty(sb->intent, DSM_INTENT_BITS)) {
		d->flags |= cpu_to_le32(SB_F_INTENT);
		for (c = 0; c < DSM_INTENT_WORDS; c++)
			d->intent[c] = cpu_to_le64(get_word(sb->intent,
							    DSM_INTENT_BITS,
							    (u64)c * 64));
	}
	d->csum = cpu_to_le32(block_csum(buf, SB_CSUM_XOR));
}
EXPORT_SYMBOL_IF_KUNIT(dsm_sb_pack);

/*
 * The write-intent map of a superblock whose nr_blocks is decoded already:
 * SB_F_INTENT exactly when a region is named, regions of at most
 * DSM_MAX_BLOCKS blocks, none beyond the device.
 */
static int intent_unpack(const struct stream_sb_disk *d,
			 struct dsm_sb_info *sb)
{
	bool flag = le32_to_cpu(d->flags) & SB_F_INTENT, any = false;
	u32 shift = le32_to_cpu(d->intent_shift);
	u64 nr = 0;
	unsigned int w;

	if (shift > DSM_INTENT_OFF) {
		DMERR("superblock write intent: region shift %u", shift);
		return -EUCLEAN;
	}
	if (flag) {
		if (shift > ilog2(DSM_MAX_BLOCKS)) {
			DMERR("superblock write intent: region shift %u", shift);
			return -EUCLEAN;
		}
		nr = dsm_intent_regions(sb->nr_blocks, shift);
	}
	if (sb->intent)
		bitmap_zero(sb->intent, DSM_INTENT_BITS);
	for (w = 0; w < DSM_INTENT_WORDS; w++) {
		u64 word = le64_to_cpu(d->intent[w]), bit = (u64)w * 64;

		if (!word)
			continue;
		if (bit >= nr || (nr - bit < 64 && word >> (nr - bit))) {
			DMERR("superblock write intent: region beyond %llu (flag %d)",
			      nr, flag);
			return -EUCLEAN;
		}
		any = true;
		if (sb->intent)
			or_word(sb->intent, bit, word);
	}
	if (flag && !any) {
		DMERR("superblock write intent: flag set, no region");
		return -EUCLEAN;
	}
	sb->intent_shift = shift;
	return 0;
}

/*
 * Decode and check a superblock.  Each kind of damage has its own errno so
 * that callers (and tests) can tell them apart:
 *   -EILSEQ bad checksum, -EBADMSG bad magic, -EPROTONOSUPPORT unknown
 *   version, -ENXIO wrong block number, -EUCLEAN inconsistent geometry.
 */
int dsm_sb_unpack(const void *buf, u64 blocknr, struct dsm_sb_info *sb,
		  const char **why)
{
	const struct stream_sb_disk *d = buf;
	u32 csum = block_csum(buf, SB_CSUM_XOR);
	unsigned int c;
	int r;

	if (le32_to_cpu(d->csum) != csum) {
		DMERR("superblock checksum: expected %08x, found %08x",
		      csum, le32_to_cpu(d->csum));
		*why = "Metadata superblock checksum mismatch";
		return -EILSEQ;
	}
	if (le64_to_cpu(d->magic) != SB_MAGIC) {
		DMERR("superblock magic: expected %llx, found %llx",
		      SB_MAGIC, le64_to_cpu(d->magic));
		*why = "Metadata superblock has bad magic";
		return -EBADMSG;
	}
	if (le32_to_cpu(d->version) == 1) {
		DMERR("metadata format 1 (no journal) is not supported");
		DMERR("convert it: streamctl upgrade-metadata <metadata dev>");
		*why = "Metadata format 1: run streamctl upgrade-metadata";
		return -EPROTONOSUPPORT;
	}
	if (le32_to_cpu(d->version) != DSM_FORMAT_VERSION) {
		DMERR("superblock version: expected %u, found %u",
		      DSM_FORMAT_VERSION, le32_to_cpu(d->version));
		*why = "Unsupported metadata format version";
		return -EPROTONOSUPPORT;
	}
	if (le32_to_cpu(d->flags) & ~SB_KNOWN_FLAGS) {
		DMERR("superblock flags: unknown bits %x",
		      le32_to_cpu(d->flags) & ~SB_KNOWN_FLAGS);
		*why = "Metadata superblock has unknown flags";
		return -EPROTONOSUPPORT;
	}
	if (le64_to_cpu(d->blocknr) != blocknr) {
		DMERR("superblock location: expected block %llu, found %llu",
		      blocknr, le64_to_cpu(d->blocknr));
		*why = "Metadata superblock is at the wrong location";
		return -ENXIO;
	}
	memcpy(sb->uuid, d->uuid, sizeof(sb->uuid));
	sb->flags = le32_to_cpu(d->flags);
	sb->block_sectors = le32_to_cpu(d->block_sectors);
	sb->nr_blocks = le64_to_cpu(d->nr_blocks);
	sb->generation = le64_to_cpu(d->generation);
	sb->nr_consumers = le32_to_cpu(d->nr_consumers);
	sb->bitmap_blocks = le32_to_cpu(d->bitmap_blocks);
	for (c = 0; c < DSM_MAX_CONSUMERS; c++)
		sb->consumer_gen[c] = le64_to_cpu(d->consumer_gen[c]);
	if (strnlen(d->image_id, sizeof(d->image_id)) == sizeof(d->image_id)) {
		DMERR("superblock image id is not terminated");
		*why = "Metadata superblock has a bad image id";
		return -EUCLEAN;
	}
	memcpy(sb->image_id, d->image_id, sizeof(sb->image_id));
	r = intent_unpack(d, sb);
	if (r) {
		*why = "Metadata superblock write intent is inconsistent";
		return r;
	}
	if (le32_to_cpu(d->meta_block_size) != DSM_BLOCK_SIZE ||
	    le32_to_cpu(d->first_bitmap) != DSM_FIRST_BITMAP ||
	    sb->nr_consumers != DSM_MAX_CONSUMERS ||
	    sb->bitmap_blocks != dsm_bitmap_blocks(sb->nr_blocks)) {
		DMERR("superblock geometry inconsistent: meta block %u, first bitmap %u",
		      le32_to_cpu(d->meta_block_size),
		      le32_to_cpu(d->first_bitmap));
		DMERR("superblock geometry: consumers %u, bitmap blocks %u for %llu blocks",
		      sb->nr_consumers, sb->bitmap_blocks, sb->nr_blocks);
		*why = "Metadata superblock geometry is inconsistent";
		return -EUCLEAN;
	}
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(dsm_sb_unpack);

/*
 * Encode bits [slice * DSM_BITS_PER_BLOCK, +DSM_BITS_PER_BLOCK) of @bits
 * (or'ed with @more unless it is NULL) into metadata block @blocknr.
 * @index is the global number of the bitmap block (bitmap * bitmap_blocks +
 * slice), stored so that a block copied to the wrong bitmap is detected
 * too.
 */
void dsm_bitmap_pack(const unsigned long *bits, const unsigned long *more,
		     u64 nr_bits, u32 slice, u32 index, u64 blocknr, void *buf)
{
	struct stream_bitmap_disk *d = buf;
	u64 first = (u64)slice * DSM_BITS_PER_BLOCK;
	unsigned int w;

	memset(buf, 0, DSM_BLOCK_SIZE);
	d->index = cpu_to_le32(index);
	d->blocknr = cpu_to_le64(blocknr);
	d->magic = cpu_to_le32(BITMAP_MAGIC);
	d->version = cpu_to_le32(DSM_BITMAP_VERSION);
	for (w = 0; w < DSM_BITMAP_WORDS && first + w * 64 < nr_bits; w++) {
		u64 word = get_word(bits, nr_bits, first + w * 64);

		if (more)
			word |= get_word(more, nr_bits, first + w * 64);
		d->bits[w] = cpu_to_le64(word);
	}
	d->csum = cpu_to_le32(block_csum(buf, BITMAP_CSUM_XOR));
}
EXPORT_SYMBOL_IF_KUNIT(dsm_bitmap_pack);

int dsm_bitmap_unpack(const void *buf, u64 blocknr, u32 index,
		      unsigned long *bits, u64 nr_bits, u32 slice,
		      const char **why)
{
	const struct stream_bitmap_disk *d = buf;
	u64 first = (u64)slice * DSM_BITS_PER_BLOCK;
	u32 csum = block_csum(buf, BITMAP_CSUM_XOR);
	unsigned int w;

	if (le32_to_cpu(d->csum) != csum) {
		DMERR("bitmap block %llu checksum: expected %08x, found %08x",
		      blocknr, csum, le32_to_cpu(d->csum));
		*why = "Metadata bitmap block checksum mismatch";
		return -EILSEQ;
	}
	if (le32_to_cpu(d->magic) != BITMAP_MAGIC) {
		DMERR("bitmap block %llu magic: expected %x, found %x",
		      blocknr, BITMAP_MAGIC, le32_to_cpu(d->magic));
		*why = "Metadata bitmap block has bad magic";
		return -EBADMSG;
	}
	if (le32_to_cpu(d->version) != DSM_BITMAP_VERSION) {
		DMERR("bitmap block %llu version: expected %u, found %u",
		      blocknr, DSM_BITMAP_VERSION, le32_to_cpu(d->version));
		*why = "Unsupported metadata bitmap version";
		return -EPROTONOSUPPORT;
	}
	if (le64_to_cpu(d->blocknr) != blocknr ||
	    le32_to_cpu(d->index) != index) {
		DMERR("bitmap block location: expected %llu/%u, found %llu/%u",
		      blocknr, index, le64_to_cpu(d->blocknr),
		      le32_to_cpu(d->index));
		*why = "Metadata bitmap block is at the wrong location";
		return -ENXIO;
	}
	for (w = 0; w < DSM_BITMAP_WORDS; w++) {
		u64 word = le64_to_cpu(d->bits[w]), bit = first + (u64)w * 64;

		if (!word)
			continue;
		if (bit >= nr_bits || (nr_bits - bit < 64 &&
				       word >> (nr_bits - bit))) {
			*why = "Metadata bitmap has bits beyond the device";
			return -EUCLEAN;
		}
		or_word(bits, bit, word);
	}
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(dsm_bitmap_unpack);

/* Metadata block holding block @i (within the bitmap) of bitmap @map. */
static u64 bitmap_location(struct dm_stream_metadata *md, u32 map, u32 i)
{
	return DSM_FIRST_BITMAP + (u64)map * md->sb.bitmap_blocks + i;
}

static u32 dirty_bitmap(unsigned int c)
{
	return 1 + 2 * c;
}

/*
 * The journal.  Every metadata write after format goes through it:
 *
 *   stage()          copy a block image into the batch being built (in
 *                    memory, commit_lock); a full batch is committed first
 *   __jnl_commit()   1. wait for the previous batch's in-place writes;
 *                    2. write header + images to slot (seq & 1) as one
 *                       bio, then flush: the flush makes this batch and
 *                       the previous batch's in-place writes (completed
 *                       in step 1) durable;
 *                    3. copy the images into dm-bufio buffers and start
 *                       writing them in place (not waited for).
 *
 * So a batch costs one metadata flush, and batch N's in-place writes are
 * durable (at batch N + 1's flush) before batch N + 2 overwrites N's
 * slot.  The two slots always hold
 * the last two batches, whose in-place writes may be incomplete or torn;
 * every older batch is wholly in place.  dsm_open() replays the valid slots
 * in sequence order, which yields exactly the state after the newest batch
 * whose slot write completed.  A torn slot fails its checksums and is
 * ignored; its in-place writes had not started.  Batches are applied
 * strictly in order, so a multi-batch operation is a sequence of atomic
 * steps in staging order: callers stage in the order their protocol needs
 * (dirty bits before the present bits that depend on them, a superblock
 * flag before the bitmaps it covers).
 */
static void *stage(struct dm_stream_metadata *md, u64 loc, int *r);

static int __jnl_write_slot(struct dm_stream_metadata *md)
{
	u64 slot = md->jnl_start + (md->jnl_seq & 1) * DSM_JNL_SLOT_BLOCKS;
	struct stream_jnl_disk *h = page_address(md->jnl_pages[0]);
	unsigned int i;
	struct bio *bio;
	int r;

	memset(h, 0, DSM_BLOCK_SIZE);
	h->nr = cpu_to_le32(md->jnl_nr);
	h->blocknr = cpu_to_le64(slot);
	memcpy(h->uuid, md->sb.uuid, sizeof(h->uuid));
	h->magic = cpu_to_le64(JNL_MAGIC);
	h->version = cpu_to_le32(DSM_FORMAT_VERSION);
	h->seq = cpu_to_le64(md->jnl_seq);
	for (i = 0; i < md->jnl_nr; i++) {
		void *img = page_address(md->jnl_pages[1 + i]);

		h->e[i].location = cpu_to_le64(md->jnl_loc[i]);
		h->e[i].csum = cpu_to_le32(crc32c(~0U, img, DSM_BLOCK_SIZE));
	}
	h->csum = cpu_to_le32(block_csum(h, JNL_CSUM_XOR));

	bio = bio_alloc(md->bdev, 1 + md->jnl_nr, REQ_OP_WRITE | REQ_SYNC,
			GFP_NOIO);
	bio->bi_iter.bi_sector = slot * DSM_BLOCK_SECTORS;
	for (i = 0; i <= md->jnl_nr; i++)
		__bio_add_page(bio, md->jnl_pages[i], DSM_BLOCK_SIZE, 0);
	r = submit_bio_wait(bio);
	bio_put(bio);
	/* One flush: this slot and the previous batch's in-place writes. */
	return r ? r : blkdev_issue_flush(md->bdev);
}

static void inplace_endio(struct bio *bio)
{
	struct dm_stream_metadata *md = bio->bi_private;
	unsigned long flags;

	spin_lock_irqsave(&md->inplace_lock, flags);
	if (bio->bi_status)
		md->inplace_error = blk_status_to_errno(bio->bi_status);
	/* md may go as soon as the lock is dropped with inplace_n at 0 */
	if (!--md->inplace_n)
		wake_up(&md->inplace_wait);
	spin_unlock_irqrestore(&md->inplace_lock, flags);
	bio_put(bio);
}

/* Wait for the last batch's in-place writes; returns their error. */
static int wait_inplace(struct dm_stream_metadata *md)
{
	int r;

	spin_lock_irq(&md->inplace_lock);
	wait_event_lock_irq(md->inplace_wait, !md->inplace_n,
			    md->inplace_lock);
	r = md->inplace_error;
	spin_unlock_irq(&md->inplace_lock);
	return r;
}

static int __jnl_commit(struct dm_stream_metadata *md)
{
	unsigned int i;
	struct bio *bio;
	int r;

	lockdep_assert_held(&md->commit_lock);
	if (md->failed)
		return -EIO;
	if (!md->jnl_nr)
		return 0;
	/* 1. the previous batch's in-place writes have completed */
	r = wait_inplace(md);
	/* 2. this batch, durable, after the previous one */
	if (!r)
		r = __jnl_write_slot(md);
	if (r) {
		DMERR("journal write of batch %llu failed: %d", md->jnl_seq, r);
		md->failed = true;
		return r;
	}
	/* 3. in place, in the background */
	spin_lock_irq(&md->inplace_lock);
	md->inplace_n = md->jnl_nr;
	spin_unlock_irq(&md->inplace_lock);
	for (i = 0; i < md->jnl_nr; i++) {
		memcpy(page_address(md->inplace_pages[i]),
		       page_address(md->jnl_pages[1 + i]), DSM_BLOCK_SIZE);
		bio = bio_alloc(md->bdev, 1, REQ_OP_WRITE, GFP_NOIO);
		bio->bi_iter.bi_sector = md->jnl_loc[i] * DSM_BLOCK_SECTORS;
		__bio_add_page(bio, md->inplace_pages[i], DSM_BLOCK_SIZE, 0);
		bio->bi_private = md;
		bio->bi_end_io = inplace_endio;
		submit_bio(bio);
	}
	md->jnl_seq++;
	md->jnl_nr = 0;
	return 0;
}

/*
 * The page to fill with the new image of metadata block @loc in the batch
 * being staged (the same page if @loc is staged already).  NULL with *@r
 * set when a full batch could not be committed.
 */
static void *stage(struct dm_stream_metadata *md, u64 loc, int *r)
{
	unsigned int i;

	lockdep_assert_held(&md->commit_lock);
	for (i = 0; i < md->jnl_nr; i++)
		if (md->jnl_loc[i] == loc)
			return page_address(md->jnl_pages[1 + i]);
	if (md->jnl_nr == DSM_JNL_ENTRIES) {
		*r = __jnl_commit(md);
		if (*r)
			return NULL;
	}
	md->jnl_loc[md->jnl_nr] = loc;
	return page_address(md->jnl_pages[1 + md->jnl_nr++]);
}

static int write_bitmap_block(struct dm_stream_metadata *md, u32 map, u32 i,
			      const unsigned long *bits,
			      const unsigned long *more)
{
	u64 loc = bitmap_location(md, map, i);
	int r = 0;
	void *p;

	p = stage(md, loc, &r);
	if (!p)
		return r;
	dsm_bitmap_pack(bits, more, md->sb.nr_blocks, i,
			map * md->sb.bitmap_blocks + i, loc, p);
	return 0;
}

static int read_bitmap(struct dm_stream_metadata *md, u32 map,
		       unsigned long *bits, const char **why)
{
	struct dm_buffer *b;
	void *p;
	u32 i;
	int r = 0;

	for (i = 0; i < md->sb.bitmap_blocks && !r; i++) {
		u64 loc = bitmap_location(md, map, i);

		p = dm_bufio_read(md->bufio, loc, &b);
		if (IS_ERR(p)) {
			*why = "Cannot read metadata bitmap";
			return PTR_ERR(p);
		}
		r = dsm_bitmap_unpack(p, loc, map * md->sb.bitmap_blocks + i,
				      bits, md->sb.nr_blocks, i, why);
		dm_bufio_release(b);
	}
	return r;
}

/* A barrier in a metadata protocol: everything staged is durable. */
static int flush_buffers(struct dm_stream_metadata *md)
{
	return __jnl_commit(md);
}

static int stage_sb(struct dm_stream_metadata *md)
{
	int r = 0;
	void *p;

	p = stage(md, 0, &r);
	if (p)
		dsm_sb_pack(&md->sb, 0, p);
	return r;
}

static int write_sb(struct dm_stream_metadata *md)
{
	int r = stage_sb(md);

	return r ? r : __jnl_commit(md);
}

/*
 * A zeroed (or never used) metadata device: write empty bitmaps and empty
 * journal slots in place, flush, then the superblock as the first journal
 * batch.  A crash before that batch leaves no superblock: formatted again.
 */
static int format(struct dm_stream_metadata *md)
{
	struct dm_buffer *b;
	u32 map, i;
	void *p;
	int r;

	for (map = 0; map < DSM_NR_BITMAPS; map++)
		for (i = 0; i < md->sb.bitmap_blocks; i++) {
			u64 loc = bitmap_location(md, map, i);

			p = dm_bufio_new(md->bufio, loc, &b);
			if (IS_ERR(p))
				return PTR_ERR(p);
			/* present_commit is all zero at format time */
			dsm_bitmap_pack(md->present_commit, NULL,
					md->sb.nr_blocks, i,
					map * md->sb.bitmap_blocks + i, loc, p);
			dm_bufio_mark_buffer_dirty(b);
			dm_bufio_release(b);
		}
	for (i = 0; i < 2; i++) {
		p = dm_bufio_new(md->bufio,
				 md->jnl_start + i * DSM_JNL_SLOT_BLOCKS, &b);
		if (IS_ERR(p))
			return PTR_ERR(p);
		memset(p, 0, DSM_BLOCK_SIZE);
		dm_bufio_mark_buffer_dirty(b);
		dm_bufio_release(b);
	}
	r = dm_bufio_write_dirty_buffers(md->bufio);
	if (!r)
		r = dm_bufio_issue_flush(md->bufio);
	if (r)
		return r;
	md->jnl_seq = 1;
	mutex_lock(&md->commit_lock);
	r = write_sb(md);
	mutex_unlock(&md->commit_lock);
	return r;
}

static unsigned long *alloc_bitmap(u64 nr_bits)
{
	return kvcalloc(BITS_TO_LONGS(nr_bits), sizeof(unsigned long),
			GFP_KERNEL);
}

static void free_maps(struct dm_stream_metadata *md)
{
	unsigned int c;

	kvfree(md->present);
	kvfree(md->durable);
	kvfree(md->present_commit);
	kvfree(md->present_taken);
	kvfree(md->taken_slices);
	kvfree(md->pending_present);
	kvfree(md->changed_present);
	for (c = 0; c < DSM_MAX_CONSUMERS; c++) {
		kvfree(md->dirty[c]);
		kvfree(md->changed_dirty[c]);
		kvfree(md->snap[c]);
	}
	kvfree(md->inval);
	kvfree(md->intent);
	kvfree(md->intent_want);
	kvfree(md->intent_used);
	kvfree(md->intent_disk);
	kvfree(md->intent_add);
	kvfree(md->intent_clear);
	kvfree(md->intent_age);
}

/* Write the changed blocks of consumer @c's dirty map (dirty | snap). */
static int __write_dirty(struct dm_stream_metadata *md, unsigned int c)
{
	const unsigned long *more = md->snap_gen[c] ? md->snap[c] : NULL;
	u32 i;
	int r;

	lockdep_assert_held(&md->commit_lock);
	for (i = 0; i < md->sb.bitmap_blocks; i++) {
		if (!test_and_clear_bit(i, md->changed_dirty[c]))
			continue;
		r = write_bitmap_block(md, dirty_bitmap(c), i, md->dirty[c],
				       more);
		if (r) {
			set_bit(i, md->changed_dirty[c]);
			return r;
		}
	}
	return 0;
}

static int __write_present(struct dm_stream_metadata *md)
{
	u32 i;
	int r;

	lockdep_assert_held(&md->commit_lock);
	for (i = 0; i < md->sb.bitmap_blocks; i++) {
		if (!test_and_clear_bit(i, md->changed_present))
			continue;
		r = write_bitmap_block(md, 0, i, md->present_commit, NULL);
		if (r) {
			set_bit(i, md->changed_present);
			return r;
		}
	}
	return 0;
}

/*
 * Stage the changed blocks of the dirty maps of consumers @first and up,
 * then of the present map, then commit.  Dirty before present: if the
 * batch is split, a block's dirty bits are durable no later than its
 * present bit (a block recorded present but clean would be skipped by
 * revert).
 */
static int __stage_maps(struct dm_stream_metadata *md, unsigned int first)
{
	unsigned int c;
	int r = 0;

	lockdep_assert_held(&md->commit_lock);
	for (c = first; c < DSM_MAX_CONSUMERS && !r; c++)
		r = __write_dirty(md, c);
	return r ? r : __write_present(md);
}

static int __write_maps(struct dm_stream_metadata *md, unsigned int first)
{
	int r = __stage_maps(md, first);

	return r ? r : flush_buffers(md);
}

/* Every map, then the superblock (last: see dsm_commit()), durable. */
static int __write_maps_sb(struct dm_stream_metadata *md)
{
	int r = __stage_maps(md, 0);

	if (!r)
		r = stage_sb(md);
	return r ? r : flush_buffers(md);
}

static bool slice_has_bits(struct dm_stream_metadata *md,
			   const unsigned long *map, u32 i)
{
	u64 first = (u64)i * DSM_BITS_PER_BLOCK;
	u64 end = min_t(u64, first + DSM_BITS_PER_BLOCK, md->sb.nr_blocks);

	return find_next_bit(map, end, first) < end;
}

/* Mark the slices of @changed where @map has bits. */
static void mark_slices(struct dm_stream_metadata *md,
			const unsigned long *map, unsigned long *changed)
{
	u32 i;

	for (i = 0; i < md->sb.bitmap_blocks; i++)
		if (slice_has_bits(md, map, i))
			set_bit(i, changed);
}

static void recount(struct dm_stream_metadata *md)
{
	u64 nr = md->sb.nr_blocks;
	unsigned int c;

	atomic64_set(&md->nr_present, bitmap_weight(md->present, nr));
	for (c = 0; c < DSM_MAX_CONSUMERS; c++)
		atomic64_set(&md->nr_dirty[c], bitmap_weight(md->dirty[c], nr));
}

static bool any_snapshot(struct dm_stream_metadata *md)
{
	unsigned int c;

	for (c = 0; c < DSM_MAX_CONSUMERS; c++)
		if (md->snap_gen[c])
			return true;
	return false;
}

/*
 * Last step of revert and image update: drop @flags from the superblock.
 * Dirty bits went from 1 to 0, so no block counts as durable any more.
 */
static int __finish_flagged(struct dm_stream_metadata *md, u32 flags)
{
	int r;

	lockdep_assert_held(&md->commit_lock);
	bitmap_zero(md->durable, md->sb.nr_blocks);
	md->sb.flags &= ~flags;
	md->sb.generation++;
	r = write_sb(md);
	if (!r)
		recount(md);
	return r;
}

/*
 * The revert steps (see the protocol at the top).  Returns the number of
 * blocks made absent, or -errno.  Nothing may be pending: the caller
 * committed first, and I/O is quiesced, so plain bitmap operations are
 * safe.
 */
static long __revert(struct dm_stream_metadata *md)
{
	u64 nr = md->sb.nr_blocks, reverted;
	unsigned int c;
	int r;

	lockdep_assert_held(&md->commit_lock);
	md->sb.flags |= SB_F_REVERTING;
	r = write_sb(md);
	if (r)
		return r;

	reverted = bitmap_weight(md->dirty[0], nr);
	mark_slices(md, md->dirty[0], md->changed_present);
	bitmap_andnot(md->present, md->present, md->dirty[0], nr);
	bitmap_andnot(md->present_commit, md->present_commit, md->dirty[0],
		      nr);
	for (c = 1; c < DSM_MAX_CONSUMERS; c++) {
		mark_slices(md, md->dirty[0], md->changed_dirty[c]);
		bitmap_or(md->dirty[c], md->dirty[c], md->dirty[0], nr);
	}
	r = __write_maps(md, 1);
	if (r)
		return r;

	mark_slices(md, md->dirty[0], md->changed_dirty[0]);
	bitmap_zero(md->dirty[0], nr);
	r = __write_dirty(md, 0);
	if (!r)
		r = flush_buffers(md);
	if (r)
		return r;

	r = __finish_flagged(md, SB_F_REVERTING | SB_F_APPROX);
	return r ? r : reverted;
}

long dsm_revert(struct dm_stream_metadata *md, struct block_device *data)
{
	bool data_error;
	long r;

	r = dsm_commit(md, data, &data_error);
	if (r)
		return r;
	mutex_lock(&md->commit_lock);
	r = any_snapshot(md) ? -EBUSY : __revert(md);
	mutex_unlock(&md->commit_lock);
	return r;
}

/*
 * The image-update steps after the superblock carries SB_F_INVALIDATING and
 * bitmap 2 the set (see the protocol at the top).  Quiesced, like revert.
 */
static long __invalidate(struct dm_stream_metadata *md)
{
	bool keep = md->sb.flags & SB_F_INVAL_KEEP;
	u64 nr = md->sb.nr_blocks, words = BITS_TO_LONGS(nr), w;
	unsigned long *set = md->inval;
	long count = 0;
	unsigned int c;
	int r;

	lockdep_assert_held(&md->commit_lock);
	mark_slices(md, set, md->changed_present);
	for (c = 1; c < DSM_MAX_CONSUMERS; c++)
		mark_slices(md, set, md->changed_dirty[c]);
	for (w = 0; w < words; w++) {
		unsigned long e = set[w];

		if (keep)
			e &= ~md->dirty[0][w];
		count += hweight_long(md->present[w] & e);
		md->present[w] &= ~e;
		md->present_commit[w] &= ~e;
		for (c = 1; c < DSM_MAX_CONSUMERS; c++)
			md->dirty[c][w] |= e;
	}
	r = __write_maps(md, 1);
	if (r)
		return r;

	if (!keep) {
		mark_slices(md, set, md->changed_dirty[0]);
		bitmap_andnot(md->dirty[0], md->dirty[0], set, nr);
		r = __write_dirty(md, 0);
		if (!r)
			r = flush_buffers(md);
		if (r)
			return r;
	}

	bitmap_zero(set, nr);
	for (w = 0; w < md->sb.bitmap_blocks && !r; w++)
		r = write_bitmap_block(md, INVAL_MAP, w, set, NULL);
	if (!r)
		r = flush_buffers(md);
	if (r)
		return r;

	r = __finish_flagged(md, SB_F_INVALIDATING | SB_F_INVAL_KEEP);
	return r ? r : count;
}

static int __alloc_inval(struct dm_stream_metadata *md)
{
	lockdep_assert_held(&md->commit_lock);
	if (!md->inval)
		md->inval = alloc_bitmap(md->sb.nr_blocks);
	return md->inval ? 0 : -ENOMEM;
}

int dsm_inval_add(struct dm_stream_metadata *md, u64 first, u64 count)
{
	int r;

	if (!count || first >= md->sb.nr_blocks ||
	    count > md->sb.nr_blocks - first)
		return -ERANGE;
	mutex_lock(&md->commit_lock);
	r = __alloc_inval(md);
	if (!r)
		bitmap_set(md->inval, first, count);
	mutex_unlock(&md->commit_lock);
	return r;
}

void dsm_inval_clear(struct dm_stream_metadata *md)
{
	mutex_lock(&md->commit_lock);
	if (md->inval)
		bitmap_zero(md->inval, md->sb.nr_blocks);
	mutex_unlock(&md->commit_lock);
}

u64 dsm_inval_count(struct dm_stream_metadata *md)
{
	u64 n = 0;

	mutex_lock(&md->commit_lock);
	if (md->inval)
		n = bitmap_weight(md->inval, md->sb.nr_blocks);
	mutex_unlock(&md->commit_lock);
	return n;
}

long dsm_invalidate(struct dm_stream_metadata *md, struct block_device *data,
		    const char *image_id, bool keep)
{
	bool data_error;
	long r;
	u32 i;

	if (strlen(image_id) >= DSM_IMAGE_ID_LEN)
		return -ENAMETOOLONG;
	r = dsm_commit(md, data, &data_error);
	if (r)
		return r;
	mutex_lock(&md->commit_lock);
	if (keep && (md->sb.flags & SB_F_APPROX)) {
		DMERR("invalidate keep: consumer 0 dirty set has regions recovered after a crash");
		DMERR("revert, or drain and acknowledge consumer 0, or use discard");
		r = -ENOTUNIQ;
		goto out;
	}
	r = any_snapshot(md) ? -EBUSY : __alloc_inval(md);
	if (r)
		goto out;
	/* Every block of bitmap 2: it may hold leftovers of a crash. */
	for (i = 0; i < md->sb.bitmap_blocks && !r; i++)
		r = write_bitmap_block(md, INVAL_MAP, i, md->inval, NULL);
	if (!r)
		r = flush_buffers(md);
	if (r)
		goto out;
	md->sb.flags |= SB_F_INVALIDATING | (keep ? SB_F_INVAL_KEEP : 0);
	spin_lock(&md->id_lock);
	strscpy(md->sb.image_id, image_id, sizeof(md->sb.image_id));
	spin_unlock(&md->id_lock);
	r = write_sb(md);
	if (!r)
		r = __invalidate(md);
out:
	mutex_unlock(&md->commit_lock);
	return r;
}

/*
 * In core: move consumer @c's live dirty bits into its snapshot map, word
 * by word with xchg() so that a concurrent dsm_set_dirty() lands either
 * before the cut (in the snapshot) or after it (in the live map).  The
 * snapshot map must be empty.  Returns the number of blocks moved.
 */
u64 dsm_snapshot_cut(struct dm_stream_metadata *md, unsigned int c)
{
	u64 w, words = BITS_TO_LONGS(md->sb.nr_blocks), n = 0;

	for (w = 0; w < words; w++) {
		unsigned long old = xchg(&md->dirty[c][w], 0UL);

		md->snap[c][w] = old;
		n += hweight_long(old);
	}
	atomic64_sub(n, &md->nr_dirty[c]);
	return n;
}

/*
 * In core: put consumer @c's snapshot back into its live dirty map
 * (atomically against dsm_set_dirty()) and empty the snapshot map.
 * Returns the number of blocks that became dirty again.
 */
u64 dsm_snapshot_merge(struct dm_stream_metadata *md, unsigned int c)
{
	u64 w, words = BITS_TO_LONGS(md->sb.nr_blocks), n = 0;

	for (w = 0; w < words; w++) {
		unsigned long s = md->snap[c][w], old;

		if (!s)
			continue;
		old = atomic_long_fetch_or(s, (atomic_long_t *)&md->dirty[c][w]);
		n += hweight_long(s & ~old);
		md->snap[c][w] = 0;
	}
	atomic64_add(n, &md->nr_dirty[c]);
	return n;
}
EXPORT_SYMBOL_IF_KUNIT(dsm_snapshot_merge);

int dsm_snapshot(struct dm_stream_metadata *md, struct block_device *data,
		 unsigned int c, u64 *gen, u64 *nr)
{
	bool data_error;
	int r;

	if (c >= DSM_MAX_CONSUMERS)
		return -EINVAL;
	/* On-disk dirty[c] must cover everything the snapshot takes. */
	r = dsm_commit(md, data, &data_error);
	if (r)
		return r;
	mutex_lock(&md->commit_lock);
	if (md->snap_gen[c]) {
		r = -EBUSY;
		goto out;
	}
	if (!md->snap[c]) {
		md->snap[c] = alloc_bitmap(md->sb.nr_blocks);
		if (!md->snap[c]) {
			r = -ENOMEM;
			goto out;
		}
	}
	md->sb.consumer_gen[c]++;
	md->sb.generation++;
	r = write_sb(md);
	if (r)
		goto out;
	*gen = md->sb.consumer_gen[c];
	*nr = dsm_snapshot_cut(md, c);
	/* Quiesced: the next write to a snapshot block must commit again. */
	bitmap_andnot(md->durable, md->durable, md->snap[c], md->sb.nr_blocks);
	md->snap_blocks[c] = *nr;
	WRITE_ONCE(md->snap_gen[c], *gen);
out:
	mutex_unlock(&md->commit_lock);
	return r;
}

/*
 * End @c's snapshot @gen in core (the caller handles its bits); *@nr gets
 * its size.  -ESTALE when @gen is not the snapshot in progress.
 */
static int __end_snapshot(struct dm_stream_metadata *md, unsigned int c,
			  u64 gen, u64 *nr)
{
	lockdep_assert_held(&md->commit_lock);
	if (!gen || md->snap_gen[c] != gen)
		return -ESTALE;
	*nr = md->snap_blocks[c];
	md->snap_blocks[c] = 0;
	WRITE_ONCE(md->snap_gen[c], 0);
	return 0;
}

int dsm_ack(struct dm_stream_metadata *md, unsigned int c, u64 gen, u64 *nr)
{
	int r;

	if (c >= DSM_MAX_CONSUMERS)
		return -EINVAL;
	mutex_lock(&md->commit_lock);
	r = __end_snapshot(md, c, gen, nr);
	if (r)
		goto out;
	mark_slices(md, md->snap[c], md->changed_dirty[c]);
	bitmap_zero(md->snap[c], md->sb.nr_blocks);
	/* The snapshot took all of dirty[0]: what is left is exact. */
	if (!c)
		md->sb.flags &= ~SB_F_APPROX;
	/* One journal batch (or several in order): old (dirty) or acked. */
	md->sb.generation++;
	r = __write_dirty(md, c);
	if (!r)
		r = write_sb(md);
out:
	mutex_unlock(&md->commit_lock);
	return r;
}

int dsm_abort(struct dm_stream_metadata *md, unsigned int c, u64 gen,
	      u64 *nr)
{
	int r;

	if (c >= DSM_MAX_CONSUMERS)
		return -EINVAL;
	mutex_lock(&md->commit_lock);
	r = __end_snapshot(md, c, gen, nr);
	/* On disk, dirty[c] already covers the snapshot: nothing to write. */
	if (!r)
		dsm_snapshot_merge(md, c);
	mutex_unlock(&md->commit_lock);
	return r;
}

u64 dsm_snap_gen(struct dm_stream_metadata *md, unsigned int c)
{
	return READ_ONCE(md->snap_gen[c]);
}

u64 dsm_snap_blocks(struct dm_stream_metadata *md, unsigned int c)
{
	return READ_ONCE(md->snap_blocks[c]);
}

const unsigned long *dsm_snap_map(struct dm_stream_metadata *md,
				  unsigned int c)
{
	return md->snap[c];
}
EXPORT_SYMBOL_IF_KUNIT(dsm_snap_map);

bool dsm_next_range(const unsigned long *map, u64 nr, u64 from, bool set,
		    u64 *start, u64 *len)
{
	u64 s, e;

	if (from >= nr)
		return false;
	s = set ? find_next_bit(map, nr, from) :
		find_next_zero_bit(map, nr, from);
	if (s >= nr)
		return false;
	e = set ? find_next_zero_bit(map, nr, s) : find_next_bit(map, nr, s);
	*start = s;
	*len = e - s;
	return true;
}
EXPORT_SYMBOL_IF_KUNIT(dsm_next_range);

u64 dsm_count_clear(const unsigned long *map, u64 first, u64 end)
{
	u64 n = 0, s, len;

	while (dsm_next_range(map, end, first, false, &s, &len)) {
		n += len;
		first = s + len;
	}
	return n;
}
EXPORT_SYMBOL_IF_KUNIT(dsm_count_clear);

/*
 * Answer "<next cursor> <first>+<count>..." with the runs of set (@set) or
 * clear bits of @map from @cursor on, as many as fit in @maxlen; the next
 * cursor is the total number of blocks once the map is exhausted.
 */
int dsm_emit_ranges(const unsigned long *map, u64 nr, bool set, u64 cursor,
		    char *result, unsigned int maxlen)
{
	unsigned int sz, room = maxlen > 48 ? maxlen - 48 : 0;
	char *ranges;
	u64 start, len, next = cursor;
	int n;

	if (cursor > nr)
		return -ERANGE;
	ranges = kmalloc(maxlen, GFP_KERNEL);
	if (!ranges)
		return -ENOMEM;
	sz = 0;
	while (dsm_next_range(map, nr, next, set, &start, &len)) {
		n = snprintf(ranges + sz, maxlen - sz, " %llu+%llu", start, len);
		if (sz + n >= room)
			break;
		sz += n;
		next = start + len;
	}
	if (!dsm_next_range(map, nr, next, set, &start, &len))
		next = nr;
	ranges[sz] = '\0';
	if (!sz && next < nr) {
		kfree(ranges);
		return -ENOSPC;		/* buffer too small for one range */
	}
	snprintf(result, maxlen, "%llu%s", next, ranges);
	kfree(ranges);
	return 1;
}

/*
 * The in-core half of dsm_open(): maps and locks, no device.  Used alone
 * by the KUnit tests of the commit state machine.
 */
struct dm_stream_metadata *dsm_create_incore(u64 nr_blocks)
{
	struct dm_stream_metadata *md = kzalloc(sizeof(*md), GFP_KERNEL);
	unsigned int c;
	bool ok;

	if (!md)
		return NULL;
	mutex_init(&md->commit_lock);
	spin_lock_init(&md->id_lock);
	INIT_LIST_HEAD(&md->node);
	md->sb.nr_blocks = nr_blocks;
	md->sb.nr_consumers = DSM_MAX_CONSUMERS;
	md->sb.bitmap_blocks = dsm_bitmap_blocks(nr_blocks);
	md->jnl_start = dsm_journal_start(nr_blocks);
	md->present = alloc_bitmap(nr_blocks);
	md->durable = alloc_bitmap(nr_blocks);
	md->present_commit = alloc_bitmap(nr_blocks);
	md->present_taken = alloc_bitmap(nr_blocks);
	md->taken_slices = alloc_bitmap(md->sb.bitmap_blocks);
	md->pending_present = alloc_bitmap(md->sb.bitmap_blocks);
	md->changed_present = alloc_bitmap(md->sb.bitmap_blocks);
	md->intent = alloc_bitmap(DSM_INTENT_BITS);
	md->intent_want = alloc_bitmap(DSM_INTENT_BITS);
	md->intent_used = alloc_bitmap(DSM_INTENT_BITS);
	md->intent_disk = alloc_bitmap(DSM_INTENT_BITS);
	md->intent_add = alloc_bitmap(DSM_INTENT_BITS);
	md->intent_clear = alloc_bitmap(DSM_INTENT_BITS);
	md->intent_age = kvcalloc(DSM_INTENT_BITS, 1, GFP_KERNEL);
	md->sb.intent = md->intent_disk;
	md->sb.intent_shift = DSM_INTENT_OFF;
	ok = md->present && md->durable && md->present_commit &&
		md->present_taken && md->taken_slices &&
		md->pending_present && md->changed_present &&
		md->intent && md->intent_want && md->intent_used &&
		md->intent_disk && md->intent_add && md->intent_clear &&
		md->intent_age;
	for (c = 0; c < DSM_MAX_CONSUMERS; c++) {
		md->dirty[c] = alloc_bitmap(nr_blocks);
		md->changed_dirty[c] = alloc_bitmap(md->sb.bitmap_blocks);
		ok = ok && md->dirty[c] && md->changed_dirty[c];
	}
	if (!ok) {
		dsm_destroy_incore(md);
		return NULL;
	}
	return md;
}
EXPORT_SYMBOL_IF_KUNIT(dsm_create_incore);

/* KUnit: an in-core snapshot without the superblock write. */
int dsm_snapshot_incore(struct dm_stream_metadata *md, unsigned int c,
			u64 gen)
{
	if (!md->snap[c])
		md->snap[c] = alloc_bitmap(md->sb.nr_blocks);
	if (!md->snap[c])
		return -ENOMEM;
	md->snap_blocks[c] = dsm_snapshot_cut(md, c);
	md->snap_gen[c] = gen;
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(dsm_snapshot_incore);

void dsm_destroy_incore(struct dm_stream_metadata *md)
{
	free_maps(md);
	kfree(md);
}
EXPORT_SYMBOL_IF_KUNIT(dsm_destroy_incore);

/*
 * Load after an unclean shutdown: every block of a region the write-intent
 * map names may have been written without its dirty bits reaching the
 * disk.  Make them dirty for every consumer, then write the maps and drop
 * the regions in one commit (dirty before the superblock, as always).
 */
static int __intent_recover(struct dm_stream_metadata *md)
{
	u32 shift = md->sb.intent_shift, n = 0, i;
	unsigned long r;
	unsigned int c;
	u64 first, end;

	lockdep_assert_held(&md->commit_lock);
	for_each_set_bit(r, md->intent_disk, DSM_INTENT_BITS) {
		first = (u64)r << shift;
		end = min_t(u64, first + (1ULL << shift), md->sb.nr_blocks);
		for (c = 0; c < DSM_MAX_CONSUMERS; c++)
			bitmap_set(md->dirty[c], first, end - first);
		for (i = first / DSM_BITS_PER_BLOCK;
		     i <= (end - 1) / DSM_BITS_PER_BLOCK; i++)
			for (c = 0; c < DSM_MAX_CONSUMERS; c++)
				set_bit(i, md->changed_dirty[c]);
		n++;
	}
	DMINFO("write intent: %u regions of %llu blocks were open, their blocks are dirty again",
	       n, 1ULL << shift);
	bitmap_zero(md->intent_disk, DSM_INTENT_BITS);
	md->sb.flags = (md->sb.flags & ~SB_F_INTENT) | SB_F_APPROX;
	md->sb.generation++;
	return __write_maps_sb(md);
}

/* dsm_open(): load the maps of an existing metadata device. */
static int load(struct dm_stream_metadata *md, const char **error)
{
	u64 nr = md->sb.nr_blocks;
	unsigned int c;
	long r;

	r = read_bitmap(md, 0, md->present, error);
	for (c = 0; c < DSM_MAX_CONSUMERS && !r; c++)
		r = read_bitmap(md, dirty_bitmap(c), md->dirty[c], error);
	if (r)
		return r;
	bitmap_copy(md->present_commit, md->present, nr);
	if (md->sb.flags & SB_F_INTENT) {
		mutex_lock(&md->commit_lock);
		r = __intent_recover(md);
		mutex_unlock(&md->commit_lock);
		if (r) {
			*error = "Cannot write the dirty bits of open write-intent regions";
			return r;
		}
	}
	recount(md);
	/*
	 * Durable: present and dirty for every consumer on disk.  An absent
	 * block's dirty bits may be left by a fill that was never committed
	 * present; its next write is a fill again and must commit.
	 */
	bitmap_copy(md->durable, md->present, nr);
	for (c = 0; c < DSM_MAX_CONSUMERS; c++)
		bitmap_and(md->durable, md->durable, md->dirty[c], nr);

	mutex_lock(&md->commit_lock);
	if (md->sb.flags & SB_F_INVALIDATING) {
		DMINFO("completing an interrupted image update");
		r = __alloc_inval(md);
		if (!r)
			r = read_bitmap(md, INVAL_MAP, md->inval, error);
		if (!r)
			r = __invalidate(md);
		if (r < 0 && !*error)
			*error = "Cannot complete an interrupted image update";
	}
	if (r >= 0 && (md->sb.flags & SB_F_REVERTING)) {
		DMINFO("completing an interrupted revert");
		r = __revert(md);
		if (r < 0)
			*error = "Cannot complete an interrupted revert";
	}
	mutex_unlock(&md->commit_lock);
	return r < 0 ? r : 0;
}

/* A journal slot read at open: header and images, checked. */
struct jnl_slot {
	bool valid;
	u64 seq;
	u8 uuid[16];
	unsigned int nr;
	u64 loc[DSM_JNL_ENTRIES];
	u32 csum[DSM_JNL_ENTRIES];
	void *img[DSM_JNL_ENTRIES];	/* kvmalloc'd, DSM_BLOCK_SIZE each */
};

static void free_slot(struct jnl_slot *s)
{
	unsigned int i;

	for (i = 0; i < s->nr; i++)
		kvfree(s->img[i]);
	s->nr = 0;
}

/*
 * Read journal slot @slot.  A slot that fails any check is a torn or never
 * written batch and is not valid (not an error).  Returns -errno only for
 * read or allocation failures.
 */
static int read_slot(struct dm_stream_metadata *md, unsigned int slot,
		     struct jnl_slot *s)
{
	u64 at = md->jnl_start + slot * DSM_JNL_SLOT_BLOCKS;
	const struct stream_jnl_disk *h;
	struct dm_buffer *b;
	unsigned int i, nr;
	void *p;

	memset(s, 0, sizeof(*s));
	h = dm_bufio_read(md->bufio, at, &b);
	if (IS_ERR(h))
		return PTR_ERR(h);
	nr = le32_to_cpu(h->nr);
	if (le32_to_cpu(h->csum) != block_csum(h, JNL_CSUM_XOR) ||
	    le64_to_cpu(h->magic) != JNL_MAGIC ||
	    le32_to_cpu(h->version) != DSM_FORMAT_VERSION ||
	    le64_to_cpu(h->blocknr) != at || !nr || nr > DSM_JNL_ENTRIES ||
	    (le64_to_cpu(h->seq) & 1) != slot) {
		dm_bufio_release(b);
		return 0;
	}
	s->seq = le64_to_cpu(h->seq);
	memcpy(s->uuid, h->uuid, sizeof(s->uuid));
	for (i = 0; i < nr; i++) {
		s->loc[i] = le64_to_cpu(h->e[i].location);
		s->csum[i] = le32_to_cpu(h->e[i].csum);
	}
	dm_bufio_release(b);

	for (i = 0; i < nr; i++) {
		if (s->loc[i] >= md->jnl_start)
			goto invalid;
		p = dm_bufio_read(md->bufio, at + 1 + i, &b);
		if (IS_ERR(p)) {
			s->nr = i;
			free_slot(s);
			return PTR_ERR(p);
		}
		if (crc32c(~0U, p, DSM_BLOCK_SIZE) != s->csum[i]) {
			dm_bufio_release(b);
			goto invalid;
		}
		s->img[i] = kvmalloc(DSM_BLOCK_SIZE, GFP_KERNEL);
		if (s->img[i])
			memcpy(s->img[i], p, DSM_BLOCK_SIZE);
		dm_bufio_release(b);
		s->nr = i + 1;
		if (!s->img[i]) {
			free_slot(s);
			return -ENOMEM;
		}
	}
	s->valid = true;
	return 0;
invalid:
	free_slot(s);
	s->valid = false;
	return 0;
}

/* Newest image of metadata block @loc in the valid slots, or NULL. */
static const void *slot_image(struct jnl_slot **s, unsigned int n, u64 loc)
{
	const void *img = NULL;
	unsigned int k, i;

	for (k = 0; k < n; k++)
		for (i = 0; s[k]->valid && i < s[k]->nr; i++)
			if (s[k]->loc[i] == loc)
				img = s[k]->img[i];
	return img;
}

/*
 * Write the images of the valid slots (@s sorted by sequence) in place
 * where they differ from what is there, then flush.  Returns how many
 * blocks were rewritten, or -errno.
 */
static int replay(struct dm_stream_metadata *md, struct jnl_slot **s,
		  unsigned int n)
{
	struct dm_buffer *b;
	unsigned int k, i;
	int fixed = 0, r;
	void *p;

	for (k = 0; k < n; k++)
		for (i = 0; s[k]->valid && i < s[k]->nr; i++) {
			p = dm_bufio_read(md->bufio, s[k]->loc[i], &b);
			if (IS_ERR(p)) {
				/* unreadable (a bad sector): overwrite it */
				p = dm_bufio_new(md->bufio, s[k]->loc[i], &b);
				if (IS_ERR(p))
					return PTR_ERR(p);
			} else if (!memcmp(p, s[k]->img[i], DSM_BLOCK_SIZE)) {
				dm_bufio_release(b);
				continue;
			}
			memcpy(p, s[k]->img[i], DSM_BLOCK_SIZE);
			dm_bufio_mark_buffer_dirty(b);
			dm_bufio_release(b);
			fixed++;
		}
	r = dm_bufio_write_dirty_buffers(md->bufio);
	if (!r)
		r = dm_bufio_issue_flush(md->bufio);
	return r ? r : fixed;
}

/*
 * Bring the on-disk metadata to the state of its last complete journal
 * batch, then read the superblock.  *@fresh is set for a device never
 * formatted.
 */
static int recover(struct dm_stream_metadata *md, u32 block_sectors,
		   u64 nr_blocks, bool *fresh, const char **error)
{
	struct jnl_slot *s, *o[2];
	struct dm_buffer *b = NULL;
	struct dsm_sb_info sb;
	const void *p;
	unsigned int k;
	int r;

	s = kvcalloc(2, sizeof(*s), GFP_KERNEL);
	if (!s) {
		*error = "Cannot allocate journal buffers";
		return -ENOMEM;
	}
	for (k = 0; k < 2; k++) {
		r = read_slot(md, k, &s[k]);
		if (r) {
			*error = "Cannot read metadata journal";
			goto out;
		}
	}
	/* in sequence order */
	o[0] = &s[0];
	o[1] = &s[1];
	if (s[0].valid && s[1].valid && s[0].seq > s[1].seq)
		swap(o[0], o[1]);

	p = slot_image(o, 2, 0);
	if (!p) {
		p = dm_bufio_read(md->bufio, 0, &b);
		if (IS_ERR(p)) {
			*error = "Cannot read metadata superblock";
			r = PTR_ERR(p);
			b = NULL;
			goto out;
		}
	}
	*fresh = dsm_buf_is_zero(p, DSM_BLOCK_SIZE) && !s[0].valid &&
		!s[1].valid;
	if (*fresh) {
		r = 0;
		goto out;
	}
	sb.intent = md->intent_disk;
	r = dsm_sb_unpack(p, 0, &sb, error);
	if (b)
		dm_bufio_release(b);
	b = NULL;
	if (r)
		goto out;
	if (sb.block_sectors != block_sectors) {
		DMERR("metadata block size: table has %u sectors, metadata has %u",
		      block_sectors, sb.block_sectors);
		*error = "Block size differs from the metadata's";
		r = -EINVAL;
		goto out;
	}
	if (sb.nr_blocks != nr_blocks) {
		DMERR("metadata size: table has %llu blocks, metadata has %llu",
		      nr_blocks, sb.nr_blocks);
		*error = "Device size differs from the metadata's";
		r = -EINVAL;
		goto out;
	}
	for (k = 0; k < 2; k++)
		if (s[k].valid && memcmp(s[k].uuid, sb.uuid, sizeof(sb.uuid))) {
			DMERR("journal batch %llu: uuid %pU, superblock %pU",
			      s[k].seq, s[k].uuid, sb.uuid);
			*error = "Metadata journal does not match the superblock";
			r = -EUCLEAN;
			goto out;
		}
	r = replay(md, o, 2);
	if (r < 0) {
		*error = "Cannot replay metadata journal";
		goto out;
	}
	if (r)
		DMINFO("journal: %d metadata blocks rewritten from batches %llu-%llu",
		       r, o[0]->valid ? o[0]->seq : o[1]->seq,
		       o[1]->valid ? o[1]->seq : o[0]->seq);
	md->sb = sb;
	md->jnl_seq = max(s[0].valid ? s[0].seq : 0,
			  s[1].valid ? s[1].seq : 0) + 1;
	r = 0;
out:
	if (b)
		dm_bufio_release(b);
	for (k = 0; k < 2; k++)
		free_slot(&s[k]);
	kvfree(s);
	return r;
}

static void destroy(struct dm_stream_metadata *md)
{
	unsigned int i;

	if (md->bufio)
		dm_bufio_client_destroy(md->bufio);
	for (i = 0; i < DSM_JNL_SLOT_BLOCKS; i++)
		if (md->jnl_pages[i])
			__free_page(md->jnl_pages[i]);
	for (i = 0; i < DSM_JNL_ENTRIES; i++)
		if (md->inplace_pages[i])
			__free_page(md->inplace_pages[i]);
	dsm_destroy_incore(md);
}

static struct dm_stream_metadata *open_new(struct block_device *bdev,
					   u32 block_sectors, u64 nr_blocks,
					   const char **error)
{
	struct dm_stream_metadata *md;
	bool fresh;
	unsigned int i;
	int r;

	md = dsm_create_incore(nr_blocks);
	if (!md) {
		*error = "Cannot allocate in-core bitmaps";
		return ERR_PTR(-ENOMEM);
	}
	md->bdev = bdev;
	md->dev = bdev->bd_dev;
	md->sb.block_sectors = block_sectors;
	spin_lock_init(&md->inplace_lock);
	init_waitqueue_head(&md->inplace_wait);
	for (i = 0; i < DSM_JNL_SLOT_BLOCKS; i++) {
		md->jnl_pages[i] = alloc_page(GFP_KERNEL);
		if (i < DSM_JNL_ENTRIES)
			md->inplace_pages[i] = alloc_page(GFP_KERNEL);
		if (!md->jnl_pages[i] ||
		    (i < DSM_JNL_ENTRIES && !md->inplace_pages[i])) {
			*error = "Cannot allocate journal buffers";
			r = -ENOMEM;
			goto out;
		}
	}

	md->bufio = dm_bufio_client_create(bdev, DSM_BLOCK_SIZE, 1, 0,
					   NULL, NULL, 0);
	if (IS_ERR(md->bufio)) {
		*error = "Cannot create dm-bufio client";
		r = PTR_ERR(md->bufio);
		md->bufio = NULL;
		goto out;
	}

	if (dm_bufio_get_device_size(md->bufio) < dsm_total_blocks(nr_blocks)) {
		DMERR("metadata device too small: need %llu sectors, have %llu",
		      dsm_total_blocks(nr_blocks) * DSM_BLOCK_SECTORS,
		      (u64)dm_bufio_get_device_size(md->bufio) *
		      DSM_BLOCK_SECTORS);
		*error = "Metadata device too small";
		r = -ENOSPC;
		goto out;
	}

	r = recover(md, block_sectors, nr_blocks, &fresh, error);
	if (r)
		goto out;
	if (fresh) {
		generate_random_uuid(md->sb.uuid);
		md->sb.generation = 1;
		r = format(md);
		if (r) {
			*error = "Cannot format metadata device";
			goto out;
		}
		DMINFO("formatted metadata: %llu blocks of %u sectors",
		       nr_blocks, block_sectors);
	} else {
		r = load(md, error);
		if (r)
			goto out;
	}
	return md;

out:
	destroy(md);
	return ERR_PTR(r);
}

/*
 * One in-core object per metadata device, shared by every table using it
 * (dm-cache's lookup_or_open()): a reload's constructor runs while the old
 * table is still live, and reading the maps then would miss whatever the
 * old table does until the new one resumes.
 */
struct dm_stream_metadata *dsm_open(struct block_device *bdev,
				    const void *owner, u32 block_sectors,
				    u64 nr_blocks, const char **error)
{
	struct dm_stream_metadata *md;

	*error = NULL;
	mutex_lock(&dsm_registry_lock);
	list_for_each_entry(md, &dsm_registry, node) {
		if (md->dev != bdev->bd_dev)
			continue;
		if (md->owner != owner) {
			DMERR("metadata device in use by another stream device");
			*error = "Metadata device in use by another device";
			md = ERR_PTR(-EBUSY);
		} else if (md->sb.block_sectors != block_sectors ||
		    md->sb.nr_blocks != nr_blocks) {
			DMERR("metadata in use: %llu blocks of %u sectors, table: %llu of %u",
			      md->sb.nr_blocks, md->sb.block_sectors,
			      nr_blocks, block_sectors);
			*error = "Metadata in use by a table of another geometry";
			md = ERR_PTR(-EBUSY);
		} else {
			md->refs++;
		}
		goto out;
	}
	md = open_new(bdev, block_sectors, nr_blocks, error);
	if (!IS_ERR(md)) {
		md->owner = owner;
		md->refs = 1;
		list_add(&md->node, &dsm_registry);
	}
out:
	mutex_unlock(&dsm_registry_lock);
	return md;
}

void dsm_close(struct dm_stream_metadata *md)
{
	mutex_lock(&dsm_registry_lock);
	if (--md->refs) {
		mutex_unlock(&dsm_registry_lock);
		return;
	}
	/* In place before anyone can open the device again. */
	if (wait_inplace(md))
		DMERR("cannot write metadata in place at close; the journal has it");
	list_del(&md->node);
	mutex_unlock(&dsm_registry_lock);
	destroy(md);
}

bool dsm_shared(struct dm_stream_metadata *md)
{
	bool shared;

	mutex_lock(&dsm_registry_lock);
	shared = md->refs > 1;
	mutex_unlock(&dsm_registry_lock);
	return shared;
}

const unsigned long *dsm_present_map(struct dm_stream_metadata *md)
{
	return md->present;
}
EXPORT_SYMBOL_IF_KUNIT(dsm_present_map);

u64 dsm_nr_present(struct dm_stream_metadata *md)
{
	return atomic64_read(&md->nr_present);
}
EXPORT_SYMBOL_IF_KUNIT(dsm_nr_present);

u64 dsm_nr_dirty(struct dm_stream_metadata *md, unsigned int c)
{
	return atomic64_read(&md->nr_dirty[c]);
}
EXPORT_SYMBOL_IF_KUNIT(dsm_nr_dirty);

u64 dsm_generation(struct dm_stream_metadata *md)
{
	return READ_ONCE(md->sb.generation);
}

/* Status and attach read it while an image update may write it. */
void dsm_image_id(struct dm_stream_metadata *md, char *buf)
{
	spin_lock(&md->id_lock);
	strscpy(buf, md->sb.image_id, DSM_IMAGE_ID_LEN);
	spin_unlock(&md->id_lock);
}

bool dsm_changed(struct dm_stream_metadata *md)
{
	unsigned int c;

	for (c = 0; c < DSM_MAX_CONSUMERS; c++)
		if (!bitmap_empty(md->changed_dirty[c], md->sb.bitmap_blocks))
			return true;
	return !bitmap_empty(md->changed_present, md->sb.bitmap_blocks) ||
		!bitmap_empty(md->pending_present, md->sb.bitmap_blocks) ||
		READ_ONCE(md->intent_drop_all) ||
		!bitmap_empty(md->intent_want, DSM_INTENT_BITS) ||
		!bitmap_empty(md->intent_clear, DSM_INTENT_BITS);
}
EXPORT_SYMBOL_IF_KUNIT(dsm_changed);

bool dsm_durable(struct dm_stream_metadata *md, u64 block)
{
	return test_bit(block, md->durable);
}

void dsm_mark_durable(struct dm_stream_metadata *md, u64 block)
{
	if (dsm_dirty_all(md, block))
		set_bit(block, md->durable);
}
EXPORT_SYMBOL_IF_KUNIT(dsm_mark_durable);

static u32 nr_regions(struct dm_stream_metadata *md)
{
	if (md->sb.intent_shift == DSM_INTENT_OFF)
		return 0;
	return min_t(u64, DSM_INTENT_BITS,
		     dsm_intent_regions(md->sb.nr_blocks,
					md->sb.intent_shift));
}

/*
 * Write-intent lookahead: a write into the last quarter of an open region
 * whose previous block was written there too (dirty, and not durable: a
 * sequential writer, most likely) asks for the next region, so that the
 * writer finds it open rather than waiting for the commit that opens it.
 * The price: each open region may open the next one, whose blocks count
 * as dirty after a crash.  Lockless, like dsm_write_ready().
 */
static void intent_ahead(struct dm_stream_metadata *md, u64 block,
			 unsigned long region, u32 shift)
{
	unsigned long next = region + 1;
	u64 in = block & ((1ULL << shift) - 1);

	if ((in << 2) < (3ULL << shift) || !in ||
	    !dsm_dirty_all(md, block - 1) || test_bit(block - 1, md->durable) ||
	    next >= nr_regions(md) ||
	    test_bit(next, md->intent))
		return;
	/*
	 * Ordered (a value-returning atomic): a worker that takes the flag
	 * below with xchg() and commits stages the bit set here.
	 */
	if (!test_and_set_bit(next, md->intent_want))
		WRITE_ONCE(md->intent_ahead, true);
}

bool dsm_intent_ahead(struct dm_stream_metadata *md)
{
	return READ_ONCE(md->intent_ahead) && xchg(&md->intent_ahead, false);
}
EXPORT_SYMBOL_IF_KUNIT(dsm_intent_ahead);

bool dsm_write_ready(struct dm_stream_metadata *md, u64 block, bool fua,
		     bool ahead)
{
	u32 shift = READ_ONCE(md->sb.intent_shift);
	unsigned long region;

	if (test_bit(block, md->durable))
		return true;
	/*
	 * Always, even when the bits are set: another writer may have set
	 * them and not yet marked their slices changed, and the commit that
	 * closes the region (or the one this write waits for) must stage
	 * them.
	 */
	dsm_set_dirty(md, block);
	/*
	 * md->durable implies a committed present bit; a region does not:
	 * a FUA write waits for the commit that makes both durable.
	 */
	if (shift == DSM_INTENT_OFF || fua)
		return false;
	region = block >> shift;
	/*
	 * Pairs with smp_mb() in dsm_intent_begin(): either that commit
	 * drops the region after this test (and stages the bits set
	 * above, with their slices marked changed), or this sees the
	 * region dropped and waits.
	 */
	smp_mb();
	if (test_bit(region, md->intent)) {
		if (!test_bit(region, md->intent_used))
			set_bit(region, md->intent_used);
		if (ahead)
			intent_ahead(md, block, region, shift);
		return true;
	}
	set_bit(region, md->intent_want);
	return false;
}
EXPORT_SYMBOL_IF_KUNIT(dsm_write_ready);

int dsm_set_intent(struct dm_stream_metadata *md, struct block_device *data,
		   u32 shift)
{
	bool data_error;
	int r = 0;

	mutex_lock(&md->commit_lock);
	if (md->sb.intent_shift == shift)
		goto out;
	if (!bitmap_empty(md->intent_disk, DSM_INTENT_BITS)) {
		/* Regions of the old size: drop them first. */
		mutex_unlock(&md->commit_lock);
		dsm_intent_drop(md);
		r = dsm_commit(md, data, &data_error);
		if (r)
			return r;
		mutex_lock(&md->commit_lock);
		if (!bitmap_empty(md->intent_disk, DSM_INTENT_BITS)) {
			r = -EBUSY;
			goto out;
		}
	}
	bitmap_zero(md->intent_want, DSM_INTENT_BITS);
	WRITE_ONCE(md->sb.intent_shift, shift);
out:
	mutex_unlock(&md->commit_lock);
	return r;
}
EXPORT_SYMBOL_IF_KUNIT(dsm_set_intent);

/* Ticks a region may stay idle before a commit drops it. */
#define INTENT_IDLE_TICKS	3

bool dsm_intent_tick(struct dm_stream_metadata *md)
{
	u32 r, nr;
	bool any = false;

	mutex_lock(&md->commit_lock);
	nr = nr_regions(md);
	for_each_set_bit(r, md->intent, nr) {
		if (test_and_clear_bit(r, md->intent_used))
			md->intent_age[r] = 0;
		else if (++md->intent_age[r] >= INTENT_IDLE_TICKS)
			set_bit(r, md->intent_clear);
		any = any || test_bit(r, md->intent_clear);
	}
	mutex_unlock(&md->commit_lock);
	return any;
}
EXPORT_SYMBOL_IF_KUNIT(dsm_intent_tick);

void dsm_intent_drop(struct dm_stream_metadata *md)
{
	WRITE_ONCE(md->intent_drop_all, true);
}
EXPORT_SYMBOL_IF_KUNIT(dsm_intent_drop);

u32 dsm_intent_held(struct dm_stream_metadata *md)
{
	return bitmap_weight(md->intent, DSM_INTENT_BITS);
}
EXPORT_SYMBOL_IF_KUNIT(dsm_intent_held);

/*
 * Commit, before staging any bitmap: drop the regions to clear from
 * md->intent, then take the regions asked for; intent_disk becomes the
 * map this commit's superblock records.
 */
static void dsm_intent_begin(struct dm_stream_metadata *md)
{
	u32 r, nr = nr_regions(md);

	lockdep_assert_held(&md->commit_lock);
	if (READ_ONCE(md->intent_drop_all)) {
		/*
		 * Quiesced: no write waits for a region, and a request left
		 * by present_run() for a block that became durable meanwhile
		 * must not open one again.
		 */
		bitmap_copy(md->intent_clear, md->intent, DSM_INTENT_BITS);
		bitmap_zero(md->intent_want, DSM_INTENT_BITS);
	}
	WRITE_ONCE(md->intent_drop_all, false);
	for_each_set_bit(r, md->intent_clear, DSM_INTENT_BITS) {
		clear_bit(r, md->intent);
		clear_bit(r, md->intent_used);
		md->intent_age[r] = 0;
	}
	/* Pairs with smp_mb() in dsm_write_ready(). */
	smp_mb();
	bitmap_zero(md->intent_add, DSM_INTENT_BITS);
	for_each_set_bit(r, md->intent_want, DSM_INTENT_BITS)
		if (test_and_clear_bit(r, md->intent_want) && r < nr)
			__set_bit(r, md->intent_add);
	bitmap_or(md->intent_disk, md->intent, md->intent_add,
		  DSM_INTENT_BITS);
}

/* Commit, once its batch is durable (@ok) or failed. */
static void dsm_intent_end(struct dm_stream_metadata *md, bool ok)
{
	u32 r;

	lockdep_assert_held(&md->commit_lock);
	for_each_set_bit(r, md->intent_add, DSM_INTENT_BITS) {
		if (ok) {
			md->intent_age[r] = 0;
			set_bit(r, md->intent);
		} else {
			set_bit(r, md->intent_want);
		}
	}
	if (!ok)
		bitmap_andnot(md->intent_disk, md->intent_disk,
			      md->intent_add, DSM_INTENT_BITS);
	bitmap_zero(md->intent_add, DSM_INTENT_BITS);
	bitmap_zero(md->intent_clear, DSM_INTENT_BITS);
}

/* Blocks [*first, *end) of region @r; false if it holds none. */
static bool region_blocks(struct dm_stream_metadata *md, u32 r,
			  unsigned long *first, unsigned long *end)
{
	u64 f = (u64)r << md->sb.intent_shift;

	if (f >= md->sb.nr_blocks)
		return false;
	*first = f;
	*end = min_t(u64, md->sb.nr_blocks,
		     f + (1ULL << md->sb.intent_shift));
	return true;
}

/*
 * Durable once closed.  A write in an open region sets its dirty bits in
 * core and goes down; the commit that closes the region writes those
 * bits, so the block's next write need not wait for a commit (to open
 * the region again) -- if the commit says so.
 *
 * Commit, after dsm_intent_begin() dropped the regions of intent_clear
 * (and its smp_mb()), before staging: the blocks of those regions that
 * are dirty for every consumer, committed present (md->durable implies
 * both) and not yet durable are taken into present_taken, unused from
 * dsm_commit_apply() to the next dsm_commit_begin(), and their slices
 * are marked changed.  The staging that follows reads their bits after
 * this did, and outside commit_lock bits only go from 0 to 1: every bit
 * seen here is in the batch.  (Marking the slices is what makes that
 * true for a bit whose writer has not yet marked its slice itself.)  The
 * cost: the slices of such blocks are staged for every consumer, once;
 * at a suspend after writes all over a large device that can take more
 * than one journal batch.
 */
static void __intent_take_closed(struct dm_stream_metadata *md)
{
	unsigned long b, first, end;
	unsigned int c;
	u32 r;

	lockdep_assert_held(&md->commit_lock);
	/* present_taken is free: dsm_commit_apply() consumed it. */
	if (WARN_ON_ONCE(!bitmap_empty(md->taken_slices,
				       md->sb.bitmap_blocks)))
		return;
	for_each_set_bit(r, md->intent_clear, DSM_INTENT_BITS) {
		if (!region_blocks(md, r, &first, &end))
			continue;
		bitmap_clear(md->present_taken, first, end - first);
		b = first;
		for_each_set_bit_from(b, md->dirty[0], end) {
			if (test_bit(b, md->durable) ||
			    !test_bit(b, md->present_commit) ||
			    !dsm_dirty_all(md, b))
				continue;
			__set_bit(b, md->present_taken);
			for (c = 0; c < DSM_MAX_CONSUMERS; c++)
				set_bit(b / DSM_BITS_PER_BLOCK,
					md->changed_dirty[c]);
		}
	}
}

/* Commit, once the batch that closed the regions is durable. */
static void __intent_durable_closed(struct dm_stream_metadata *md)
{
	unsigned long b, first, end;
	u32 r;

	lockdep_assert_held(&md->commit_lock);
	for_each_set_bit(r, md->intent_clear, DSM_INTENT_BITS) {
		if (!region_blocks(md, r, &first, &end))
			continue;
		b = first;
		for_each_set_bit_from(b, md->present_taken, end)
			set_bit(b, md->durable);
	}
}

/* KUnit: the intent steps of a commit that succeeds (@ok) or fails. */
void dsm_intent_commit_incore(struct dm_stream_metadata *md, bool ok)
{
	mutex_lock(&md->commit_lock);
	dsm_intent_begin(md);
	__intent_take_closed(md);
	if (ok)
		__intent_durable_closed(md);
	dsm_intent_end(md, ok);
	mutex_unlock(&md->commit_lock);
}
EXPORT_SYMBOL_IF_KUNIT(dsm_intent_commit_incore);

bool dsm_dirty_test(struct dm_stream_metadata *md, unsigned int c, u64 block)
{
	return test_bit(block, md->dirty[c]);
}
EXPORT_SYMBOL_IF_KUNIT(dsm_dirty_test);

bool dsm_dirty_all(struct dm_stream_metadata *md, u64 block)
{
	unsigned int c;

	for (c = 0; c < DSM_MAX_CONSUMERS; c++)
		if (!test_bit(block, md->dirty[c]))
			return false;
	return true;
}
EXPORT_SYMBOL_IF_KUNIT(dsm_dirty_all);

bool dsm_set_dirty(struct dm_stream_metadata *md, u64 block)
{
	bool newly = false;
	unsigned int c;

	for (c = 0; c < DSM_MAX_CONSUMERS; c++) {
		if (!test_bit(block, md->dirty[c]) &&
		    !test_and_set_bit(block, md->dirty[c])) {
			atomic64_inc(&md->nr_dirty[c]);
			newly = true;
		}
		/*
		 * Always, not only when newly set: another writer may have
		 * set the bit and not yet its slice; the commit this caller
		 * waits for must write the slice either way.  Pairs with
		 * test_and_clear_bit() in __write_dirty().
		 */
		smp_mb__after_atomic();
		set_bit(block / DSM_BITS_PER_BLOCK, md->changed_dirty[c]);
	}
	return newly;
}
EXPORT_SYMBOL_IF_KUNIT(dsm_set_dirty);

bool dsm_set_present(struct dm_stream_metadata *md, u64 block)
{
	if (test_bit(block, md->present) ||
	    test_and_set_bit(block, md->present))
		return false;
	/* Pairs with test_and_clear_bit() in dsm_commit_begin(). */
	smp_mb__after_atomic();
	set_bit(block / DSM_BITS_PER_BLOCK, md->pending_present);
	return atomic64_inc_return(&md->nr_present) == md->sb.nr_blocks;
}
EXPORT_SYMBOL_IF_KUNIT(dsm_set_present);

/* Words of slice @i of an in-core map: [*first, *end). */
static void slice_words(struct dm_stream_metadata *md, u32 i, u64 *first,
			u64 *end)
{
	u64 last = min_t(u64, (u64)(i + 1) * DSM_BITS_PER_BLOCK,
			 md->sb.nr_blocks);

	*first = (u64)i * DSM_BITS_PER_BLOCK / BITS_PER_LONG;
	*end = BITS_TO_LONGS(last);
}

/*
 * Commit step 1: take the present bits set so far (their data writes have
 * completed) into present_taken.  Returns how many blocks are new.
 */
u64 dsm_commit_begin(struct dm_stream_metadata *md)
{
	u64 w, first, end, n = 0;
	u32 i;

	for (i = 0; i < md->sb.bitmap_blocks; i++) {
		if (!test_and_clear_bit(i, md->pending_present))
			continue;
		__set_bit(i, md->taken_slices);
		slice_words(md, i, &first, &end);
		for (w = first; w < end; w++) {
			unsigned long v = READ_ONCE(md->present[w]);

			md->present_taken[w] = v;
			n += hweight_long(v & ~md->present_commit[w]);
		}
	}
	return n;
}
EXPORT_SYMBOL_IF_KUNIT(dsm_commit_begin);

/* A failed data flush: what dsm_commit_begin() took is pending again. */
static void dsm_commit_unwind(struct dm_stream_metadata *md)
{
	u32 i;

	for (i = 0; i < md->sb.bitmap_blocks; i++)
		if (__test_and_clear_bit(i, md->taken_slices))
			set_bit(i, md->pending_present);
}

/*
 * Commit step 3, in core: the blocks taken by dsm_commit_begin() are durable
 * on the data device now, so their present bits may be written.
 */
void dsm_commit_apply(struct dm_stream_metadata *md)
{
	u64 w, first, end;
	u32 i;

	for (i = 0; i < md->sb.bitmap_blocks; i++) {
		if (!__test_and_clear_bit(i, md->taken_slices))
			continue;
		slice_words(md, i, &first, &end);
		for (w = first; w < end; w++) {
			unsigned long add = md->present_taken[w] &
				~md->present_commit[w];

			if (!add)
				continue;
			md->present_commit[w] |= add;
			set_bit(i, md->changed_present);
		}
	}
}
EXPORT_SYMBOL_IF_KUNIT(dsm_commit_apply);

bool dsm_committable(struct dm_stream_metadata *md, u64 block)
{
	return test_bit(block, md->present_commit);
}
EXPORT_SYMBOL_IF_KUNIT(dsm_committable);

bool dsm_slice_changed(struct dm_stream_metadata *md, bool dirty, u32 slice)
{
	return test_bit(slice, dirty ? md->changed_dirty[0] :
			md->changed_present);
}
EXPORT_SYMBOL_IF_KUNIT(dsm_slice_changed);

int dsm_commit(struct dm_stream_metadata *md, struct block_device *data,
	       bool *data_error)
{
	u64 n;
	int r = 0;

	*data_error = false;
	mutex_lock(&md->commit_lock);
	if (md->failed) {
		r = -EIO;
		goto out;
	}

	/* 1. blocks whose data writes have completed */
	n = dsm_commit_begin(md);
	if (!n && !dsm_changed(md)) {
		dsm_commit_apply(md);
		goto out;
	}

	/*
	 * 2. make their data durable (only when there are any).  On failure
	 * they still become committable: their writes completed before this
	 * flush was issued, and the next commit flushes again before writing
	 * any bitmap.
	 */
	if (n)
		r = blkdev_issue_flush(data);
	if (r) {
		/* Not durable: the next commit takes them and flushes again. */
		dsm_commit_unwind(md);
		*data_error = true;
		goto out;
	}

	/*
	 * 3. dirty, then present bitmap blocks, then the superblock with the
	 * write-intent map: one batch, or several in that order.  A region
	 * dropped from the map is dropped in the batch that holds the last
	 * of the dirty bits it covered, or a later one.
	 */
	dsm_commit_apply(md);
	dsm_intent_begin(md);
	__intent_take_closed(md);
	md->sb.generation++;
	r = __write_maps_sb(md);
	if (!r)
		__intent_durable_closed(md);
	dsm_intent_end(md, !r);
out:
	mutex_unlock(&md->commit_lock);
	return r;
}

void dsm_fill_policy(struct dm_stream_metadata *md, bool *on, u64 *rate)
{
	*on = READ_ONCE(md->fill_on);
	*rate = READ_ONCE(md->fill_rate);
}

void dsm_set_fill_on(struct dm_stream_metadata *md, bool on)
{
	WRITE_ONCE(md->fill_on, on);
}

void dsm_set_fill_rate(struct dm_stream_metadata *md, u64 rate)
{
	WRITE_ONCE(md->fill_rate, rate);
}
