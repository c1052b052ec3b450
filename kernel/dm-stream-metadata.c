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
 *     bitmap 1 + 2c              dirty map of consumer c
 *     bitmap 2 + 2c              snapshot map of consumer c
 *
 * bitmap_blocks = ceil(nr_blocks / DSM_BITS_PER_BLOCK), so the metadata
 * device needs (16 + 9 * bitmap_blocks) * 4 KiB.  Every bitmap block starts
 * with a header (crc32c, bitmap index, block number, magic, format version)
 * so that a torn or
 * misdirected write is detected on load instead of silently changing which
 * blocks are present.
 *
 * Present and dirty maps: the target keeps both maps in core; the in-core
 * copies are authoritative for I/O and the on-disk copies trail them by at
 * most one commit.  In this version of the format every bit only ever goes
 * from 0 to 1 (a block becomes present, a block becomes dirty), so bitmap
 * blocks are updated in place: a power cut in the middle of a commit leaves
 * each bit either at its old or at its new value, both of which are safe
 * given the ordering below.
 *
 * Commit protocol (dsm_commit(), always in the worker, serialised by
 * md->commit_lock):
 *
 *   1. Take the list of blocks that became present since the last commit.
 *      A block is put on that list only after the write of its data to the
 *      data device has completed.
 *   2. Flush the data device.  From here on the data of every block on the
 *      list is durable.
 *   3. Set those blocks in the committed present map (md->present_commit,
 *      touched by nobody but the commit), then, for every bitmap block that
 *      changed, encode it -- present bits from the committed map, dirty bits
 *      from the live map -- into a dm-bufio buffer, write all buffers and
 *      flush the metadata device.
 *   4. Increment the generation in the superblock, write it and flush.
 *
 * Rule 1 (present): a present bit reaches the disk only in step 3, after the
 * flush of step 2, which was issued after the block's data write completed:
 * the data is durable first.
 *
 * Revert (dsm_revert(), target suspended, after a normal commit) clears
 * bits, which in-place updates cannot make atomic by themselves.  It is
 * made idempotent instead: the superblock is written with SB_F_REVERTING
 * first; then every present-bitmap block is rewritten with
 * present &= ~dirty and flushed; only then are the dirty bitmap blocks
 * cleared and flushed; finally the flag is cleared.  A power cut anywhere
 * leaves the flag set and the dirty map still naming every block not yet
 * made absent, so dsm_open() simply runs the same steps again.
 *
 * Rule 2 (dirty): dsm_set_dirty() runs in the map path before the write is
 * issued.  The target holds every REQ_PREFLUSH bio, and completes every
 * REQ_FUA write, only after a commit that began after that point, so the
 * dirty bit of every write a flush covers is durable when the flush
 * completes.  Dirty bits copied from the live map may include bits of
 * writes still in flight; a dirty bit without new data only costs a
 * redundant transfer later, so over-approximating is safe.
 */
#include "dm-stream-metadata.h"

#include <linux/crc32c.h>
#include <linux/device-mapper.h>
#include <linux/dm-bufio.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/uuid.h>

#define DM_MSG_PREFIX "stream metadata"

#define SB_MAGIC	0x6d61657274736d64ULL	/* "dmstream" */
/* superblock flags */
#define SB_F_REVERTING	0x1U	/* a revert was interrupted: redo it */
#define SB_KNOWN_FLAGS	SB_F_REVERTING
#define SB_CSUM_XOR	0x5e7a11edU
#define BITMAP_CSUM_XOR	0x0b17c0deU
#define BITMAP_MAGIC	0x706d7462U		/* "btmp" */

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
	/* Reserved for per-consumer snapshot state and the image identity. */
	__le64 consumer_gen[DSM_MAX_CONSUMERS];
	__u8 image_id[64];
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

struct dm_stream_metadata {
	struct dm_bufio_client *bufio;
	struct dsm_sb_info sb;

