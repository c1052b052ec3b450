/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-stream on-disk metadata: present/dirty bitmaps behind an opaque API.
 */
#ifndef DM_STREAM_METADATA_H
#define DM_STREAM_METADATA_H

#include <linux/bits.h>
#include <linux/types.h>
#include <linux/blkdev.h>

#define DSM_BLOCK_SIZE		4096U	/* metadata block, bytes */
#define DSM_BLOCK_SECTORS	(DSM_BLOCK_SIZE >> SECTOR_SHIFT)
#define DSM_MAX_CONSUMERS	4	/* dirty-map slots reserved on disk */
#define DSM_FIRST_BITMAP	16	/* blocks 1..15 reserved for later use */
#define DSM_BITMAP_WORDS	509	/* __le64 bit words per bitmap block */
#define DSM_BITS_PER_BLOCK	(DSM_BITMAP_WORDS * 64)
/* present map, then per consumer a dirty map and a reserved map */
#define DSM_NR_BITMAPS		(1 + 2 * DSM_MAX_CONSUMERS)
/* 2: commits go through a journal (see dm-stream-metadata.c) */
#define DSM_FORMAT_VERSION	2
#define DSM_BITMAP_VERSION	1	/* bitmap block layout, unchanged in 2 */
/* Journal: two slots of a header block and this many block images. */
#define DSM_JNL_ENTRIES		64
#define DSM_JNL_SLOT_BLOCKS	(1 + DSM_JNL_ENTRIES)
#define DSM_JNL_BLOCKS		(2 * DSM_JNL_SLOT_BLOCKS)
/*
 * Largest device, in blocks: in-core maps are bitmaps indexed by unsigned
 * int in the kernel's bitmap helpers, and nine of them live in memory.
 */
#define DSM_MAX_BLOCKS		BIT_ULL(30)
#define DSM_IMAGE_ID_LEN	64	/* including the NUL */
/*
 * Write intent: at most this many regions (a bitmap in the superblock);
 * a region is a power of two of blocks.  DSM_INTENT_OFF: no write intent,
 * every first write of a block waits for a commit of its own bits.
 */
#define DSM_INTENT_WORDS	384
#define DSM_INTENT_BITS		(DSM_INTENT_WORDS * 64)
#define DSM_INTENT_OFF		63

struct dm_stream_metadata;

/* Decoded superblock (what the checks compare against the table). */
struct dsm_sb_info {
	u8 uuid[16];
	u32 flags;
	u32 block_sectors;
	u64 nr_blocks;
	u64 generation;
	u32 nr_consumers;
	u32 bitmap_blocks;
	u64 consumer_gen[DSM_MAX_CONSUMERS];	/* last snapshot id cut */
	char image_id[DSM_IMAGE_ID_LEN];
	/*
	 * Write-intent regions of 1 << intent_shift blocks: a bitmap of
	 * DSM_INTENT_BITS, or NULL (unpack: checked only; pack: none).
	 */
	u32 intent_shift;
	unsigned long *intent;
};

/*
 * Geometry: metadata blocks per bitmap, the first block of the journal and
 * the metadata device's size in blocks, for @nr_blocks.
 */
u32 dsm_bitmap_blocks(u64 nr_blocks);
u64 dsm_journal_start(u64 nr_blocks);
u64 dsm_total_blocks(u64 nr_blocks);
/* Write-intent regions of 1 << @shift blocks covering @nr_blocks. */
u64 dsm_intent_regions(u64 nr_blocks, u32 shift);

/* Pure encoders/decoders, used by the metadata code and by KUnit. */
void dsm_sb_pack(const struct dsm_sb_info *sb, u64 blocknr, void *buf);
int dsm_sb_unpack(const void *buf, u64 blocknr, struct dsm_sb_info *sb,
		  const char **why);
void dsm_bitmap_pack(const unsigned long *bits, const unsigned long *more,
		     u64 nr_bits, u32 slice, u32 index, u64 blocknr, void *buf);
int dsm_bitmap_unpack(const void *buf, u64 blocknr, u32 index,
		      unsigned long *bits, u64 nr_bits, u32 slice,
		      const char **why);
bool dsm_buf_is_zero(const void *buf, size_t len);
/* Recompute the checksum of a packed superblock/bitmap block (tests). */
void dsm_sb_reseal(void *buf);
void dsm_bitmap_reseal(void *buf);

/*
 * Open the metadata on @bdev for the dm device @owner (a reload of it
 * shares the in-core object; another device is refused), formatting it
 * when it is all zeroes.  Returns
 * an ERR_PTR and sets *@error to a sentence for ti->error on failure.
 * Process context, may sleep.
 */
