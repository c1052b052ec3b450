// SPDX-License-Identifier: GPL-2.0
/*
 * dm-stream: a device-mapper target that streams a disk image on demand.
 *
 * The target sits on a local data device the size of the image.  Blocks
 * are either present (their data is on the data device) or absent.  I/O to
 * present blocks is remapped to the data device without taking a lock.  A
 * bio touching an absent block is parked on a struct stream_fetch, which is
 * handed to the userspace helper (streamd) through /dev/dm-stream; the
 * helper reads the block from the image server and writes it back, the
 * target writes it to the data device, marks the block present and
 * re-dispatches the parked bios.  Writes are remapped too and mark blocks
 * dirty.  A write covering a whole absent block needs no fetch: it makes
 * the block present (and dirty) once it completes.
 *
 * A bio over a run of present blocks goes down whole (present_run()); any
 * other bio is split in map at its first block boundary, so that past map
 * "the block of a bio" is always well defined.
 *
 * Snapshots (undrained blocks, preserved copies) live in dm-stream-snap.c.
 *
 * Crash ordering is the metadata's business; see the commit protocol in
 * dm-stream-metadata.c.  The target's part is to hold REQ_PREFLUSH bios
 * until a commit, to hold a write to a present block until a commit when
 * neither its dirty bits nor its write-intent region are on disk (rule 2),
 * to commit before completing a REQ_FUA whole-block fill, to commit
 * periodically (closing idle write-intent regions) and to close every
 * region at suspend.
 */
#include <linux/blkdev.h>
#include <linux/ctype.h>
#include <linux/highmem.h>
#include <linux/kref.h>
#include <linux/log2.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "dm-stream-core.h"

#define DM_MSG_PREFIX "stream"

#define COMMIT_PERIOD	(HZ)
#define DEFAULT_PRESERVE_MB	64
/*
 * Default write-intent region: a commit per 8 MiB first written costs a
 * few percent of the time to write them, and an unclean shutdown makes at
 * most 8 MiB per region in use dirty again.
 */
#define DEFAULT_INTENT_SECTORS	16384
/*
 * Default readahead: the largest window queued ahead of a sequential
 * reader (a miss, then a miss in the next block).  Windows start at a
 * quarter of it and double.  Fetched blocks are stored, so readahead costs
 * bandwidth once, and only on a sequential pattern.
 */
#define DEFAULT_RA_SECTORS	4096

struct per_bio_data {
	struct stream_fetch *fill;	/* whole-block fill in flight */
	unsigned long parked_at;	/* jiffies, first parked (if parked) */
	bool parked;			/* parked_at is set */
	bool flush;			/* empty flush passed to the data dev */
};

static const char *mode_name(enum stream_mode m)
{
	switch (m) {
	case STREAM_MODE_RW:
		return "rw";
	case STREAM_MODE_RO:
		return "ro";
	default:
		return "fail";
	}
}

/* Any process context: modes only go rw -> ro -> fail, even when racing. */
static void set_mode(struct stream_c *sc, enum stream_mode m)
{
	enum stream_mode old = READ_ONCE(sc->mode);

	do {
		if (m <= old)
			return;
	} while (!try_cmpxchg(&sc->mode, &old, m));
	DMERR("%s: switching to %s mode",
	      stream_name(sc), mode_name(m));
	dm_table_event(sc->ti->table);
}

static void stream_wake_worker(struct stream_c *sc)
{
	queue_work(sc->wq, &sc->worker);
}

/*
 * dsm_write_ready(), and a commit soon when it asked for a write-intent
 * region ahead of a sequential writer.  Map or worker context.
 */
static bool write_ready(struct stream_c *sc, u64 block, bool fua, bool ahead)
{
	bool ready = dsm_write_ready(sc->md, block, fua, ahead);

	if (dsm_intent_ahead(sc->md)) {
		WRITE_ONCE(sc->commit_soon, true);
		stream_wake_worker(sc);
	}
	return ready;
}

static u64 bio_block(struct stream_c *sc, struct bio *bio)
{
	return dm_target_offset(sc->ti, bio->bi_iter.bi_sector) >>
		sc->block_shift;
}

static bool bio_covers_block(struct stream_c *sc, struct bio *bio)
{
	sector_t s = dm_target_offset(sc->ti, bio->bi_iter.bi_sector);

	return !(s & (sc->block_sectors - 1)) &&
		bio_sectors(bio) == sc->block_sectors;
}

static void remap(struct stream_c *sc, struct bio *bio)
{
	bio_set_dev(bio, sc->data_dev->bdev);
	bio->bi_iter.bi_sector = dm_target_offset(sc->ti,
						  bio->bi_iter.bi_sector);
}

static void defer_bio(struct stream_c *sc, struct bio_list *list,
		      struct bio *bio)
{
	unsigned long flags;

	spin_lock_irqsave(&sc->lock, flags);
	bio_list_add(list, bio);
	spin_unlock_irqrestore(&sc->lock, flags);
	stream_wake_worker(sc);
}

static bool is_write(struct bio *bio)
{
	return op_is_write(bio_op(bio));
}

/*
 * A bio to a present block.  Returns a DM_MAPIO_* code; with
 * DM_MAPIO_REMAPPED the caller submits (map) or the dm core does.
 * @worker: called from the worker, which may sleep to preserve the block.
 */
static int handle_present(struct stream_c *sc, struct bio *bio, u64 block,
			  bool worker)
{
	if (!is_write(bio))
		goto remap;
	if (READ_ONCE(sc->mode) != STREAM_MODE_RW)
		return DM_MAPIO_KILL;
	if (stream_snap_needs_preserve(sc, block)) {
		if (!worker) {
			atomic_inc(&sc->parked);
			defer_bio(sc, &sc->deferred, bio);
			return DM_MAPIO_SUBMITTED;
		}
		stream_snap_preserve(sc, block);
	}
	/*
	 * Rule 2: its dirty bits (or its region's write intent) reach the
	 * disk before its data does.
	 */
	if (write_ready(sc, block, bio->bi_opf & REQ_FUA, true))
		goto remap;
	defer_bio(sc, &sc->deferred_dirty, bio);
	return DM_MAPIO_SUBMITTED;
remap:
	remap(sc, bio);
	return DM_MAPIO_REMAPPED;
}

/*
 * A read or write over more than one block, from sector @off: the length
 * of its longest prefix over blocks that can go straight down (present;
 * for a write, rw mode, no snapshot copy to make and dsm_write_ready()).
 * 0 when the first block cannot.  Lockless, map context.
 */
static sector_t present_run(struct stream_c *sc, struct bio *bio,
			    sector_t off)
{
	u64 first = off >> sc->block_shift, b;
	u64 last = (off + bio_sectors(bio) - 1) >> sc->block_shift;
	const unsigned long *present = dsm_present_map(sc->md);
	bool write = bio_op(bio) == REQ_OP_WRITE;

	if (bio_op(bio) != REQ_OP_READ && !write)
		return 0;
	if (write && READ_ONCE(sc->mode) != STREAM_MODE_RW)
		return 0;
	for (b = first; b <= last; b++) {
		if (!dsm_test(present, b))
			break;
		/* A write that cannot go now is split off and waits alone. */
		if (write && (stream_snap_needs_preserve(sc, b) ||
			      !write_ready(sc, b, bio->bi_opf & REQ_FUA,
					   b == first)))
			break;
	}
	if (b > last)
		return bio_sectors(bio);
	return b == first ? 0 : (b << sc->block_shift) - off;
}

/*
 * The next readahead window after ra_end, in *@start and *@count (0: none);
 * a read of its first block queues the one after.
 */
static void __ra_next_window(struct stream_c *sc, u64 *start, u32 *count)
{
	lockdep_assert_held(&sc->ra_lock);
	*start = sc->ra_end;
	*count = 0;
	if (*start >= sc->nr_blocks) {
		atomic64_set(&sc->ra_mark, -1);
		return;
	}
	*count = sc->ra_size;
	sc->ra_end = *start + sc->ra_size;
	atomic64_set(&sc->ra_mark, *start);
	sc->ra_size = min(sc->ra_size * 2, sc->ra_max);
}