	/* Live maps, any context, atomic bitops. */
	unsigned long *present;
	unsigned long *dirty;
	atomic64_t nr_present;
	atomic64_t nr_dirty;

	/*
	 * Bitmap blocks (of bitmap 0 and 1, indexed by block within the
	 * bitmap) that differ from disk.  Atomic bitops, any context.
	 */
	unsigned long *changed_present;
	unsigned long *changed_dirty;

	/* Serialises dsm_commit(); protects present_commit. */
	struct mutex commit_lock;
	unsigned long *present_commit;

	/* Protects pending: blocks made present since the last commit. */
	spinlock_t pending_lock;
	u64 *pending;
	size_t nr_pending;
	size_t max_pending;
};

u32 dsm_bitmap_blocks(u64 nr_blocks)
{
	return DIV_ROUND_UP_ULL(nr_blocks, DSM_BITS_PER_BLOCK);
}

u64 dsm_total_blocks(u64 nr_blocks)
{
	return DSM_FIRST_BITMAP +
		(u64)DSM_NR_BITMAPS * dsm_bitmap_blocks(nr_blocks);
}

static u32 block_csum(const void *buf, u32 xor)
{
	return crc32c(~0U, buf + sizeof(__le32),
		      DSM_BLOCK_SIZE - sizeof(__le32)) ^ xor;
}

void dsm_sb_reseal(void *buf)
{
	*(__le32 *)buf = cpu_to_le32(block_csum(buf, SB_CSUM_XOR));
}

void dsm_bitmap_reseal(void *buf)
{
	*(__le32 *)buf = cpu_to_le32(block_csum(buf, BITMAP_CSUM_XOR));
}

bool dsm_buf_is_zero(const void *buf, size_t len)
{
	return !memchr_inv(buf, 0, len);
}