struct dm_stream_metadata *dsm_open(struct block_device *bdev,
				    const void *owner, u32 block_sectors,
				    u64 nr_blocks, const char **error);
void dsm_close(struct dm_stream_metadata *md);
/*
 * Another table (a reload's, live or not yet resumed) holds @md too.
 * Process context.
 */
bool dsm_shared(struct dm_stream_metadata *md);

/* Lockless, any context. */
static inline bool dsm_test(const unsigned long *map, u64 block)
{
	return test_bit(block, map);
}

const unsigned long *dsm_present_map(struct dm_stream_metadata *md);
u64 dsm_nr_present(struct dm_stream_metadata *md);
u64 dsm_nr_dirty(struct dm_stream_metadata *md, unsigned int c);
u64 dsm_generation(struct dm_stream_metadata *md);
/* Copy the image id ("" if none) to @buf, DSM_IMAGE_ID_LEN bytes.  Any context. */
void dsm_image_id(struct dm_stream_metadata *md, char *buf);

/*
 * The background fill's switch and rate limit (bytes/s, 0: none), kept
 * in memory with the metadata so that they outlive a table reload and a
 * helper restart (not a reboot: they are not on disk).  Any context.
 */
void dsm_fill_policy(struct dm_stream_metadata *md, bool *on, u64 *rate);
void dsm_set_fill_on(struct dm_stream_metadata *md, bool on);
void dsm_set_fill_rate(struct dm_stream_metadata *md, u64 rate);
bool dsm_changed(struct dm_stream_metadata *md);

/* Lockless, any context: is @block dirty for consumer @c (snapshot aside)? */
bool dsm_dirty_test(struct dm_stream_metadata *md, unsigned int c, u64 block);

/*
 * Lockless, any context: are @block's dirty bits on disk for every
 * consumer (a write may go straight down)?  dsm_mark_durable() records
 * that after a commit that began once they were set in core; a commit
 * that closes a write-intent region records it for the region's blocks
 * it wrote dirty.
 */
bool dsm_durable(struct dm_stream_metadata *md, u64 block);
void dsm_mark_durable(struct dm_stream_metadata *md, u64 block);

/*
 * A write to present block @block is about to be issued.  Returns true
 * when it may go down now: its dirty bits are on disk, or they are set
 * here in core and its region's write intent is on disk (a later commit
 * writes the bits).  Otherwise its bits are set in core and its region's
 * intent is requested: the write waits for the next commit that begins
 * after this call, then dsm_mark_durable().  A REQ_FUA write (@fua) goes
 * through a region never: the block may have become present a moment
 * ago, and its present bit must be durable when the write completes.
 * @ahead: the write may ask for the next region ahead (intent_ahead());
 * false for a block after the first of its bio, whose previous block is
 * the bio's own and says nothing about a sequential writer.
 * Any context, never sleeps.
 */
bool dsm_write_ready(struct dm_stream_metadata *md, u64 block, bool fua,
		     bool ahead);

/*
 * True once after dsm_write_ready() asked for a region ahead of a
 * sequential writer (in an open region, the write went on): the caller
 * should have a commit made soon, so the region is open when the writer
 * gets there.  Any context, never sleeps.
 */
bool dsm_intent_ahead(struct dm_stream_metadata *md);

/*
 * Write-intent upkeep.  dsm_intent_tick() (once a commit period, process
 * context) ages the regions held and returns true when idle ones should
 * be dropped by a commit.  dsm_intent_drop() makes the next commit drop
 * every region (quiesced: at suspend).  dsm_set_intent() sets the region
 * size (log2 blocks, or DSM_INTENT_OFF) with I/O quiesced, committing
 * first if regions are held.
 */
bool dsm_intent_tick(struct dm_stream_metadata *md);
void dsm_intent_drop(struct dm_stream_metadata *md);
int dsm_set_intent(struct dm_stream_metadata *md, struct block_device *data,
		   u32 shift);
u32 dsm_intent_held(struct dm_stream_metadata *md);

/* Lockless, any context: is @block dirty for every consumer? */
bool dsm_dirty_all(struct dm_stream_metadata *md, u64 block);

/*
 * Mark @block dirty for every consumer; atomic, any context.  Returns true
 * if it was newly dirty for one of them.
 */
bool dsm_set_dirty(struct dm_stream_metadata *md, u64 block);

/*
 * Find the first run of set (@set true) or clear bits of @map at or after
 * @from, below @nr.  Returns false when there is none.  Any context.
 */
bool dsm_next_range(const unsigned long *map, u64 nr, u64 from, bool set,
		    u64 *start, u64 *len);

/* How many bits of [@first, @end) of @map are clear.  Any context. */
u64 dsm_count_clear(const unsigned long *map, u64 first, u64 end);