/* Worker: a read reached ra_mark; queue the next window. */
static void ra_advance(struct stream_c *sc)
{
	u32 count;
	u64 start;

	spin_lock(&sc->ra_lock);
	__ra_next_window(sc, &start, &count);
	spin_unlock(&sc->ra_lock);
	if (count)
		stream_fetch_readahead(sc, start, count);
}

/*
 * Process context (map or worker): a read missed blocks [@first, @last].
 * A miss right after the previous one, or over several blocks, starts a
 * window after it (unless one runs already).  Once a read (park_or_fill()).
 */
static void ra_miss(struct stream_c *sc, u64 first, u64 last)
{
	u32 count = 0;
	u64 start;

	if (!sc->ra_max)
		return;
	spin_lock(&sc->ra_lock);
	if ((first == sc->ra_last + 1 || last > first) &&
	    !(first >= sc->ra_start && first < sc->ra_end)) {
		sc->ra_size = max(sc->ra_max / 4, 1U);
		sc->ra_start = last + 1;
		sc->ra_end = last + 1;
		__ra_next_window(sc, &start, &count);
	}
	sc->ra_last = last;
	spin_unlock(&sc->ra_lock);
	if (count)
		stream_fetch_readahead(sc, start, count);
}

/* Map: a read of sectors [@off, @off + @len) may have reached ra_mark. */
static void ra_check(struct stream_c *sc, sector_t off, unsigned int len)
{
	s64 m = atomic64_read(&sc->ra_mark);

	if (likely(m < 0 || (u64)m < (off >> sc->block_shift) ||
		   (u64)m > ((off + len - 1) >> sc->block_shift)))
		return;
	if (atomic64_cmpxchg(&sc->ra_mark, m, -1) != m)
		return;
	WRITE_ONCE(sc->ra_hit, true);
	stream_wake_worker(sc);
}

/*
 * The blocks a parked bio waits for, from its first one @block: a read
 * may span several (miss_run()); anything else is within one block.
 */
static unsigned int park_blocks(struct stream_c *sc, struct bio *bio,
				u64 block)
{
	sector_t end;

	if (bio_op(bio) != REQ_OP_READ || !bio_sectors(bio))
		return 1;
	end = dm_target_offset(sc->ti, bio_end_sector(bio)) - 1;
	return (end >> sc->block_shift) - block + 1;
}

/*
 * Map: a read over more than one block, from sector @off, whose first
 * block is absent: the sectors of its blocks up to the first one present
 * or being fetched already, at most the attached helper's range (none
 * without a helper).  It parks whole (park_blocks()), and its blocks'
 * fetches go out as one request, so that one reply completes it.  (It
 * still goes down once they are all present when they do not: a reply
 * that skips a zero run, say.)  Lockless: a hint, park rescans.
 */
static sector_t miss_run(struct stream_c *sc, struct bio *bio, sector_t off)
{
	const unsigned long *present = dsm_present_map(sc->md);
	u64 first = off >> sc->block_shift, b;
	u64 last = (off + bio_sectors(bio) - 1) >> sc->block_shift;
	u32 range = READ_ONCE(sc->fq.max_blocks);

	if (bio_op(bio) != REQ_OP_READ || range < 2)
		return 0;
	last = min(last, first + range - 1);
	for (b = first; b <= last && !dsm_test(present, b) &&
	     !xa_load(&sc->fq.fetches, b); b++)
		;
	if (b == first)
		return 0;
	return min_t(sector_t, (b << sc->block_shift) - off, bio_sectors(bio));
}

/*
 * Map or worker: park @bio, from @block (a read: over its absent blocks, see
 * park_blocks()) and counted in sc->parked,
 * behind the block's fetch (starting one if needed); or, for a write of
 * the whole block, which needs nothing from the server, start a fill and
 * remap @bio for the caller to submit -- unless a snapshot still needs
 * the block's old content, which is fetched first.  sc->parked drops
 * unless the bio waits (STREAM_PARK_WAITING) or found no memory
 * (STREAM_PARK_NOMEM); the caller handles the other outcomes.
 */
static enum stream_park park_or_fill(struct stream_c *sc, struct bio *bio,
				     u64 block)
{
	struct per_bio_data *pb = dm_per_bio_data(bio, sizeof(*pb));
	/* Not after parking: the bio may be completed by then. */
	bool demand_read = bio_op(bio) == REQ_OP_READ &&
		!stream_bio_background(bio);
	bool fill = is_write(bio) && bio_covers_block(sc, bio) &&
		!stream_snap_needs_preserve(sc, block);
	unsigned int nr = park_blocks(sc, bio, block);
	/* readahead counts a read's miss once, at its first park */
	bool count_ra = demand_read && !pb->parked;
	struct stream_fetch *f;
	enum stream_park r;

	/*
	 * A read parked whole waits for its blocks one after the other: its
	 * age, for fetch_timeout, counts from its first park.
	 */
	if (!pb->parked) {
		pb->parked = true;
		pb->parked_at = jiffies;
	}
	r = stream_fetch_park(sc, bio, block, nr, fill, pb->parked_at, &f);
	switch (r) {
	case STREAM_PARK_FILL:
		dsm_set_dirty(sc->md, block);
		pb->fill = f;
		remap(sc, bio);
		fallthrough;
	case STREAM_PARK_PRESENT:
	case STREAM_PARK_REQUEUE:
		atomic_dec(&sc->parked);
		break;
	case STREAM_PARK_WAITING:
		/* The fill reads its own chunks, readahead would race it. */
		if (count_ra)
			ra_miss(sc, block, block + nr - 1);
		break;
	case STREAM_PARK_NOMEM:
		break;
	}
	return r;
}

/*
 * Map: a write over more than one block, from sector @off.  If it begins
 * with whole absent blocks (that no snapshot needs), they are filled by
 * the write itself, whole: one fill a block, one bio.  Returns the
 * sectors those fills cover (the caller splits the rest off), 0 when the
 * first block cannot be filled so (the per-block path takes it).
 */
static sector_t fill_run(struct stream_c *sc, struct bio *bio, sector_t off)
{
	struct per_bio_data *pb = dm_per_bio_data(bio, sizeof(*pb));
	u64 first = off >> sc->block_shift, b;
	struct stream_fetch *f;
	unsigned int max, n;

	if (bio_op(bio) != REQ_OP_WRITE || (off & (sc->block_sectors - 1)) ||
	    READ_ONCE(sc->mode) != STREAM_MODE_RW)
		return 0;
	max = bio_sectors(bio) >> sc->block_shift;
	for (n = 0; n < max; n++)
		if (stream_snap_needs_preserve(sc, first + n))
			break;
	n = n ? stream_fetch_fill_run(sc, first, n, &f) : 0;
	if (!n)
		return 0;
	for (b = first; b < first + n; b++)
		dsm_set_dirty(sc->md, b);
	pb->fill = f;
	return (sector_t)n << sc->block_shift;
}

/*
 * Map: a bio to absent @block parks here, without a worker hop (map may
 * sleep: the fetch queue's lock is a mutex, allocations are GFP_NOIO).
 * Out of memory, it goes to the worker, which parks it on the starved
 * list; a block present after all whose write needs a snapshot copy goes
 * there too (handle_present()).
 */
static int park_bio(struct stream_c *sc, struct bio *bio, u64 block)
{
	switch (park_or_fill(sc, bio, block)) {
	case STREAM_PARK_PRESENT:
		return handle_present(sc, bio, block, false);
	case STREAM_PARK_REQUEUE:
		return DM_MAPIO_REQUEUE;
	case STREAM_PARK_FILL:
		return DM_MAPIO_REMAPPED;
	case STREAM_PARK_WAITING:
		return DM_MAPIO_SUBMITTED;
	default:
		/* STREAM_PARK_NOMEM */
		defer_bio(sc, &sc->deferred, bio);
		return DM_MAPIO_SUBMITTED;
	}
}