void dsm_sb_pack(const struct dsm_sb_info *sb, u64 blocknr, void *buf)
{
	struct stream_sb_disk *d = buf;

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
	d->csum = cpu_to_le32(block_csum(buf, SB_CSUM_XOR));
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

/*
 * Encode bits [slice * DSM_BITS_PER_BLOCK, +DSM_BITS_PER_BLOCK) of @bits
 * into metadata block @blocknr.  @index is the global number of the bitmap
 * block (bitmap * bitmap_blocks + slice), stored so that a block copied to
 * the wrong bitmap is detected too.
 */
void dsm_bitmap_pack(const unsigned long *bits, u64 nr_bits, u32 slice,
		     u32 index, u64 blocknr, void *buf)
{
	struct stream_bitmap_disk *d = buf;
	u64 first = (u64)slice * DSM_BITS_PER_BLOCK;
	unsigned int w, b;

	memset(buf, 0, DSM_BLOCK_SIZE);
	d->index = cpu_to_le32(index);
	d->blocknr = cpu_to_le64(blocknr);
	d->magic = cpu_to_le32(BITMAP_MAGIC);
	d->version = cpu_to_le32(DSM_FORMAT_VERSION);
	for (w = 0; w < DSM_BITMAP_WORDS; w++) {
		u64 word = 0;

		for (b = 0; b < 64; b++) {
			u64 bit = first + (u64)w * 64 + b;

			if (bit >= nr_bits)
				break;
			if (test_bit(bit, bits))
				word |= 1ULL << b;
		}
		d->bits[w] = cpu_to_le64(word);
	}
	d->csum = cpu_to_le32(block_csum(buf, BITMAP_CSUM_XOR));
}

int dsm_bitmap_unpack(const void *buf, u64 blocknr, u32 index,
		      unsigned long *bits, u64 nr_bits, u32 slice,
		      const char **why)
{
	const struct stream_bitmap_disk *d = buf;
	u64 first = (u64)slice * DSM_BITS_PER_BLOCK;
	u32 csum = block_csum(buf, BITMAP_CSUM_XOR);
	unsigned int w, b;

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
	if (le32_to_cpu(d->version) != DSM_FORMAT_VERSION) {
		DMERR("bitmap block %llu version: expected %u, found %u",
		      blocknr, DSM_FORMAT_VERSION, le32_to_cpu(d->version));
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
		u64 word = le64_to_cpu(d->bits[w]);

		for (b = 0; b < 64; b++) {
			u64 bit = first + (u64)w * 64 + b;

			if (!(word & (1ULL << b)))
				continue;
			if (bit >= nr_bits) {
				*why = "Metadata bitmap has bits beyond the device";
				return -EUCLEAN;
			}
			__set_bit(bit, bits);
		}
	}
	return 0;
}

/* Metadata block holding block @i (within the bitmap) of bitmap @map. */
static u64 bitmap_location(struct dm_stream_metadata *md, u32 map, u32 i)
{
	return DSM_FIRST_BITMAP + (u64)map * md->sb.bitmap_blocks + i;
}

static int write_bitmap_block(struct dm_stream_metadata *md, u32 map, u32 i,
			      const unsigned long *bits)
{
	u64 loc = bitmap_location(md, map, i);
	struct dm_buffer *b;
	void *p;

	p = dm_bufio_new(md->bufio, loc, &b);
	if (IS_ERR(p))
		return PTR_ERR(p);
	dsm_bitmap_pack(bits, md->sb.nr_blocks, i,
			map * md->sb.bitmap_blocks + i, loc, p);
	dm_bufio_mark_buffer_dirty(b);
	dm_bufio_release(b);
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

static int write_sb(struct dm_stream_metadata *md)
{
	struct dm_buffer *b;
	void *p;
	int r;

	p = dm_bufio_new(md->bufio, 0, &b);
	if (IS_ERR(p))
		return PTR_ERR(p);
	dsm_sb_pack(&md->sb, 0, p);
	dm_bufio_mark_buffer_dirty(b);
	dm_bufio_release(b);
	r = dm_bufio_write_dirty_buffers(md->bufio);
	if (!r)
		r = dm_bufio_issue_flush(md->bufio);
	return r;
}

static int format(struct dm_stream_metadata *md)
{
	u32 map, i;
	int r;

	for (map = 0; map < DSM_NR_BITMAPS; map++)
		for (i = 0; i < md->sb.bitmap_blocks; i++) {
			/* present_commit is all zero at format time */
			r = write_bitmap_block(md, map, i, md->present_commit);
			if (r)
				return r;
		}
	r = dm_bufio_write_dirty_buffers(md->bufio);
	if (!r)
		r = dm_bufio_issue_flush(md->bufio);
	if (!r)
		r = write_sb(md);
	return r;
}

static unsigned long *alloc_bitmap(u64 nr_bits)
{
	return kvcalloc(BITS_TO_LONGS(nr_bits), sizeof(unsigned long),
			GFP_KERNEL);
}

static void free_maps(struct dm_stream_metadata *md)
{
	kvfree(md->present);
	kvfree(md->dirty);
	kvfree(md->present_commit);
	kvfree(md->changed_present);
	kvfree(md->changed_dirty);
	kvfree(md->pending);
}

static int __write_changed(struct dm_stream_metadata *md, u32 map,
			   unsigned long *changed, const unsigned long *bits)
{
	u32 i;
	int r;

	lockdep_assert_held(&md->commit_lock);
	for (i = 0; i < md->sb.bitmap_blocks; i++) {
		if (!test_and_clear_bit(i, changed))
			continue;
		r = write_bitmap_block(md, map, i, bits);
		if (r) {
			set_bit(i, changed);
			return r;
		}
	}
	return 0;
}

static int flush_buffers(struct dm_stream_metadata *md)
{
	int r = dm_bufio_write_dirty_buffers(md->bufio);

	return r ? r : dm_bufio_issue_flush(md->bufio);
}

/*
 * The revert steps (see the protocol at the top).  Returns the number of
 * blocks made absent, or -errno.  Nothing may be pending: the caller
 * committed first.
 */
static long __revert(struct dm_stream_metadata *md)
{
	u64 nr = md->sb.nr_blocks, reverted;
	u32 i;
	int r;

	lockdep_assert_held(&md->commit_lock);
	md->sb.flags |= SB_F_REVERTING;
	r = write_sb(md);
	if (r)
		return r;

	reverted = bitmap_weight(md->dirty, nr);
	for (i = 0; i < md->sb.bitmap_blocks; i++) {
		u64 first = (u64)i * DSM_BITS_PER_BLOCK;
		u64 len = min_t(u64, DSM_BITS_PER_BLOCK, nr - first);

		if (find_next_bit(md->dirty, first + len, first) <
		    first + len) {
			set_bit(i, md->changed_present);
			set_bit(i, md->changed_dirty);
		}
	}
	bitmap_andnot(md->present, md->present, md->dirty, nr);
	bitmap_andnot(md->present_commit, md->present_commit, md->dirty, nr);
	r = __write_changed(md, 0, md->changed_present, md->present_commit);
	if (!r)
		r = flush_buffers(md);
	if (r)
		return r;

	bitmap_zero(md->dirty, nr);
	r = __write_changed(md, 1, md->changed_dirty, md->dirty);
	if (!r)
		r = flush_buffers(md);
	if (r)
		return r;

	md->sb.flags &= ~SB_F_REVERTING;
	md->sb.generation++;
	r = write_sb(md);
	if (r)
		return r;
	atomic64_set(&md->nr_present, bitmap_weight(md->present, nr));
	atomic64_set(&md->nr_dirty, 0);
	return reverted;
}

long dsm_revert(struct dm_stream_metadata *md, struct block_device *data)
{
	bool data_error;
	long r;

	r = dsm_commit(md, data, &data_error);
	if (r)
		return r;
	mutex_lock(&md->commit_lock);
	r = __revert(md);
	mutex_unlock(&md->commit_lock);
	return r;
}

/*
 * The in-core half of dsm_open(): maps and locks, no device.  Used alone
 * by the KUnit tests of the commit state machine.
 */
struct dm_stream_metadata *dsm_create_incore(u64 nr_blocks)
{
	struct dm_stream_metadata *md = kzalloc(sizeof(*md), GFP_KERNEL);

	if (!md)
		return NULL;
	mutex_init(&md->commit_lock);
	spin_lock_init(&md->pending_lock);
	md->sb.nr_blocks = nr_blocks;
	md->sb.nr_consumers = DSM_MAX_CONSUMERS;
	md->sb.bitmap_blocks = dsm_bitmap_blocks(nr_blocks);
	md->present = alloc_bitmap(nr_blocks);
	md->dirty = alloc_bitmap(nr_blocks);
	md->present_commit = alloc_bitmap(nr_blocks);
	md->changed_present = alloc_bitmap(md->sb.bitmap_blocks);
	md->changed_dirty = alloc_bitmap(md->sb.bitmap_blocks);
	if (!md->present || !md->dirty || !md->present_commit ||
	    !md->changed_present || !md->changed_dirty) {
		dsm_destroy_incore(md);
		return NULL;
	}
	return md;
}

void dsm_destroy_incore(struct dm_stream_metadata *md)
{
	free_maps(md);
	kfree(md);
}

struct dm_stream_metadata *dsm_open(struct block_device *bdev,
				    u32 block_sectors, u64 nr_blocks,
				    const char **error)
{
	struct dm_stream_metadata *md;
	struct dm_buffer *b;
	void *p;
	bool fresh;
	int r;

	md = dsm_create_incore(nr_blocks);
	if (!md) {
		*error = "Cannot allocate in-core bitmaps";
		return ERR_PTR(-ENOMEM);
	}
	md->sb.block_sectors = block_sectors;

	md->bufio = dm_bufio_client_create(bdev, DSM_BLOCK_SIZE, 1, 0,
					   NULL, NULL, 0);
	if (IS_ERR(md->bufio)) {
		*error = "Cannot create dm-bufio client";
		r = PTR_ERR(md->bufio);
		goto out_incore;
	}

	if (dm_bufio_get_device_size(md->bufio) < dsm_total_blocks(nr_blocks)) {
		DMERR("metadata device too small: need %llu sectors, have %llu",
		      dsm_total_blocks(nr_blocks) * DSM_BLOCK_SECTORS,
		      (u64)dm_bufio_get_device_size(md->bufio) *
		      DSM_BLOCK_SECTORS);
		*error = "Metadata device too small";
		r = -ENOSPC;
		goto out_bufio;
	}

	p = dm_bufio_read(md->bufio, 0, &b);
	if (IS_ERR(p)) {
		*error = "Cannot read metadata superblock";
		r = PTR_ERR(p);
		goto out_bufio;
	}
	fresh = dsm_buf_is_zero(p, DSM_BLOCK_SIZE);
	if (!fresh) {
		struct dsm_sb_info sb;

		r = dsm_sb_unpack(p, 0, &sb, error);
		if (!r && sb.block_sectors != block_sectors) {
			DMERR("metadata block size: table has %u sectors, metadata has %u",
			      block_sectors, sb.block_sectors);
			*error = "Block size differs from the metadata's";
			r = -EINVAL;
		}
		if (!r && sb.nr_blocks != nr_blocks) {
			DMERR("metadata size: table has %llu blocks, metadata has %llu",
			      nr_blocks, sb.nr_blocks);
			*error = "Device size differs from the metadata's";
			r = -EINVAL;
		}
		if (!r)
			md->sb = sb;
	}
	dm_bufio_release(b);
	if (r)
		goto out_bufio;

	if (fresh) {
		generate_random_uuid(md->sb.uuid);
		md->sb.generation = 1;
		r = format(md);
		if (r) {
			*error = "Cannot format metadata device";
			goto out_bufio;
		}
		DMINFO("formatted metadata: %llu blocks of %u sectors",
		       nr_blocks, block_sectors);
	} else {
		r = read_bitmap(md, 0, md->present, error);
		if (!r)
			r = read_bitmap(md, 1, md->dirty, error);
		if (r)
			goto out_bufio;
		bitmap_copy(md->present_commit, md->present, nr_blocks);
		atomic64_set(&md->nr_present,
			     bitmap_weight(md->present, nr_blocks));
		atomic64_set(&md->nr_dirty, bitmap_weight(md->dirty, nr_blocks));
		if (md->sb.flags & SB_F_REVERTING) {
			DMINFO("completing an interrupted revert");
			mutex_lock(&md->commit_lock);
			r = __revert(md);
			mutex_unlock(&md->commit_lock);
			if (r < 0) {
				*error = "Cannot complete an interrupted revert";
				goto out_bufio;
			}
		}
	}
	return md;

out_bufio:
	dm_bufio_client_destroy(md->bufio);
out_incore:
	dsm_destroy_incore(md);
	return ERR_PTR(r);
}

void dsm_close(struct dm_stream_metadata *md)
{
	dm_bufio_client_destroy(md->bufio);
	dsm_destroy_incore(md);
}

const unsigned long *dsm_present_map(struct dm_stream_metadata *md)
{
	return md->present;
}

const unsigned long *dsm_dirty_map(struct dm_stream_metadata *md)
{
	return md->dirty;
}

u64 dsm_nr_present(struct dm_stream_metadata *md)
{
	return atomic64_read(&md->nr_present);
}

u64 dsm_nr_dirty(struct dm_stream_metadata *md)
{
	return atomic64_read(&md->nr_dirty);
}

u64 dsm_generation(struct dm_stream_metadata *md)
{
	return READ_ONCE(md->sb.generation);
}

bool dsm_changed(struct dm_stream_metadata *md)
{
	return !bitmap_empty(md->changed_dirty, md->sb.bitmap_blocks) ||
		READ_ONCE(md->nr_pending);
}

bool dsm_set_dirty(struct dm_stream_metadata *md, u64 block)
{
	if (test_bit(block, md->dirty) || test_and_set_bit(block, md->dirty))
		return false;
	atomic64_inc(&md->nr_dirty);
	/* Pairs with test_and_clear_bit() in dsm_commit(). */
	smp_mb__after_atomic();
	set_bit(block / DSM_BITS_PER_BLOCK, md->changed_dirty);
	return true;
}

int dsm_set_present(struct dm_stream_metadata *md, u64 block)
{
	size_t want;
	u64 *p;

	might_sleep();
	if (test_bit(block, md->present))
		return 0;

	spin_lock(&md->pending_lock);
	while (md->nr_pending == md->max_pending) {
		want = max_t(size_t, 64, md->max_pending * 2);
		spin_unlock(&md->pending_lock);
		p = kvmalloc_array(want, sizeof(*p), GFP_NOIO);
		if (!p)
			return -ENOMEM;
		spin_lock(&md->pending_lock);
		if (md->max_pending < want) {
			memcpy(p, md->pending, md->nr_pending * sizeof(*p));
			swap(p, md->pending);
			md->max_pending = want;
		}
		spin_unlock(&md->pending_lock);
		kvfree(p);
		spin_lock(&md->pending_lock);
	}
	md->pending[md->nr_pending++] = block;
	spin_unlock(&md->pending_lock);

	if (!test_and_set_bit(block, md->present))
		atomic64_inc(&md->nr_present);
	return 0;
}

/*
 * Commit step 1: detach the blocks made present since the last commit.
 * Returns how many; *list must be kvfree()d.
 */
size_t dsm_commit_begin(struct dm_stream_metadata *md, u64 **list)
{
	size_t n;

	spin_lock(&md->pending_lock);
	n = md->nr_pending;
	*list = md->pending;
	md->pending = NULL;
	md->nr_pending = 0;
	md->max_pending = 0;
	spin_unlock(&md->pending_lock);
	return n;
}

/*
 * Commit step 3, in core: the blocks taken by dsm_commit_begin() are durable
 * on the data device now, so their present bits may be written.
 */
void dsm_commit_apply(struct dm_stream_metadata *md, const u64 *list,
		      size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		__set_bit(list[i], md->present_commit);
		set_bit(list[i] / DSM_BITS_PER_BLOCK, md->changed_present);
	}
}

bool dsm_committable(struct dm_stream_metadata *md, u64 block)
{
	return test_bit(block, md->present_commit);
}

bool dsm_slice_changed(struct dm_stream_metadata *md, bool dirty, u32 slice)
{
	return test_bit(slice, dirty ? md->changed_dirty : md->changed_present);
}

int dsm_commit(struct dm_stream_metadata *md, struct block_device *data,
	       bool *data_error)
{
	u64 *list;
	size_t n;
	int r;

	*data_error = false;
	mutex_lock(&md->commit_lock);

	/* 1. blocks whose data writes have completed */
	n = dsm_commit_begin(md, &list);
	if (!n && bitmap_empty(md->changed_dirty, md->sb.bitmap_blocks)) {
		r = 0;
		goto out;
	}

	/*
	 * 2. make their data durable.  On failure they still become
	 * committable: their writes completed before this flush was issued,
	 * and the next commit flushes again before writing any bitmap.
	 */
	r = blkdev_issue_flush(data);

	/* 3. bitmaps */
	dsm_commit_apply(md, list, n);
	if (r) {
		*data_error = true;
		goto out;
	}
	r = __write_changed(md, 0, md->changed_present, md->present_commit);
	if (!r)
		r = __write_changed(md, 1, md->changed_dirty, md->dirty);
	if (!r)
		r = dm_bufio_write_dirty_buffers(md->bufio);
	if (!r)
		r = dm_bufio_issue_flush(md->bufio);
	if (r)
		goto out;

	/* 4. superblock */
	md->sb.generation++;
	r = write_sb(md);
out:
	kvfree(list);
	mutex_unlock(&md->commit_lock);
	return r;
}