/*
 * A message answer "<next cursor> <first>+<count>..." with the runs of set
 * (@set) or clear bits of @map (@nr bits) from @cursor on, as many as fit
 * in @maxlen; the next cursor is @nr once the map is exhausted.  Returns 1
 * (an answer), -ERANGE, -ENOSPC or -ENOMEM.  Process context.
 */
int dsm_emit_ranges(const unsigned long *map, u64 nr, bool set, u64 cursor,
		    char *result, unsigned int maxlen);

/*
 * Mark @block present once its data write has completed.  Any context,
 * never allocates, never fails.  The bit is usable for I/O at once and
 * reaches the disk at the next commit, after a flush of the data device.
 * Returns true when this made the last absent block present.
 */
bool dsm_set_present(struct dm_stream_metadata *md, u64 block);

/*
 * Commit (see the protocol in dm-stream-metadata.c).  Process context.
 * On failure *data_error tells whether the data device's flush failed (its
 * contents can no longer be trusted) rather than the metadata device.
 */
int dsm_commit(struct dm_stream_metadata *md, struct block_device *data,
	       bool *data_error);

/*
 * Make every block dirty for consumer 0 absent and clean again, and dirty
 * for the other consumers, crash-safe (see the protocol in
 * dm-stream-metadata.c).  The caller has quiesced all I/O and no snapshot
 * is in progress.  Returns the number of blocks reverted or -errno.
 */
long dsm_revert(struct dm_stream_metadata *md, struct block_device *data);

/*
 * Snapshots (in core only; a reload aborts them, see dm-stream-metadata.c).
 * Process context.  dsm_snapshot() needs quiesced I/O; it persists the new
 * id in the superblock and returns it in *@gen and the number of blocks in
 * *@nr.  dsm_ack() makes the generation's blocks clean for consumer @c on
 * disk (blocks written since the cut stay dirty); dsm_abort() puts them
 * back into the dirty set.  Both answer -ESTALE for a generation that is
 * not the one in progress.
 */
int dsm_snapshot(struct dm_stream_metadata *md, struct block_device *data,
		 unsigned int c, u64 *gen, u64 *nr);
int dsm_ack(struct dm_stream_metadata *md, unsigned int c, u64 gen, u64 *nr);
int dsm_abort(struct dm_stream_metadata *md, unsigned int c, u64 gen,
	      u64 *nr);
/* Id of @c's snapshot in progress, 0 if none.  Any context. */
u64 dsm_snap_gen(struct dm_stream_metadata *md, unsigned int c);
u64 dsm_snap_blocks(struct dm_stream_metadata *md, unsigned int c);
/* @c's snapshot map; valid while dsm_snap_gen(md, c) is non-zero. */
const unsigned long *dsm_snap_map(struct dm_stream_metadata *md,
				  unsigned int c);

/*
 * Image update.  dsm_inval_add() collects block ranges (any time, process
 * context); dsm_invalidate() (quiesced, no snapshot in progress) makes them
 * absent, records @image_id, and is crash-safe.  With @keep, blocks dirty
 * for consumer 0 stay present and dirty.  Returns the number of blocks
 * made absent or -errno; -ENOTUNIQ refuses @keep while consumer 0's dirty
 * set holds recovered write-intent regions.
 */
int dsm_inval_add(struct dm_stream_metadata *md, u64 first, u64 count);
void dsm_inval_clear(struct dm_stream_metadata *md);
u64 dsm_inval_count(struct dm_stream_metadata *md);
long dsm_invalidate(struct dm_stream_metadata *md, struct block_device *data,
		    const char *image_id, bool keep);

/*
 * The in-core steps of a commit, exposed for the KUnit tests.  begin
 * (before the data flush) takes the blocks made present so far and returns
 * how many; apply (after it) lets the commit write them.
 */
u64 dsm_commit_begin(struct dm_stream_metadata *md);
void dsm_commit_apply(struct dm_stream_metadata *md);
bool dsm_committable(struct dm_stream_metadata *md, u64 block);
void dsm_intent_commit_incore(struct dm_stream_metadata *md, bool ok);
bool dsm_slice_changed(struct dm_stream_metadata *md, bool dirty, u32 slice);
u64 dsm_snapshot_cut(struct dm_stream_metadata *md, unsigned int c);
u64 dsm_snapshot_merge(struct dm_stream_metadata *md, unsigned int c);
int dsm_snapshot_incore(struct dm_stream_metadata *md, unsigned int c,
			u64 gen);
struct dm_stream_metadata *dsm_create_incore(u64 nr_blocks);
void dsm_destroy_incore(struct dm_stream_metadata *md);

#endif