static int stream_map(struct dm_target *ti, struct bio *bio)
{
	struct stream_c *sc = ti->private;
	struct per_bio_data *pb = dm_per_bio_data(bio, sizeof(*pb));
	enum stream_mode mode = READ_ONCE(sc->mode);
	sector_t off, end;
	u64 block;

	pb->fill = NULL;
	pb->parked = false;
	pb->flush = false;
	if (mode == STREAM_MODE_FAIL)
		return DM_MAPIO_KILL;

	if (bio->bi_opf & REQ_PREFLUSH) {
		if (mode != STREAM_MODE_RW)
			return DM_MAPIO_KILL;
		/*
		 * dm core sends the flush empty and the data after it; the
		 * worker handles data of one block only.
		 */
		off = dm_target_offset(ti, bio->bi_iter.bi_sector);
		if (WARN_ON_ONCE(bio_sectors(bio) &&
				 (off & (sc->block_sectors - 1)) +
				 bio_sectors(bio) > sc->block_sectors))
			return DM_MAPIO_KILL;
		defer_bio(sc, &sc->deferred_flush, bio);
		return DM_MAPIO_SUBMITTED;
	}

	/*
	 * Every block present: a read is a bare remap.  (Only a suspended
	 * device loses present blocks: revert, invalidate.)
	 */
	if (bio_op(bio) == REQ_OP_READ &&
	    dsm_nr_present(sc->md) == sc->nr_blocks) {
		remap(sc, bio);
		return DM_MAPIO_REMAPPED;
	}

	/*
	 * A run of present blocks goes down whole, and so does a write
	 * over a run of whole absent blocks (fill_run()); a read over a run
	 * of absent blocks parks whole (miss_run()); otherwise never let a
	 * bio span two blocks.
	 */
	off = dm_target_offset(ti, bio->bi_iter.bi_sector);
	if (bio_op(bio) == REQ_OP_READ && bio_sectors(bio) &&
	    !stream_bio_background(bio))
		ra_check(sc, off, bio_sectors(bio));
	end = round_down(off, sc->block_sectors) + sc->block_sectors;
	if (off + bio_sectors(bio) > end) {
		sector_t len = present_run(sc, bio, off);

		if (!len)
			len = fill_run(sc, bio, off);
		if (len) {
			if (len < bio_sectors(bio))
				dm_accept_partial_bio(bio, len);
			remap(sc, bio);
			return DM_MAPIO_REMAPPED;
		}
		/* Not the present test below: it must hold for every block. */
		len = miss_run(sc, bio, off);
		if (len > end - off) {
			if (len < bio_sectors(bio))
				dm_accept_partial_bio(bio, len);
			block = bio_block(sc, bio);
			goto park;
		}
		dm_accept_partial_bio(bio, end - off);
	}

	if (bio_op(bio) == REQ_OP_DISCARD) {
		/*
		 * A discard of a whole block makes it present and zero
		 * (written as REQ_OP_WRITE_ZEROES); partial ones are
		 * advisory and ignored.
		 */
		if (!bio_covers_block(sc, bio)) {
			bio_endio(bio);
			return DM_MAPIO_SUBMITTED;
		}
		bio->bi_opf = (bio->bi_opf & ~REQ_OP_MASK) |
			REQ_OP_WRITE_ZEROES;
	}

	block = bio_block(sc, bio);
	if (dsm_test(dsm_present_map(sc->md), block)) {
		if (!is_write(bio) ||
		    (mode == STREAM_MODE_RW && dsm_durable(sc->md, block))) {
			remap(sc, bio);
			return DM_MAPIO_REMAPPED;
		}
		return handle_present(sc, bio, block, false);
	}

park:
	if (mode != STREAM_MODE_RW)
		return DM_MAPIO_KILL;
	if (READ_ONCE(sc->requeue))
		return DM_MAPIO_REQUEUE;
	atomic_inc(&sc->parked);
	return park_bio(sc, bio, block);
}

static void submit_mapped(struct stream_c *sc, struct bio *bio, int r)
{
	switch (r) {
	case DM_MAPIO_REMAPPED:
		submit_bio_noacct(bio);
		break;
	case DM_MAPIO_KILL:
		bio_io_error(bio);
		break;
	default:
		break;
	}
}

/*
 * Worker: a bio to a block that was absent -- released by its fetch's
 * retirement, refused for want of memory in map (park_bio()), or the data
 * of a flush: park_or_fill(), then submit what can go.
 */
static void process_parked(struct stream_c *sc, struct bio *bio)
{
	u64 block = bio_block(sc, bio);
	unsigned long flags;

	if (READ_ONCE(sc->mode) != STREAM_MODE_RW) {
		atomic_dec(&sc->parked);
		bio_io_error(bio);
		return;
	}
	switch (park_or_fill(sc, bio, block)) {
	case STREAM_PARK_PRESENT:
		submit_mapped(sc, bio, handle_present(sc, bio, block, true));
		break;
	case STREAM_PARK_REQUEUE:
		/* noflush suspend: dm core queues it until resume */
		bio->bi_status = BLK_STS_DM_REQUEUE;
		bio_endio(bio);
		break;
	case STREAM_PARK_NOMEM:
		/*
		 * Out of memory under I/O: park the bio on the starved list,
		 * retried when a fetch retires (freeing memory) or at the
		 * next period, never in a loop.
		 */
		spin_lock_irqsave(&sc->lock, flags);
		bio_list_add(&sc->starved, bio);
		spin_unlock_irqrestore(&sc->lock, flags);
		break;
	case STREAM_PARK_FILL:
		submit_bio_noacct(bio);
		break;
	case STREAM_PARK_WAITING:
		break;
	}
}

/*
 * Worker: retire a fetch/fill whose I/O ended.  Its waiters go to @again,
 * to go back through the parked path (present or absent), or if it failed
 * to @failed.
 */
static void retire_fetch(struct stream_c *sc, struct stream_fetch *f,
			 struct bio_list *again, struct bio_list *failed)
{
	struct bio_list waiters = BIO_EMPTY_LIST;
	/*
	 * A failed fill leaves its block absent, and may have failed for
	 * another block of its write (fill_run()): its waiters fetch it.
	 */
	bool retry = !f->status || f->state == FETCH_FILLING;

	if (stream_fetch_retire(sc, f, &waiters)) {
		DMINFO("%s: all %llu blocks present", stream_name(sc),
		       sc->nr_blocks);
		dm_table_event(sc->ti->table);
	}
	bio_list_merge(retry ? again : failed, &waiters);
	stream_fetch_free(f);
}

/*
 * Take every bio parked behind a fetch that waits for the helper, plus the
 * starved ones.  Returns how many.
 */
static unsigned int take_parked(struct stream_c *sc, struct bio_list *out)
{
	unsigned int n = stream_fetch_take_waiters(sc, out);
	struct bio *bio;

	spin_lock_irq(&sc->lock);
	bio_list_for_each(bio, &sc->starved)
		n++;
	bio_list_merge(out, &sc->starved);
	bio_list_init(&sc->starved);
	spin_unlock_irq(&sc->lock);
	return n;
}

/* Worker: fail the bios of fetches that waited longer than fetch_timeout. */
static void expire_fetches(struct stream_c *sc)
{
	struct bio_list dead = BIO_EMPTY_LIST;
	struct bio *bio;

	if (!sc->fetch_timeout)
		return;
	stream_fetch_expire(sc, (unsigned long)sc->fetch_timeout * HZ, &dead);
	while ((bio = bio_list_pop(&dead))) {
		atomic_dec(&sc->parked);
		bio_io_error(bio);
	}
}

/* Worker: retry the bios that found no memory (a fetch was freed). */
static void retry_starved(struct stream_c *sc)
{
	struct bio_list bios;
	struct bio *bio;

	spin_lock_irq(&sc->lock);
	bios = sc->starved;
	bio_list_init(&sc->starved);
	spin_unlock_irq(&sc->lock);
	while ((bio = bio_list_pop(&bios)))
		process_parked(sc, bio);
}

/* End the parked bios of take_parked() with @status. */
static void end_parked(struct stream_c *sc, struct bio_list *bios,
		       blk_status_t status)
{
	struct bio *bio;

	while ((bio = bio_list_pop(bios))) {
		atomic_dec(&sc->parked);
		bio->bi_status = status;
		bio_endio(bio);
	}
}

/*
 * Worker.  A metadata device that cannot be written leaves the data usable:
 * read-only.  A data device that cannot be flushed leaves nothing to trust:
 * fail.
 */
static int stream_commit(struct stream_c *sc)
{
	bool data_error;
	int r;

	if (READ_ONCE(sc->mode) != STREAM_MODE_RW)
		return -EIO;
	r = dsm_commit(sc->md, sc->data_dev->bdev, &data_error);
	if (r) {
		DMERR("%s: cannot commit metadata: %s failed: %d",
		      stream_name(sc),
		      data_error ? "data device flush" : "metadata write", r);
		set_mode(sc, data_error ? STREAM_MODE_FAIL : STREAM_MODE_RO);
	}
	return r;
}

static void do_worker(struct work_struct *ws)
{
	struct stream_c *sc = container_of(ws, struct stream_c, worker);
	struct bio_list bios, flush_bios, completions, dirty_bios;
	struct bio_list again = BIO_EMPTY_LIST, failed = BIO_EMPTY_LIST;
	struct stream_fetch *f, *tmp;
	LIST_HEAD(done);
	struct bio *bio;
	bool soon, retired;
	int r;

	if (unlikely(READ_ONCE(sc->data_flush_failed)) &&
	    READ_ONCE(sc->mode) != STREAM_MODE_FAIL) {
		DMERR("%s: data device flush failed", stream_name(sc));
		set_mode(sc, STREAM_MODE_FAIL);
	}

	/*
	 * Take the bios waiting for a commit first, then the completed
	 * fetches and fills: a flush that arrived after a fill completed (and
	 * so after its fetch was put on sc->completed, in end_io) must find
	 * the fill's present bit set before the commit that releases it.
	 */
	spin_lock_irq(&sc->lock);
	flush_bios = sc->deferred_flush;
	bio_list_init(&sc->deferred_flush);
	completions = sc->flush_completions;
	bio_list_init(&sc->flush_completions);
	dirty_bios = sc->deferred_dirty;
	bio_list_init(&sc->deferred_dirty);
	list_splice_init(&sc->completed, &done);
	bios = sc->deferred;
	bio_list_init(&sc->deferred);
	spin_unlock_irq(&sc->lock);

	retired = !list_empty(&done);
	list_for_each_entry_safe(f, tmp, &done, list) {
		list_del_init(&f->list);
		retire_fetch(sc, f, &again, &failed);
	}
	/*
	 * Their waiters once all are retired: a read over a range answered
	 * at once looks at it once, instead of parking on each next block
	 * in turn (a scan per block of the range).
	 */
	while ((bio = bio_list_pop(&failed))) {
		atomic_dec(&sc->parked);
		bio_io_error(bio);
	}
	while ((bio = bio_list_pop(&again)))
		process_parked(sc, bio);
	/* Fetches were freed: the bios that found no memory try again. */
	if (retired)
		retry_starved(sc);

	while ((bio = bio_list_pop(&bios)))
		process_parked(sc, bio);

	if (READ_ONCE(sc->ra_hit)) {
		WRITE_ONCE(sc->ra_hit, false);
		ra_advance(sc);
	}

	/*
	 * A region wanted ahead: taken before the commit, so one wanted
	 * after its begin queues the worker again.
	 */
	soon = READ_ONCE(sc->commit_soon) && xchg(&sc->commit_soon, false);
	if (bio_list_empty(&flush_bios) && bio_list_empty(&completions) &&
	    bio_list_empty(&dirty_bios) && !soon)
		return;

	r = stream_commit(sc);
	while ((bio = bio_list_pop(&dirty_bios))) {
		if (r) {
			bio_io_error(bio);
			continue;
		}
		/* The commit began after its dirty bits were set. */
		dsm_mark_durable(sc->md, bio_block(sc, bio));
		remap(sc, bio);
		submit_bio_noacct(bio);
	}
	while ((bio = bio_list_pop(&completions))) {
		if (r)
			bio->bi_status = BLK_STS_IOERR;
		bio_endio(bio);
	}
	while ((bio = bio_list_pop(&flush_bios))) {
		if (r) {
			bio_io_error(bio);
			continue;
		}
		if (!bio_has_data(bio) && !op_is_discard(bio_op(bio)) &&
		    bio_op(bio) != REQ_OP_WRITE_ZEROES) {
			struct per_bio_data *pb = dm_per_bio_data(bio,
								  sizeof(*pb));

			/*
			 * Empty flush: flushes the data device (the commit
			 * did only if present bits were pending); end_io
			 * fails the target if that flush fails.
			 */
			pb->flush = true;
			remap(sc, bio);
			submit_bio_noacct(bio);
			continue;
		}
		bio->bi_opf &= ~REQ_PREFLUSH;
		if (dsm_test(dsm_present_map(sc->md), bio_block(sc, bio))) {
			submit_mapped(sc, bio,
				      handle_present(sc, bio,
						     bio_block(sc, bio), true));
		} else {
			atomic_inc(&sc->parked);
			process_parked(sc, bio);
		}
	}
}

static void do_waker(struct work_struct *ws)
{
	struct stream_c *sc = container_of(to_delayed_work(ws),
					   struct stream_c, waker);

	expire_fetches(sc);
	retry_starved(sc);
	if (dsm_intent_tick(sc->md) || dsm_changed(sc->md))
		stream_commit(sc);
	queue_delayed_work(sc->wq, &sc->waker, COMMIT_PERIOD);
}

static int stream_end_io(struct dm_target *ti, struct bio *bio,
			 blk_status_t *error)
{
	struct stream_c *sc = ti->private;
	struct per_bio_data *pb = dm_per_bio_data(bio, sizeof(*pb));
	struct stream_fetch *f = pb->fill;
	unsigned long flags;

	if (unlikely(*error) && pb->flush) {
		/*
		 * An empty flush passed down after a commit that had no
		 * present bits to flush for: the data device cannot flush,
		 * so nothing on it can be trusted (the worker fails us).
		 */
		WRITE_ONCE(sc->data_flush_failed, true);
		stream_wake_worker(sc);
	}
	if (!f)
		return DM_ENDIO_DONE;
	pb->fill = NULL;
	stream_fetch_fill_done(f, *error);
	if (*error || !(bio->bi_opf & REQ_FUA))
		return DM_ENDIO_DONE;

	/* The fills' present bits must be durable before a FUA completes. */
	spin_lock_irqsave(&sc->lock, flags);
	bio_list_add(&sc->flush_completions, bio);
	spin_unlock_irqrestore(&sc->lock, flags);
	stream_wake_worker(sc);
	return DM_ENDIO_INCOMPLETE;
}

/* The feature arguments that take a value, as parse_features() reads them. */
enum {
	FEAT_FETCH_TIMEOUT,
	FEAT_PRESERVE_MB,
	FEAT_INTENT_REGION,
	FEAT_READAHEAD,
	NR_FEATURES
};

static const struct stream_feature {
	const char *name;
	const char *missing;		/* ti->error without a value */
	struct dm_arg arg;		/* range and ti->error out of it */
} stream_features[NR_FEATURES] = {
	[FEAT_FETCH_TIMEOUT] = { "fetch_timeout", "fetch_timeout needs a value",
		{0, 86400, "Invalid fetch_timeout (0-86400 seconds)"} },
	[FEAT_PRESERVE_MB] = { "preserve_mb", "preserve_mb needs a value",
		{1, 65536, "Invalid preserve_mb (1-65536 MiB)"} },
	[FEAT_INTENT_REGION] = { "intent_region", "intent_region needs a value",
		{0, UINT_MAX, "Invalid intent_region"} },
	[FEAT_READAHEAD] = { "readahead", "readahead needs a value",
		{0, 65536, "Invalid readahead (0-65536 sectors)"} },
};

/*
 * Construct a stream mapping:
 *
 *   stream <metadata dev> <data dev> <block size>
 *          [<#feature args> [<feature arg>]*]
 *
 * block size: sectors, power of two in [8, 2048].
 * feature args: fetch_timeout <seconds>
 *                preserve_mb <MiB>   memory for snapshot copies (64)
 *                intent_region <sectors>  write-intent region (16384):
 *                    a power of two, at least the block size; 0: off
 *                readahead <sectors>  largest readahead window (4096),
 *                    rounded down to blocks; 0: off
 */
static int parse_features(struct stream_c *sc, struct dm_arg_set *as,
			  char **error)
{
	static const struct dm_arg nr_args = {
		0, 2 * NR_FEATURES, "Invalid number of feature arguments"
	};
	unsigned int argc, v[NR_FEATURES];
	bool set[NR_FEATURES] = { };
	const char *arg;
	int i, r;

	if (!as->argc)
		return 0;
	r = dm_read_arg_group(&nr_args, as, &argc, error);
	if (r)
		return r;
	while (argc) {
		arg = dm_shift_arg(as);
		argc--;
		for (i = 0; i < NR_FEATURES; i++)
			if (!strcasecmp(arg, stream_features[i].name))
				break;
		if (i == NR_FEATURES) {
			*error = "Unknown feature argument";
			return -EINVAL;
		}
		if (!argc) {
			*error = (char *)stream_features[i].missing;
			return -EINVAL;
		}
		r = dm_read_arg(&stream_features[i].arg, as, &v[i], error);
		if (r)
			return r;
		argc--;
		set[i] = true;		/* given twice: the last one counts */
	}
	if (set[FEAT_FETCH_TIMEOUT])
		sc->fetch_timeout = v[FEAT_FETCH_TIMEOUT];
	if (set[FEAT_PRESERVE_MB])
		sc->snap.budget = (u64)v[FEAT_PRESERVE_MB] << 20;
	if (set[FEAT_INTENT_REGION]) {
		sc->intent_sectors = v[FEAT_INTENT_REGION];
		sc->intent_set = true;
	}
	if (set[FEAT_READAHEAD]) {
		sc->ra_sectors = v[FEAT_READAHEAD];
		sc->ra_set = true;
	}
	return 0;
}

/*
 * The write-intent region in blocks, as a shift: the table's, or the
 * default grown until the regions fit the superblock's map.
 */
static int intent_geometry(struct stream_c *sc, char **error)
{
	u32 sectors = sc->intent_set ? sc->intent_sectors :
		DEFAULT_INTENT_SECTORS;
	u32 shift;

	if (sc->intent_set && !sectors) {
		sc->intent_shift = DSM_INTENT_OFF;
		return 0;
	}
	if (sc->intent_set && (!is_power_of_2(sectors) ||
			       sectors < sc->block_sectors)) {
		*error = "Invalid intent_region (power of two >= block size, or 0)";
		return -EINVAL;
	}
	shift = sectors > sc->block_sectors ?
		ilog2(sectors) - sc->block_shift : 0;
	while (dsm_intent_regions(sc->nr_blocks, shift) > DSM_INTENT_BITS) {
		if (sc->intent_set) {
			DMERR("intent_region %u: over %u regions, need %llu sectors",
			      sectors, DSM_INTENT_BITS,
			      (u64)roundup_pow_of_two(DIV_ROUND_UP_ULL(sc->nr_blocks,
								  DSM_INTENT_BITS)) <<
			      sc->block_shift);
			*error = "intent_region too small for this device";
			return -EINVAL;
		}
		shift++;
	}
	sc->intent_shift = shift;
	return 0;
}

static bool table_writable(struct dm_target *ti)
{
#ifdef STREAM_HAVE_BLK_OPEN_WRITE
	return dm_table_get_mode(ti->table) & BLK_OPEN_WRITE;
#else
	return dm_table_get_mode(ti->table) & FMODE_WRITE;
#endif
}

static int stream_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct dm_arg_set as = { .argc = argc, .argv = argv };
	struct stream_c *sc;
	const char *merr = NULL;
	unsigned int bs;
	char dummy;
	sector_t data_size;
	int r;

	if (argc < 3) {
		ti->error = "Invalid argument count";
		return -EINVAL;
	}
	if (!table_writable(ti)) {
		/* The metadata is written even to serve reads. */
		ti->error = "Read-only tables are not supported";
		return -EINVAL;
	}

	sc = kzalloc(sizeof(*sc), GFP_KERNEL);
	if (!sc) {
		ti->error = "Cannot allocate target context";
		return -ENOMEM;
	}
	sc->ti = ti;
	refcount_set(&sc->refs, 1);
	init_completion(&sc->gone);
	stream_snap_init(&sc->snap, (u64)DEFAULT_PRESERVE_MB << 20);

	if (sscanf(argv[2], "%u%c", &bs, &dummy) != 1 ||
	    bs < MIN_BLOCK_SECTORS || bs > MAX_BLOCK_SECTORS ||
	    !is_power_of_2(bs)) {
		ti->error = "Invalid block size (power of two, 8-2048 sectors)";
		r = -EINVAL;
		goto out_free;
	}
	if (((u64)bs << SECTOR_SHIFT) < PAGE_SIZE) {
		ti->error = "Block size is smaller than a page";
		r = -EINVAL;
		goto out_free;
	}
	sc->block_sectors = bs;
	sc->block_shift = ilog2(bs);
	if (ti->len & (bs - 1)) {
		ti->error = "Device length is not a multiple of the block size";
		r = -EINVAL;
		goto out_free;
	}
	sc->nr_blocks = ti->len >> sc->block_shift;
	if (sc->nr_blocks > DSM_MAX_BLOCKS) {
		DMERR("%llu blocks; at most %llu: use a larger block size",
		      sc->nr_blocks, DSM_MAX_BLOCKS);
		ti->error = "Too many blocks";
		r = -EINVAL;
		goto out_free;
	}

	dm_consume_args(&as, 3);
	r = parse_features(sc, &as, &ti->error);
	if (r)
		goto out_free;
	if (as.argc) {
		ti->error = "Too many arguments";
		r = -EINVAL;
		goto out_free;
	}
	r = intent_geometry(sc, &ti->error);
	if (r)
		goto out_free;
	sc->ra_max = (sc->ra_set ? sc->ra_sectors : DEFAULT_RA_SECTORS) >>
		sc->block_shift;
	sc->ra_last = U64_MAX - 1;	/* no miss yet: nothing follows it */
	atomic64_set(&sc->ra_mark, -1);

	r = dm_get_device(ti, argv[0], dm_table_get_mode(ti->table),
			  &sc->metadata_dev);
	if (r) {
		ti->error = "Cannot open metadata device";
		goto out_free;
	}
	r = dm_get_device(ti, argv[1], dm_table_get_mode(ti->table),
			  &sc->data_dev);
	if (r) {
		ti->error = "Cannot open data device";
		goto out_metadata_dev;
	}
	if (sc->metadata_dev->bdev == sc->data_dev->bdev) {
		ti->error = "Metadata and data devices must differ";
		r = -EINVAL;
		goto out_data_dev;
	}
	data_size = bdev_nr_sectors(sc->data_dev->bdev);
	if (data_size < ti->len) {
		DMERR("data device has %llu sectors, table needs %llu",
		      (u64)data_size, (u64)ti->len);
		ti->error = "Data device too small";
		r = -EINVAL;
		goto out_data_dev;
	}

	sc->md = dsm_open(sc->metadata_dev->bdev, dm_table_get_md(ti->table),
			  bs, sc->nr_blocks, &merr);
	if (IS_ERR(sc->md)) {
		r = PTR_ERR(sc->md);
		ti->error = (char *)merr;
		goto out_data_dev;
	}

	spin_lock_init(&sc->lock);
	spin_lock_init(&sc->ra_lock);
	bio_list_init(&sc->deferred);
	bio_list_init(&sc->deferred_flush);
	bio_list_init(&sc->flush_completions);
	bio_list_init(&sc->deferred_dirty);
	bio_list_init(&sc->starved);
	INIT_LIST_HEAD(&sc->completed);
	mutex_init(&sc->quiesce_lock);
	stream_fetchq_init(&sc->fq);
	INIT_LIST_HEAD(&sc->node);

	sc->wq = alloc_workqueue("dm-" DM_MSG_PREFIX, WQ_MEM_RECLAIM, 1);
	if (!sc->wq) {
		ti->error = "Cannot allocate workqueue";
		r = -ENOMEM;
		goto out_metadata;
	}
	INIT_WORK(&sc->worker, do_worker);
	INIT_DELAYED_WORK(&sc->waker, do_waker);

	sc->discard_zeroes =
		bdev_write_zeroes_sectors(sc->data_dev->bdev) >= bs;
	if (sc->discard_zeroes) {
		ti->num_discard_bios = 1;
		ti->discards_supported = true;
#ifdef STREAM_HAVE_MAX_DISCARD_GRANULARITY
		ti->max_discard_granularity = true;
#endif
	}
	ti->num_flush_bios = 1;
	ti->flush_supported = true;
	ti->per_io_data_size = sizeof(struct per_bio_data);
	ti->private = sc;

	stream_chan_register(sc);
	return 0;

out_metadata:
	dsm_close(sc->md);
out_data_dev:
	dm_put_device(ti, sc->data_dev);
out_metadata_dev:
	dm_put_device(ti, sc->metadata_dev);
out_free:
	kfree(sc);
	return r;
}

static void stream_dtr(struct dm_target *ti)
{
	struct stream_c *sc = ti->private;

	stream_chan_unregister(sc);
	/* Snapshot readers that found the target before it went away. */
	stream_put(sc);
	wait_for_completion(&sc->gone);
	stream_fetch_quiesce(sc);
	cancel_delayed_work_sync(&sc->waker);
	flush_workqueue(sc->wq);
	/*
	 * Postsuspend committed what this table did.  What changed since
	 * (an ack while suspended) is committed here, unless another table
	 * holds the metadata: after a reload the new table is live before
	 * this destructor runs, and its blocks are on its data device, which
	 * only its own commits flush.  A table dropped unresumed (a reload
	 * cleared or replaced) did nothing to the metadata.
	 */
	if (!dsm_shared(sc->md) && dsm_changed(sc->md))
		stream_commit(sc);
	destroy_workqueue(sc->wq);

	/* Invariant of postsuspend: whatever fetch is left has no waiters. */
	stream_fetch_destroy(sc);
	stream_snap_destroy(sc);
	dsm_close(sc->md);
	dm_put_device(ti, sc->data_dev);
	dm_put_device(ti, sc->metadata_dev);
	kfree(sc);
}

/*
 * A noflush suspend (dmsetup suspend --noflush, multipath-style) must not
 * wait for misses that only a helper can complete: requeue them; dm core
 * holds them and maps them again after resume.  A flushing suspend waits
 * for them (fetch_timeout or the fail_parked message bound the wait).
 */
static void stream_presuspend(struct dm_target *ti)
{
	struct stream_c *sc = ti->private;
	struct bio_list bios = BIO_EMPTY_LIST;

	if (!dm_noflush_suspending(ti))
		return;
	WRITE_ONCE(sc->requeue, true);
	/* bios already on the way to the worker are requeued there */
	flush_workqueue(sc->wq);
	take_parked(sc, &bios);
	end_parked(sc, &bios, BLK_STS_DM_REQUEUE);
}

static void stream_presuspend_undo(struct dm_target *ti)
{
	struct stream_c *sc = ti->private;

	WRITE_ONCE(sc->requeue, false);
}

/*
 * Invariant relied on by the dtr and by the suspended-only messages: once
 * postsuspend returns, no bio of this table is parked or in the worker, and
 * every fetch left has no waiters (dm core waited for in-flight bios, a
 * noflush suspend requeued the parked ones).
 */
static void stream_postsuspend(struct dm_target *ti)
{
	struct stream_c *sc = ti->private;

	mutex_lock(&sc->quiesce_lock);
	mutex_lock(&stream_chan_lock);
	sc->active = false;
	mutex_unlock(&stream_chan_lock);
	mutex_unlock(&sc->quiesce_lock);
	stream_fetch_quiesce(sc);
	cancel_delayed_work_sync(&sc->waker);
	flush_workqueue(sc->wq);
	/* No write in flight: leave no region open on disk. */
	dsm_intent_drop(sc->md);
	stream_commit(sc);
}

/*
 * The metadata object is shared with the table this one replaces (see
 * dsm_open()); a snapshot that table cut has no preserved copies here:
 * abort it (its blocks are dirty again, the drain is redone).
 */
static int stream_preresume(struct dm_target *ti)
{
	struct stream_c *sc = ti->private;
	int r;

	stream_snap_abort_foreign(sc);
	/*
	 * The region size is this table's (a reload may change it).  It
	 * fails only when the regions of the old size cannot be closed, that
	 * is when the metadata can no longer be written: nothing opens a
	 * region then, so keep the old size rather than fail the resume.
	 */
	r = dsm_set_intent(sc->md, sc->data_dev->bdev, sc->intent_shift);
	if (r)
		DMERR("%s: write-intent region size unchanged: %d",
		      stream_name(sc), r);
	return 0;
}

static void stream_resume(struct dm_target *ti)
{
	struct stream_c *sc = ti->private;

	WRITE_ONCE(sc->requeue, false);
	stream_fetch_restart(sc);
	mutex_lock(&sc->quiesce_lock);
	mutex_lock(&stream_chan_lock);
	sc->active = true;
	mutex_unlock(&stream_chan_lock);
	mutex_unlock(&sc->quiesce_lock);
	queue_delayed_work(sc->wq, &sc->waker, COMMIT_PERIOD);
}

/*
 * Status:
 *
 * INFO: <block size> <present>/<total> <dirty> <parked misses>
 *       <attached|detached> <rw|ro|fail> <fetched> <zero fetched>
 *       <fetch errors> <generation> <fill on|off> <fill rate>
 *       <image id|-> <consumer 0> <consumer 1> <consumer 2> <consumer 3>
 *       <oldest miss ms>
 *
 *   block size in sectors; present, total and dirty in blocks (dirty: not
 *   yet acknowledged by consumer 0, the repository, including a snapshot
 *   in progress); parked misses is the number of bios waiting for a block
 *   now; fetched counts blocks written from helper replies (zero fetched
 *   of them sent as zeroes), fetch errors the failed or timed-out ones;
 *   generation is the metadata commit generation; fill rate in bytes/s
 *   (0: unlimited); each consumer is <dirty>:<snapshot id>:<snapshot
 *   blocks>, dirty not counting the snapshot's blocks, id 0 when no
 *   snapshot is in progress; oldest miss is how long the oldest fetch
 *   still waiting for the helper has waited (0: none), so that monitoring
 *   sees a stalled server.
 *
 * TABLE: <metadata dev> <data dev> <block size>
 *        [<#feature args> [<feature arg>]*]
 */
static void stream_status(struct dm_target *ti, status_type_t type,
			  unsigned int status_flags, char *result,
			  unsigned int maxlen)
{
	struct stream_c *sc = ti->private;
	struct dm_stream_metadata *md = sc->md;
	unsigned int sz = 0, c;
	char id[DSM_IMAGE_ID_LEN];
	bool budget, fill_on;
	u64 fill_rate;

	switch (type) {
	case STATUSTYPE_INFO:
		dsm_image_id(md, id);
		dsm_fill_policy(md, &fill_on, &fill_rate);
		DMEMIT("%u %llu/%llu %llu %d %s %s %lld %lld %lld %llu %s %llu %s",
		       sc->block_sectors, dsm_nr_present(md),
		       sc->nr_blocks,
		       dsm_nr_dirty(md, 0) + dsm_snap_blocks(md, 0),
		       atomic_read(&sc->parked),
		       READ_ONCE(sc->fq.helper) ? "attached" : "detached",
		       mode_name(READ_ONCE(sc->mode)),
		       atomic64_read(&sc->nr_fetched),
		       atomic64_read(&sc->nr_zero),
		       atomic64_read(&sc->nr_fetch_errors),
		       dsm_generation(md),
		       fill_on ? "on" : "off", fill_rate, *id ? id : "-");
		for (c = 0; c < DSM_MAX_CONSUMERS; c++)
			DMEMIT(" %llu:%llu:%llu", dsm_nr_dirty(md, c),
			       dsm_snap_gen(md, c), dsm_snap_blocks(md, c));
		DMEMIT(" %u", jiffies_to_msecs(stream_fetch_oldest(sc)));
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%s %s %u", sc->metadata_dev->name, sc->data_dev->name,
		       sc->block_sectors);
		budget = sc->snap.budget != (u64)DEFAULT_PRESERVE_MB << 20;
		if (sc->fetch_timeout || budget || sc->intent_set ||
		    sc->ra_set)
			DMEMIT(" %u", (sc->fetch_timeout ? 2 : 0) +
			       (budget ? 2 : 0) + (sc->intent_set ? 2 : 0) +
			       (sc->ra_set ? 2 : 0));
		if (sc->fetch_timeout)
			DMEMIT(" fetch_timeout %u", sc->fetch_timeout);
		if (budget)
			DMEMIT(" preserve_mb %llu", sc->snap.budget >> 20);
		if (sc->intent_set)
			DMEMIT(" intent_region %u", sc->intent_sectors);
		if (sc->ra_set)
			DMEMIT(" readahead %u", sc->ra_sectors);
		break;
	case STATUSTYPE_IMA:
		*result = '\0';
		break;
	}
}

/*
 * Messages that change what is present need a quiesced device and rw
 * mode.  Returns 0 or the errno to answer.  The caller holds quiesce_lock
 * until it is done, so a concurrent resume waits for it.
 */
static int check_quiesced(struct stream_c *sc, const char *what)
{
	lockdep_assert_held(&sc->quiesce_lock);
	if (sc->active) {
		DMERR("%s: %s: suspend the device first", stream_name(sc), what);
		return -EBUSY;
	}
	if (READ_ONCE(sc->mode) != STREAM_MODE_RW) {
		DMERR("%s: %s: target is in %s mode", stream_name(sc), what,
		      mode_name(READ_ONCE(sc->mode)));
		return -EROFS;
	}
	flush_workqueue(sc->wq);
	if (stream_fetch_cancel_idle(sc)) {
		DMERR("%s: %s: fetches still in flight", stream_name(sc), what);
		return -EBUSY;
	}
	return 0;
}

static int parse_u64(const char *s, u64 *v)
{
	return kstrtoull(s, 10, v);
}

static int parse_consumer(struct stream_c *sc, const char *s,
			  unsigned int *c)
{
	if (kstrtouint(s, 10, c) || *c >= DSM_MAX_CONSUMERS) {
		DMERR("%s: invalid consumer '%s' (0-%u)", stream_name(sc), s,
		      DSM_MAX_CONSUMERS - 1);
		return -EINVAL;
	}
	return 0;
}

static int msg_snapshot(struct stream_c *sc, unsigned int argc, char **argv,
			char *result, unsigned int maxlen)
{
	unsigned int sz = 0, c;
	u64 gen, nr;
	int r;

	if (argc != 2)
		return -EINVAL;
	r = parse_consumer(sc, argv[1], &c);
	if (r)
		return r;
	mutex_lock(&sc->quiesce_lock);
	r = check_quiesced(sc, "snapshot");
	if (r) {
		mutex_unlock(&sc->quiesce_lock);
		return r;
	}
	r = stream_snap_cut(sc, c, &gen, &nr);
	mutex_unlock(&sc->quiesce_lock);
	if (r == -EBUSY) {
		DMERR("%s: snapshot: consumer %u has snapshot %llu in progress",
		      stream_name(sc), c, dsm_snap_gen(sc->md, c));
		return r;
	}
	if (r) {
		DMERR("%s: snapshot failed: %d", stream_name(sc), r);
		/* Only a metadata write error says the device is unwritable. */
		if (r != -ENOMEM)
			set_mode(sc, STREAM_MODE_RO);
		return r;
	}
	DMINFO("%s: consumer %u snapshot %llu: %llu blocks", stream_name(sc),
	       c, gen, nr);
	DMEMIT("%llu %llu", gen, nr);
	return 1;
}

/* ack|abort <consumer> <id> */
static int msg_end_snapshot(struct stream_c *sc, bool ack, unsigned int argc,
			    char **argv, char *result, unsigned int maxlen)
{
	unsigned int sz = 0, c;
	u64 gen, nr = 0;
	int r;

	if (argc != 3)
		return -EINVAL;
	r = parse_consumer(sc, argv[1], &c);
	if (r)
		return r;
	if (parse_u64(argv[2], &gen)) {
		DMERR("%s: %s: invalid snapshot id '%s'", stream_name(sc),
		      argv[0], argv[2]);
		return -EINVAL;
	}
	if (ack && READ_ONCE(sc->mode) != STREAM_MODE_RW)
		return -EROFS;
	r = stream_snap_end(sc, ack, c, gen, &nr);
	if (r == -ESTALE) {
		DMERR("%s: %s: consumer %u has no snapshot %llu (current: %llu)",
		      stream_name(sc), argv[0], c, gen, dsm_snap_gen(sc->md, c));
		return r;
	}
	if (r) {
		DMERR("%s: %s failed: %d", stream_name(sc), argv[0], r);
		set_mode(sc, STREAM_MODE_RO);
		return r;
	}
	DMEMIT("%s %llu", ack ? "acked" : "aborted", nr);
	return 1;
}

/* ranges <consumer> <id> <cursor> */
static int msg_ranges(struct stream_c *sc, unsigned int argc, char **argv,
		      char *result, unsigned int maxlen)
{
	unsigned int c;
	u64 gen, cursor;
	int r;

	if (argc != 4)
		return -EINVAL;
	r = parse_consumer(sc, argv[1], &c);
	if (r)
		return r;
	if (parse_u64(argv[2], &gen) || parse_u64(argv[3], &cursor)) {
		DMERR("%s: ranges: invalid snapshot id or cursor",
		      stream_name(sc));
		return -EINVAL;
	}
	r = stream_snap_ranges(sc, c, gen, cursor, result, maxlen);
	if (r == -ESTALE)
		DMERR("%s: ranges: consumer %u has no snapshot %llu",
		      stream_name(sc), c, gen);
	return r;
}

/* Parse "<first>+<count>". */
static int parse_range(const char *s, u64 *first, u64 *count)
{
	char buf[48], *plus;

	if (strscpy(buf, s, sizeof(buf)) < 0)
		return -EINVAL;
	plus = strchr(buf, '+');
	if (!plus)
		return -EINVAL;
	*plus = '\0';
	if (kstrtoull(buf, 10, first) || kstrtoull(plus + 1, 10, count))
		return -EINVAL;
	return 0;
}

static bool valid_image_id(const char *id)
{
	size_t n = strlen(id), i;

	if (!n || n >= DSM_IMAGE_ID_LEN)
		return false;
	for (i = 0; i < n; i++)
		if (!isalnum(id[i]) && !strchr("._:-", id[i]))
			return false;
	return true;
}

/*
 * invalidate add <first>+<count>...
 * invalidate clear
 * invalidate commit <image id> keep|discard
 */
static int msg_invalidate(struct stream_c *sc, unsigned int argc,
			  char **argv, char *result, unsigned int maxlen)
{
	unsigned int sz = 0, i;
	u64 first, count;
	bool keep;
	long r;

	if (argc < 2)
		return -EINVAL;
	if (!strcasecmp(argv[1], "add") && argc > 2) {
		/* Check every range before taking any. */
		for (i = 2; i < argc; i++) {
			if (parse_range(argv[i], &first, &count) || !count ||
			    first >= sc->nr_blocks ||
			    count > sc->nr_blocks - first) {
				DMERR("%s: invalidate: bad range '%s' (device has %llu blocks)",
				      stream_name(sc), argv[i], sc->nr_blocks);
				return -EINVAL;
			}
		}
		for (i = 2; i < argc; i++) {
			parse_range(argv[i], &first, &count);
			r = dsm_inval_add(sc->md, first, count);
			if (r)
				return r;
		}
		DMEMIT("%llu", dsm_inval_count(sc->md));
		return 1;
	}
	if (!strcasecmp(argv[1], "clear") && argc == 2) {
		dsm_inval_clear(sc->md);
		return 0;
	}
	if (strcasecmp(argv[1], "commit") || argc != 4)
		return -EINVAL;
	if (!valid_image_id(argv[2])) {
		DMERR("%s: invalidate: invalid image id '%s' (1-%u of [A-Za-z0-9._:-])",
		      stream_name(sc), argv[2], DSM_IMAGE_ID_LEN - 1);
		return -EINVAL;
	}
	if (!strcasecmp(argv[3], "keep")) {
		keep = true;
	} else if (!strcasecmp(argv[3], "discard")) {
		keep = false;
	} else {
		DMERR("%s: invalidate: policy must be keep or discard",
		      stream_name(sc));
		return -EINVAL;
	}
	mutex_lock(&sc->quiesce_lock);
	r = check_quiesced(sc, "invalidate");
	if (r) {
		mutex_unlock(&sc->quiesce_lock);
		return r;
	}
	r = dsm_invalidate(sc->md, sc->data_dev->bdev, argv[2], keep);
	mutex_unlock(&sc->quiesce_lock);
	if (r == -ENOTUNIQ)
		return -EBUSY;	/* keep refused, the metadata said why */
	if (r == -EBUSY) {
		DMERR("%s: invalidate: a snapshot is in progress",
		      stream_name(sc));
		return r;
	}
	if (r < 0) {
		DMERR("%s: invalidate failed: %ld", stream_name(sc), r);
		set_mode(sc, STREAM_MODE_RO);
		return r;
	}
	DMINFO("%s: image %s: %ld blocks invalidated (%s)", stream_name(sc),
	       argv[2], r, keep ? "keep" : "discard");
	/* Whatever the helper knows about the old image is stale now. */
	stream_chan_detach(sc);
	DMEMIT("invalidated %ld", r);
	return 1;
}

/* fill on|off, fill rate <bytes/s> */
static int msg_fill(struct stream_c *sc, unsigned int argc, char **argv)
{
	u64 rate;

	if (argc == 2 && !strcasecmp(argv[1], "on")) {
		dsm_set_fill_on(sc->md, true);
	} else if (argc == 2 && !strcasecmp(argv[1], "off")) {
		dsm_set_fill_on(sc->md, false);
	} else if (argc == 3 && !strcasecmp(argv[1], "rate") &&
		   !parse_u64(argv[2], &rate)) {
		dsm_set_fill_rate(sc->md, rate);
	} else {
		DMERR("%s: fill: expected on, off or rate <bytes/s>",
		      stream_name(sc));
		return -EINVAL;
	}
	dm_table_event(sc->ti->table);
	return 0;
}

/*
 * fail_parked: fail every bio waiting for the helper with EIO now (the way
 * out of a flushing suspend with no helper) and drop their fetches.
 */
static int msg_fail_parked(struct stream_c *sc, char *result,
			   unsigned int maxlen)
{
	struct bio_list bios = BIO_EMPTY_LIST;
	unsigned int sz = 0, n;

	flush_workqueue(sc->wq);
	n = take_parked(sc, &bios);
	end_parked(sc, &bios, BLK_STS_IOERR);
	if (n)
		DMWARN("%s: failed %u parked bios on request", stream_name(sc),
		       n);
	DMEMIT("failed %u", n);
	return 1;
}

/*
 * Messages (answers through the message response):
 *
 *   revert
 *	Make every block written on this machine (dirty for consumer 0)
 *	absent and clean again, so that its next read fetches the image's
 *	content; the blocks become dirty for consumers 1-3.  Suspended
 *	only.  Answers "reverted <n>".
 *   snapshot <consumer>
 *	Cut a snapshot of the consumer's dirty blocks.  Suspended only.
 *	Answers "<id> <blocks>".
 *   ranges <consumer> <id> <cursor>
 *	Block ranges of the snapshot from block <cursor> on: "<next
 *	cursor> <first>+<count>...", next cursor = total blocks at the end.
 *   ack <consumer> <id>, abort <consumer> <id>
 *	The consumer holds the snapshot's content (ack: its blocks become
 *	clean for it unless written since the cut) or does not (abort:
 *	they are dirty again).  Answer "acked <n>" / "aborted <n>".
 *   absent <cursor>
 *	Ranges of absent blocks, like ranges.
 *   invalidate add <first>+<count>..., invalidate clear,
 *   invalidate commit <image id> keep|discard
 *	Image update, see dm-stream.rst.  commit: suspended only.
 *   fill on|off, fill rate <bytes/s>
 *	Switch for the helper's background fill (read from the status).
 *   fail_parked
 *	Fail every bio waiting for the helper with EIO.  Answers
 *	"failed <n>".
 */
static int stream_message(struct dm_target *ti, unsigned int argc,
			  char **argv, char *result, unsigned int maxlen)
{
	struct stream_c *sc = ti->private;
	unsigned int sz = 0;
	u64 cursor;
	long r;

	if (!argc)
		goto unknown;
	if (argc == 1 && !strcasecmp(argv[0], "revert")) {
		mutex_lock(&sc->quiesce_lock);
		r = check_quiesced(sc, "revert");
		if (r) {
			mutex_unlock(&sc->quiesce_lock);
			return r;
		}
		r = dsm_revert(sc->md, sc->data_dev->bdev);
		mutex_unlock(&sc->quiesce_lock);
		if (r == -EBUSY) {
			DMERR("%s: revert: a snapshot is in progress",
			      stream_name(sc));
			return r;
		}
		if (r < 0) {
			DMERR("%s: revert failed: %ld", stream_name(sc), r);
			set_mode(sc, STREAM_MODE_RO);
			return r;
		}
		DMINFO("%s: reverted %ld blocks", stream_name(sc), r);
		DMEMIT("reverted %ld", r);
		return 1;
	}
	if (!strcasecmp(argv[0], "snapshot"))
		r = msg_snapshot(sc, argc, argv, result, maxlen);
	else if (!strcasecmp(argv[0], "ack"))
		r = msg_end_snapshot(sc, true, argc, argv, result, maxlen);
	else if (!strcasecmp(argv[0], "abort"))
		r = msg_end_snapshot(sc, false, argc, argv, result, maxlen);
	else if (!strcasecmp(argv[0], "ranges"))
		r = msg_ranges(sc, argc, argv, result, maxlen);
	else if (!strcasecmp(argv[0], "absent") && argc == 2 &&
		 !parse_u64(argv[1], &cursor))
		r = dsm_emit_ranges(dsm_present_map(sc->md), sc->nr_blocks,
				    false, cursor, result, maxlen);
	else if (!strcasecmp(argv[0], "invalidate"))
		r = msg_invalidate(sc, argc, argv, result, maxlen);
	else if (!strcasecmp(argv[0], "fill"))
		r = msg_fill(sc, argc, argv);
	else if (!strcasecmp(argv[0], "fail_parked") && argc == 1)
		r = msg_fail_parked(sc, result, maxlen);
	else
		goto unknown;
	if (r == -EINVAL)
		DMERR("%s: invalid '%s' message (%u arguments)",
		      stream_name(sc), argv[0], argc - 1);
	return r;

unknown:
	DMERR("%s: unsupported message '%s'", stream_name(sc),
	      argc ? argv[0] : "");
	return -EINVAL;
}

static int stream_iterate_devices(struct dm_target *ti,
				  iterate_devices_callout_fn fn, void *data)
{
	struct stream_c *sc = ti->private;

	return fn(ti, sc->data_dev, 0, ti->len, data);
}

static void stream_io_hints(struct dm_target *ti, struct queue_limits *limits)
{
	struct stream_c *sc = ti->private;

	u32 bsize = sc->block_sectors << SECTOR_SHIFT;

	/*
	 * The data device's limits are stacked by dm core.  Ask for whole
	 * blocks (a partial write to an absent block waits for its fetch),
	 * unless the stacked io_opt is already a multiple of one.
	 */
	if (limits->io_opt < bsize || limits->io_opt % bsize) {
		limits->io_min = max(limits->io_min, bsize);
		limits->io_opt = bsize;
	}
	if (sc->discard_zeroes)
		limits->discard_granularity = bsize;
}

static struct target_type stream_target = {
	.name = "stream",
	.version = {2, 0, 0},
	/* one helper per table: streamd attaches by device name */
	.features = DM_TARGET_SINGLETON,
	.module = THIS_MODULE,
	.ctr = stream_ctr,
	.dtr = stream_dtr,
	.map = stream_map,
	.end_io = stream_end_io,
	.presuspend = stream_presuspend,
	.presuspend_undo = stream_presuspend_undo,
	.postsuspend = stream_postsuspend,
	.preresume = stream_preresume,
	.resume = stream_resume,
	.status = stream_status,
	.message = stream_message,
	.iterate_devices = stream_iterate_devices,
	.io_hints = stream_io_hints,
};

static int __init dm_stream_init(void)
{
	int r;

	r = stream_chan_init();
	if (r)
		return r;
	r = dm_register_target(&stream_target);
	if (r) {
		DMERR("register failed %d", r);
		goto out_chan;
	}
	return 0;

out_chan:
	stream_chan_exit();
	return r;
}

static void __exit dm_stream_exit(void)
{
	dm_unregister_target(&stream_target);
	stream_chan_exit();
}

module_init(dm_stream_init);
module_exit(dm_stream_exit);

MODULE_DESCRIPTION(DM_NAME " target streaming a disk image on demand");
MODULE_LICENSE("GPL");
