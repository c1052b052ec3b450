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
 * Every bio is limited to one block (max_io_len), so "the block of a bio"
 * is always well defined.
 *
 * Snapshots.  A snapshot of consumer c is cut while the device is
 * suspended (no write in flight): its blocks are the ones dirty for c at
 * that instant, and what a drain must send is their content at the cut.
 * Those blocks are also marked "undrained" here.  The first write after
 * the cut to an undrained block is held (deferred to the worker), the
 * block's current content is read into memory (a struct stream_copy), the
 * undrained bit is cleared and only then is the write issued.  Readers of
 * the snapshot (DM_STREAM_IOC_SNAP_READ, under snap_lock) get the copy if
 * there is one and otherwise read the data device, which still holds the
 * content at the cut because every write to it is held meanwhile.  The
 * extra latency is one block read, once per block per snapshot.  Copies
 * live until ack or abort; when they would exceed the table's
 * preserve_mb budget (or a read fails) the snapshot is aborted instead:
 * its blocks become dirty again, its readers and its ack get -ESTALE, and
 * a table event is raised.  Writes are never held longer than that read.
 *
 * Crash ordering is the metadata's business; see the commit protocol in
 * dm-stream-metadata.c.  The target's part is to hold REQ_PREFLUSH bios
 * until a commit, to hold a write to a present block whose dirty bits are
 * not yet on disk until a commit (rule 2), to commit before completing a
 * REQ_FUA whole-block fill, and to commit periodically.
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
#define MIN_BLOCK_SECTORS	8
#define MAX_BLOCK_SECTORS	2048

static struct kmem_cache *fetch_cache;

/* A block's content at a snapshot's cut, shared by the snapshots needing it. */
struct stream_copy {
	struct kref kref;
	struct stream_c *sc;
	unsigned int nr_pages;
	struct page *pages[];
};

struct per_bio_data {
	struct stream_fetch *fill;	/* whole-block fill in flight */
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
	      dm_device_name(dm_table_get_md(sc->ti->table)), mode_name(m));
	dm_table_event(sc->ti->table);
}

void stream_wake_worker(struct stream_c *sc)
{
	queue_work(sc->wq, &sc->worker);
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

static unsigned int copy_index_shift(void)
{
	return ilog2(DSM_MAX_CONSUMERS);
}

static unsigned long copy_index(u64 block, unsigned int c)
{
	return (block << copy_index_shift()) | c;
}

/* Lockless, any context: must a write to @block wait for a copy? */
static bool needs_preserve(struct stream_c *sc, u64 block)
{
	unsigned int c;

	for (c = 0; c < DSM_MAX_CONSUMERS; c++) {
		unsigned long *u = READ_ONCE(sc->undrained[c]);

		if (u && dsm_snap_gen(sc->md, c) && test_bit(block, u))
			return true;
	}
	return false;
}

static void copy_free(struct stream_copy *cp)
{
	unsigned int i;

	for (i = 0; i < cp->nr_pages; i++)
		__free_page(cp->pages[i]);
	kfree(cp);
}

/* The last reference to a copy kept for a snapshot (counted in copy_bytes). */
static void copy_release(struct kref *kref)
{
	struct stream_copy *cp = container_of(kref, struct stream_copy, kref);

	lockdep_assert_held(&cp->sc->snap_lock);
	cp->sc->copy_bytes -= (u64)cp->nr_pages << PAGE_SHIFT;
	copy_free(cp);
}

/* Read @block of the data device into a new copy.  May sleep. */
static struct stream_copy *read_copy(struct stream_c *sc, u64 block)
{
	unsigned int i, n = (sc->block_sectors << SECTOR_SHIFT) >> PAGE_SHIFT;
	struct stream_copy *cp;
	struct bio *bio;
	int r = -ENOMEM;

	cp = kzalloc(struct_size(cp, pages, n), GFP_NOIO);
	if (!cp)
		return ERR_PTR(-ENOMEM);
	kref_init(&cp->kref);
	cp->sc = sc;
	bio = bio_alloc(sc->data_dev->bdev, n, REQ_OP_READ, GFP_NOIO);
	for (i = 0; i < n; i++) {
		cp->pages[i] = alloc_page(GFP_NOIO);
		if (!cp->pages[i])
			goto out;
		cp->nr_pages++;
		__bio_add_page(bio, cp->pages[i], PAGE_SIZE, 0);
	}
	bio->bi_iter.bi_sector = block << sc->block_shift;
	r = submit_bio_wait(bio);
out:
	bio_put(bio);
	if (!r)
		return cp;
	copy_free(cp);
	return ERR_PTR(r);
}

/* Drop every copy kept for consumer @c.  Caller holds snap_lock. */
static void __drop_copies(struct stream_c *sc, unsigned int c)
{
	struct stream_copy *cp;
	unsigned long idx;

	lockdep_assert_held(&sc->snap_lock);
	xa_for_each(&sc->copies, idx, cp) {
		if ((idx & (DSM_MAX_CONSUMERS - 1)) != c)
			continue;
		xa_erase(&sc->copies, idx);
		kref_put(&cp->kref, copy_release);
	}
	if (sc->undrained[c])
		bitmap_zero(sc->undrained[c], sc->nr_blocks);
}

/*
 * A snapshot that can no longer be served at its cut: abort it (its blocks
 * are dirty again).  Caller holds snap_lock.
 */
static void __break_snapshot(struct stream_c *sc, unsigned int c,
			     const char *why)
{
	u64 gen = dsm_snap_gen(sc->md, c), nr;

	lockdep_assert_held(&sc->snap_lock);
	if (dsm_abort(sc->md, c, gen, &nr))
		return;
	__drop_copies(sc, c);
	DMWARN("%s: snapshot %llu of consumer %u aborted: %s",
	       dm_device_name(dm_table_get_md(sc->ti->table)), gen, c, why);
	dm_table_event(sc->ti->table);
}

/*
 * Worker, before a write to present @block: keep the block's content at
 * the cut for every snapshot that has not got it yet.
 */
static void preserve(struct stream_c *sc, u64 block)
{
	u64 bytes = (u64)sc->block_sectors << SECTOR_SHIFT;
	struct stream_copy *cp;
	unsigned int c, mask = 0;
	int r;

	mutex_lock(&sc->snap_lock);
	for (c = 0; c < DSM_MAX_CONSUMERS; c++)
		if (sc->undrained[c] && dsm_snap_gen(sc->md, c) &&
		    test_bit(block, sc->undrained[c]))
			mask |= 1U << c;
	if (!mask)
		goto out;

	if (sc->copy_bytes + bytes > sc->copy_budget) {
		cp = ERR_PTR(-ENOSPC);
	} else {
		cp = read_copy(sc, block);
		if (!IS_ERR(cp))
			sc->copy_bytes += bytes;
	}
	for (c = 0; c < DSM_MAX_CONSUMERS; c++) {
		if (!(mask & (1U << c)))
			continue;
		if (IS_ERR(cp)) {
			__break_snapshot(sc, c, PTR_ERR(cp) == -ENOSPC ?
					 "preserve_mb budget exhausted" :
					 "cannot read a block to keep");
			continue;
		}
		kref_get(&cp->kref);
		r = xa_err(xa_store(&sc->copies, copy_index(block, c), cp,
				    GFP_NOIO));
		if (r) {
			kref_put(&cp->kref, copy_release);
			__break_snapshot(sc, c, "out of memory");
			continue;
		}
		clear_bit(block, sc->undrained[c]);
	}
	if (!IS_ERR(cp))
		kref_put(&cp->kref, copy_release);
out:
	mutex_unlock(&sc->snap_lock);
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
	if (needs_preserve(sc, block)) {
		if (!worker) {
			atomic_inc(&sc->parked);
			defer_bio(sc, &sc->deferred, bio);
			return DM_MAPIO_SUBMITTED;
		}
		preserve(sc, block);
	}
	if (dsm_durable(sc->md, block))
		goto remap;
	/* Rule 2: its dirty bits reach the disk before its data does. */
	dsm_set_dirty(sc->md, block);
	defer_bio(sc, &sc->deferred_dirty, bio);
	return DM_MAPIO_SUBMITTED;
remap:
	remap(sc, bio);
	return DM_MAPIO_REMAPPED;
}

static int stream_map(struct dm_target *ti, struct bio *bio)
{
	struct stream_c *sc = ti->private;
	struct per_bio_data *pb = dm_per_bio_data(bio, sizeof(*pb));
	enum stream_mode mode = READ_ONCE(sc->mode);
	sector_t off, end;
	u64 block;

	pb->fill = NULL;
	if (mode == STREAM_MODE_FAIL)
		return DM_MAPIO_KILL;

	if (bio->bi_opf & REQ_PREFLUSH) {
		if (mode != STREAM_MODE_RW)
			return DM_MAPIO_KILL;
		defer_bio(sc, &sc->deferred_flush, bio);
		return DM_MAPIO_SUBMITTED;
	}

	/* Never let a bio span two blocks (discards may). */
	off = dm_target_offset(ti, bio->bi_iter.bi_sector);
	end = round_down(off, sc->block_sectors) + sc->block_sectors;
	if (off + bio_sectors(bio) > end)
		dm_accept_partial_bio(bio, end - off);

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

	if (mode != STREAM_MODE_RW)
		return DM_MAPIO_KILL;
	if (READ_ONCE(sc->requeue))
		return DM_MAPIO_REQUEUE;
	atomic_inc(&sc->parked);
	defer_bio(sc, &sc->deferred, bio);
	return DM_MAPIO_SUBMITTED;
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

static struct stream_fetch *alloc_fetch(struct stream_c *sc, u64 block)
{
	struct stream_fetch *f = kmem_cache_zalloc(fetch_cache, GFP_NOIO);

	if (!f)
		return NULL;
	f->sc = sc;
	f->block = block;
	f->queued_at = jiffies;
	INIT_LIST_HEAD(&f->list);
	bio_list_init(&f->waiters);
	return f;
}

static void free_fetch(struct stream_fetch *f)
{
	unsigned int i;

	for (i = 0; i < f->nr_pages; i++)
		__free_page(f->pages[i]);
	kfree(f->pages);
	kmem_cache_free(fetch_cache, f);
}

/*
 * Worker: a bio that found its block absent in map.  Park it behind the
 * block's fetch (starting one if needed), or start a fill for a
 * whole-block write.
 */
static void process_parked(struct stream_c *sc, struct bio *bio)
{
	struct per_bio_data *pb = dm_per_bio_data(bio, sizeof(*pb));
	u64 block = bio_block(sc, bio);
	struct stream_fetch *f;
	bool fill;
	int r;

	mutex_lock(&sc->fetch_lock);
	if (dsm_test(dsm_present_map(sc->md), block)) {
		mutex_unlock(&sc->fetch_lock);
		atomic_dec(&sc->parked);
		submit_mapped(sc, bio, handle_present(sc, bio, block, true));
		return;
	}
	if (READ_ONCE(sc->mode) != STREAM_MODE_RW) {
		mutex_unlock(&sc->fetch_lock);
		atomic_dec(&sc->parked);
		bio_io_error(bio);
		return;
	}
	if (READ_ONCE(sc->requeue)) {
		/* noflush suspend: dm core queues it until resume */
		mutex_unlock(&sc->fetch_lock);
		atomic_dec(&sc->parked);
		bio->bi_status = BLK_STS_DM_REQUEUE;
		bio_endio(bio);
		return;
	}
	f = xa_load(&sc->fetches, block);
	if (f) {
		bio_list_add(&f->waiters, bio);
		mutex_unlock(&sc->fetch_lock);
		return;
	}

	/* A block a snapshot still needs is fetched before it is written. */
	fill = is_write(bio) && bio_covers_block(sc, bio) &&
		!needs_preserve(sc, block);
	f = alloc_fetch(sc, block);
	r = f ? xa_insert(&sc->fetches, block, f, GFP_NOIO) : -ENOMEM;
	if (r) {
		unsigned long flags;

		mutex_unlock(&sc->fetch_lock);
		if (f)
			free_fetch(f);
		/*
		 * Out of memory under I/O: park the bio on the starved list,
		 * retried when a fetch retires (freeing memory) or at the
		 * next period, never in a loop.
		 */
		spin_lock_irqsave(&sc->lock, flags);
		bio_list_add(&sc->starved, bio);
		spin_unlock_irqrestore(&sc->lock, flags);
		return;
	}

	if (fill) {
		f->state = FETCH_FILLING;
		mutex_unlock(&sc->fetch_lock);
		atomic_dec(&sc->parked);
		dsm_set_dirty(sc->md, block);
		pb->fill = f;
		remap(sc, bio);
		submit_bio_noacct(bio);
		return;
	}

	f->state = FETCH_QUEUED;
	bio_list_add(&f->waiters, bio);
	list_add_tail(&f->list, &sc->pending);
	__stream_chan_kick(sc);
	mutex_unlock(&sc->fetch_lock);
}

/* Any context: the data write of a fetch or fill has ended. */
void stream_fetch_io_done(struct stream_c *sc, struct stream_fetch *f)
{
	unsigned long flags;

	spin_lock_irqsave(&sc->lock, flags);
	list_add_tail(&f->list, &sc->completed);
	spin_unlock_irqrestore(&sc->lock, flags);
	stream_wake_worker(sc);
}

/* Worker: retire a fetch/fill whose I/O ended; release its waiters. */
static void retire_fetch(struct stream_c *sc, struct stream_fetch *f)
{
	struct bio_list waiters;
	struct bio *bio;
	int r = f->status ? -EIO : 0;

	mutex_lock(&sc->fetch_lock);
	if (!r && dsm_set_present(sc->md, f->block)) {
		DMINFO("%s: all %llu blocks present",
		       dm_device_name(dm_table_get_md(sc->ti->table)),
		       sc->nr_blocks);
		dm_table_event(sc->ti->table);
	}
	xa_erase(&sc->fetches, f->block);
	waiters = f->waiters;
	mutex_unlock(&sc->fetch_lock);

	if (f->status && f->state != FETCH_FILLING)
		atomic64_inc(&sc->nr_fetch_errors);
	while ((bio = bio_list_pop(&waiters))) {
		if (r) {
			atomic_dec(&sc->parked);
			bio_io_error(bio);
		} else {
			/* Back through the parked path: present now. */
			process_parked(sc, bio);
		}
	}
	free_fetch(f);
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

/*
 * Take every bio parked behind a fetch that waits for the helper (queued
 * or sent; not those whose data is being written), plus the starved ones.
 * The fetches stay: a helper may still answer them.  Returns how many.
 */
static unsigned int take_parked(struct stream_c *sc, struct bio_list *out)
{
	struct stream_fetch *f;
	struct list_head *lists[] = { &sc->pending, &sc->sent };
	unsigned int n = 0, i;
	struct bio *bio;

	mutex_lock(&sc->fetch_lock);
	for (i = 0; i < ARRAY_SIZE(lists); i++)
		list_for_each_entry(f, lists[i], list) {
			bio_list_merge(out, &f->waiters);
			bio_list_init(&f->waiters);
		}
	mutex_unlock(&sc->fetch_lock);
	spin_lock_irq(&sc->lock);
	bio_list_merge(out, &sc->starved);
	bio_list_init(&sc->starved);
	spin_unlock_irq(&sc->lock);
	bio_list_for_each(bio, out)
		n++;
	return n;
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

/* Worker: fail fetches that waited longer than fetch_timeout. */
static void expire_fetches(struct stream_c *sc)
{
	unsigned long limit = (unsigned long)sc->fetch_timeout * HZ;
	struct stream_fetch *f, *tmp;
	struct bio_list dead = BIO_EMPTY_LIST;
	struct bio *bio;
	LIST_HEAD(expired);
	struct list_head *lists[] = { &sc->pending, &sc->sent };
	int i;

	if (!sc->fetch_timeout)
		return;
	mutex_lock(&sc->fetch_lock);
	for (i = 0; i < ARRAY_SIZE(lists); i++)
		list_for_each_entry_safe(f, tmp, lists[i], list) {
			if (time_before(jiffies, f->queued_at + limit))
				continue;
			list_move_tail(&f->list, &expired);
			xa_erase(&sc->fetches, f->block);
			bio_list_merge(&dead, &f->waiters);
		}
	mutex_unlock(&sc->fetch_lock);

	list_for_each_entry_safe(f, tmp, &expired, list) {
		DMERR_LIMIT("%s: block %llu not fetched within %us",
			    dm_device_name(dm_table_get_md(sc->ti->table)),
			    f->block, sc->fetch_timeout);
		atomic64_inc(&sc->nr_fetch_errors);
		free_fetch(f);
	}
	while ((bio = bio_list_pop(&dead))) {
		atomic_dec(&sc->parked);
		bio_io_error(bio);
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
		      dm_device_name(dm_table_get_md(sc->ti->table)),
		      data_error ? "data device flush" : "metadata write", r);
		set_mode(sc, data_error ? STREAM_MODE_FAIL : STREAM_MODE_RO);
	}
	return r;
}

static void do_worker(struct work_struct *ws)
{
	struct stream_c *sc = container_of(ws, struct stream_c, worker);
	struct bio_list bios, flush_bios, completions, dirty_bios;
	struct stream_fetch *f, *tmp;
	LIST_HEAD(done);
	struct bio *bio;
	int r;

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

	list_for_each_entry_safe(f, tmp, &done, list) {
		list_del_init(&f->list);
		retire_fetch(sc, f);
	}
	if (!list_empty(&done))
		retry_starved(sc);

	while ((bio = bio_list_pop(&bios)))
		process_parked(sc, bio);

	if (bio_list_empty(&flush_bios) && bio_list_empty(&completions) &&
	    bio_list_empty(&dirty_bios))
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
			/* Empty flush: the commit flushed the data device. */
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
	if (dsm_changed(sc->md))
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

	if (!f)
		return DM_ENDIO_DONE;
	pb->fill = NULL;
	f->status = *error;
	stream_fetch_io_done(sc, f);
	if (*error || !(bio->bi_opf & REQ_FUA))
		return DM_ENDIO_DONE;

	/* The fill's present bit must be durable before a FUA completes. */
	spin_lock_irqsave(&sc->lock, flags);
	bio_list_add(&sc->flush_completions, bio);
	spin_unlock_irqrestore(&sc->lock, flags);
	stream_wake_worker(sc);
	return DM_ENDIO_INCOMPLETE;
}

static int copy_out(void __user *buf, struct page **pages, unsigned int n)
{
	unsigned int i;
	void *p;
	int r = 0;

	for (i = 0; i < n && !r; i++) {
		p = kmap_local_page(pages[i]);
		if (copy_to_user(buf + ((size_t)i << PAGE_SHIFT), p, PAGE_SIZE))
			r = -EFAULT;
		kunmap_local(p);
	}
	return r;
}

/*
 * DM_STREAM_IOC_SNAP_READ: copy @block as it was at the cut of snapshot
 * @gen of consumer @c to @buf.  Process context; the caller holds a
 * reference on @sc.  snap_lock is held to find (or read) the content, not
 * while copying it to userspace.
 */
int stream_snap_read(struct stream_c *sc, unsigned int c, u64 gen, u64 block,
		     void __user *buf, u32 len)
{
	struct stream_copy *cp;
	int r;

	if (c >= DSM_MAX_CONSUMERS || !gen)
		return -EINVAL;
	if (len != sc->block_sectors << SECTOR_SHIFT)
		return -EINVAL;
	if (block >= sc->nr_blocks)
		return -ERANGE;

	mutex_lock(&sc->snap_lock);
	if (dsm_snap_gen(sc->md, c) != gen) {
		r = -ESTALE;
		goto out;
	}
	if (!test_bit(block, dsm_snap_map(sc->md, c))) {
		r = -ENOENT;
		goto out;
	}
	cp = xa_load(&sc->copies, copy_index(block, c));
	if (cp) {
		kref_get(&cp->kref);
		mutex_unlock(&sc->snap_lock);
		r = copy_out(buf, cp->pages, cp->nr_pages);
		mutex_lock(&sc->snap_lock);
		kref_put(&cp->kref, copy_release);
		goto out;
	}
	if (!test_bit(block, sc->undrained[c])) {
		r = -ESTALE;	/* cannot happen: preserved blocks have copies */
		goto out;
	}
	/* Absent: its content at the cut is the image's; read the device. */
	if (!dsm_test(dsm_present_map(sc->md), block)) {
		r = -ENODATA;
		goto out;
	}
	/* Writes to the block are held while it is undrained: read it. */
	cp = read_copy(sc, block);
	mutex_unlock(&sc->snap_lock);
	if (IS_ERR(cp))
		return PTR_ERR(cp);
	r = copy_out(buf, cp->pages, cp->nr_pages);
	copy_free(cp);		/* never kept: not counted in copy_bytes */
	return r;
out:
	mutex_unlock(&sc->snap_lock);
	return r;
}

/*
 * Construct a stream mapping:
 *
 *   stream <metadata dev> <data dev> <block size>
 *          [<#feature args> [<feature arg>]*]
 *
 * block size: sectors, power of two in [8, 2048].
 * feature args: fetch_timeout <seconds>
 *                preserve_mb <MiB>   memory for snapshot copies (64)
 */
static int parse_features(struct stream_c *sc, struct dm_arg_set *as,
			  char **error)
{
	static const struct dm_arg _args[] = {
		{0, 4, "Invalid number of feature arguments"},
		{0, 86400, "Invalid fetch_timeout (0-86400 seconds)"},
		{1, 65536, "Invalid preserve_mb (1-65536 MiB)"},
	};
	unsigned int argc, v;
	const char *arg;
	int r;

	if (!as->argc)
		return 0;
	r = dm_read_arg_group(_args, as, &argc, error);
	if (r)
		return r;
	while (argc) {
		arg = dm_shift_arg(as);
		argc--;
		if (!strcasecmp(arg, "fetch_timeout")) {
			if (!argc) {
				*error = "fetch_timeout needs a value";
				return -EINVAL;
			}
			r = dm_read_arg(&_args[1], as, &v, error);
			if (r)
				return r;
			argc--;
			sc->fetch_timeout = v;
		} else if (!strcasecmp(arg, "preserve_mb")) {
			if (!argc) {
				*error = "preserve_mb needs a value";
				return -EINVAL;
			}
			r = dm_read_arg(&_args[2], as, &v, error);
			if (r)
				return r;
			argc--;
			sc->copy_budget = (u64)v << 20;
		} else {
			*error = "Unknown feature argument";
			return -EINVAL;
		}
	}
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
	sc->copy_budget = (u64)DEFAULT_PRESERVE_MB << 20;

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

	sc->md = dsm_open(sc->metadata_dev->bdev, bs, sc->nr_blocks, &merr);
	if (IS_ERR(sc->md)) {
		r = PTR_ERR(sc->md);
		ti->error = (char *)merr;
		goto out_data_dev;
	}

	spin_lock_init(&sc->lock);
	bio_list_init(&sc->deferred);
	bio_list_init(&sc->deferred_flush);
	bio_list_init(&sc->flush_completions);
	bio_list_init(&sc->deferred_dirty);
	bio_list_init(&sc->starved);
	INIT_LIST_HEAD(&sc->completed);
	mutex_init(&sc->quiesce_lock);
	mutex_init(&sc->fetch_lock);
	xa_init(&sc->fetches);
	INIT_LIST_HEAD(&sc->pending);
	INIT_LIST_HEAD(&sc->sent);
	INIT_LIST_HEAD(&sc->node);
	mutex_init(&sc->snap_lock);
	xa_init(&sc->copies);

	sc->wq = alloc_workqueue("dm-" DM_MSG_PREFIX, WQ_MEM_RECLAIM, 1);
	if (!sc->wq) {
		ti->error = "Cannot allocate workqueue";
		r = -ENOMEM;
		goto out_metadata;
	}
	INIT_WORK(&sc->worker, do_worker);
	INIT_DELAYED_WORK(&sc->waker, do_waker);

	r = dm_set_target_max_io_len(ti, bs);
	if (r) {
		ti->error = "Cannot set max I/O length";
		goto out_wq;
	}
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

out_wq:
	destroy_workqueue(sc->wq);
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
	struct stream_fetch *f;
	unsigned long idx;
	unsigned int i;

	stream_chan_unregister(sc);
	/* Snapshot readers that found the target before it went away. */
	stream_put(sc);
	wait_for_completion(&sc->gone);
	cancel_delayed_work_sync(&sc->waker);
	flush_workqueue(sc->wq);
	if (dsm_changed(sc->md))
		stream_commit(sc);
	destroy_workqueue(sc->wq);

	/* Suspend drained all I/O: whatever is left has no waiters. */
	xa_for_each(&sc->fetches, idx, f) {
		WARN_ON_ONCE(!bio_list_empty(&f->waiters));
		free_fetch(f);
	}
	xa_destroy(&sc->fetches);
	mutex_lock(&sc->snap_lock);
	for (i = 0; i < DSM_MAX_CONSUMERS; i++) {
		__drop_copies(sc, i);
		kvfree(sc->undrained[i]);
	}
	mutex_unlock(&sc->snap_lock);
	xa_destroy(&sc->copies);
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
	cancel_delayed_work_sync(&sc->waker);
	flush_workqueue(sc->wq);
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
	unsigned int c;
	u64 gen, nr;

	mutex_lock(&sc->snap_lock);
	for (c = 0; c < DSM_MAX_CONSUMERS; c++) {
		gen = dsm_snap_gen(sc->md, c);
		if (!gen || gen == sc->snap_cut[c])
			continue;
		if (!dsm_abort(sc->md, c, gen, &nr))
			DMINFO("%s: snapshot %llu of consumer %u aborted by the table reload",
			       dm_device_name(dm_table_get_md(ti->table)),
			       gen, c);
	}
	mutex_unlock(&sc->snap_lock);
	return 0;
}

static void stream_resume(struct dm_target *ti)
{
	struct stream_c *sc = ti->private;

	WRITE_ONCE(sc->requeue, false);
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
 *
 *   block size in sectors; present, total and dirty in blocks (dirty: not
 *   yet acknowledged by consumer 0, the repository, including a snapshot
 *   in progress); parked misses is the number of bios waiting for a block
 *   now; fetched counts blocks written from helper replies (zero fetched
 *   of them sent as zeroes), fetch errors the failed or timed-out ones;
 *   generation is the metadata commit generation; fill rate in bytes/s
 *   (0: unlimited); each consumer is <dirty>:<snapshot id>:<snapshot
 *   blocks>, dirty not counting the snapshot's blocks, id 0 when no
 *   snapshot is in progress.
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
	const char *id;
	bool budget;

	switch (type) {
	case STATUSTYPE_INFO:
		id = dsm_image_id(md);
		DMEMIT("%u %llu/%llu %llu %d %s %s %lld %lld %lld %llu %s %llu %s",
		       sc->block_sectors, dsm_nr_present(md),
		       sc->nr_blocks,
		       dsm_nr_dirty(md, 0) + dsm_snap_blocks(md, 0),
		       atomic_read(&sc->parked),
		       READ_ONCE(sc->helper) ? "attached" : "detached",
		       mode_name(READ_ONCE(sc->mode)),
		       atomic64_read(&sc->nr_fetched),
		       atomic64_read(&sc->nr_zero),
		       atomic64_read(&sc->nr_fetch_errors),
		       dsm_generation(md),
		       READ_ONCE(sc->fill_on) ? "on" : "off",
		       READ_ONCE(sc->fill_rate), *id ? id : "-");
		for (c = 0; c < DSM_MAX_CONSUMERS; c++)
			DMEMIT(" %llu:%llu:%llu", dsm_nr_dirty(md, c),
			       dsm_snap_gen(md, c), dsm_snap_blocks(md, c));
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%s %s %u", sc->metadata_dev->name, sc->data_dev->name,
		       sc->block_sectors);
		budget = sc->copy_budget != (u64)DEFAULT_PRESERVE_MB << 20;
		if (sc->fetch_timeout || budget)
			DMEMIT(" %u", (sc->fetch_timeout ? 2 : 0) + (budget ? 2 : 0));
		if (sc->fetch_timeout)
			DMEMIT(" fetch_timeout %u", sc->fetch_timeout);
		if (budget)
			DMEMIT(" preserve_mb %llu", sc->copy_budget >> 20);
		break;
	case STATUSTYPE_IMA:
		*result = '\0';
		break;
	}
}

static const char *dev_name_of(struct stream_c *sc)
{
	return dm_device_name(dm_table_get_md(sc->ti->table));
}

/*
 * Attach: is the helper's image the one this device streams?  Its size must
 * be the device's (when the helper knows it) and its identity the one the
 * last image update recorded (when both are known).  Caller holds
 * stream_chan_lock.
 */
int stream_check_image(struct stream_c *sc, u64 image_size,
		       const char *image_id)
{
	u64 size = sc->nr_blocks << (sc->block_shift + SECTOR_SHIFT);
	const char *have = dsm_image_id(sc->md);

	if (image_size && image_size != size) {
		DMERR("%s: helper's image has %llu bytes, the device %llu: refused",
		      dev_name_of(sc), image_size, size);
		return -EMEDIUMTYPE;
	}
	if (*image_id && *have && strcmp(image_id, have)) {
		DMERR("%s: helper serves image '%s', the device holds '%s': refused",
		      dev_name_of(sc), image_id, have);
		return -EMEDIUMTYPE;
	}
	return 0;
}

/*
 * Suspended: drop the fetches nobody waits for (left by a noflush suspend
 * or a fail_parked); a helper's late reply to one gets -ENOENT.  Returns
 * true if fetches whose data is being written remain.
 */
static bool cancel_idle_fetches(struct stream_c *sc)
{
	struct stream_fetch *f, *tmp;
	struct list_head *lists[] = { &sc->pending, &sc->sent };
	LIST_HEAD(idle);
	unsigned int i;
	bool busy;

	mutex_lock(&sc->fetch_lock);
	for (i = 0; i < ARRAY_SIZE(lists); i++)
		list_for_each_entry_safe(f, tmp, lists[i], list) {
			if (!bio_list_empty(&f->waiters))
				continue;
			xa_erase(&sc->fetches, f->block);
			list_move_tail(&f->list, &idle);
		}
	busy = !xa_empty(&sc->fetches);
	mutex_unlock(&sc->fetch_lock);
	list_for_each_entry_safe(f, tmp, &idle, list)
		free_fetch(f);
	return busy;
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
		DMERR("%s: %s: suspend the device first", dev_name_of(sc), what);
		return -EBUSY;
	}
	if (READ_ONCE(sc->mode) != STREAM_MODE_RW) {
		DMERR("%s: %s: target is in %s mode", dev_name_of(sc), what,
		      mode_name(READ_ONCE(sc->mode)));
		return -EROFS;
	}
	flush_workqueue(sc->wq);
	if (cancel_idle_fetches(sc)) {
		DMERR("%s: %s: fetches still in flight", dev_name_of(sc), what);
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
		DMERR("%s: invalid consumer '%s' (0-%u)", dev_name_of(sc), s,
		      DSM_MAX_CONSUMERS - 1);
		return -EINVAL;
	}
	return 0;
}

/*
 * Answer "<next cursor> <first>+<count>..." with the runs of set (@set) or
 * clear bits of @map from @cursor on, as many as fit in @maxlen; the next
 * cursor is the total number of blocks once the map is exhausted.
 */
static int emit_ranges(struct stream_c *sc, const unsigned long *map,
		       bool set, u64 cursor, char *result, unsigned int maxlen)
{
	unsigned int sz, room = maxlen > 48 ? maxlen - 48 : 0;
	char *ranges;
	u64 start, len, next = cursor;
	int n;

	if (cursor > sc->nr_blocks)
		return -ERANGE;
	ranges = kmalloc(maxlen, GFP_KERNEL);
	if (!ranges)
		return -ENOMEM;
	sz = 0;
	while (dsm_next_range(map, sc->nr_blocks, next, set, &start, &len)) {
		n = snprintf(ranges + sz, maxlen - sz, " %llu+%llu", start, len);
		if (sz + n >= room)
			break;
		sz += n;
		next = start + len;
	}
	if (!dsm_next_range(map, sc->nr_blocks, next, set, &start, &len))
		next = sc->nr_blocks;
	ranges[sz] = '\0';
	if (!sz && next < sc->nr_blocks) {
		kfree(ranges);
		return -ENOSPC;		/* buffer too small for one range */
	}
	snprintf(result, maxlen, "%llu%s", next, ranges);
	kfree(ranges);
	return 1;
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
	mutex_lock(&sc->snap_lock);
	if (!sc->undrained[c]) {
		unsigned long *u = kvcalloc(BITS_TO_LONGS(sc->nr_blocks),
					    sizeof(unsigned long), GFP_KERNEL);

		if (!u) {
			r = -ENOMEM;
			goto out;
		}
		WRITE_ONCE(sc->undrained[c], u);
	}
	r = dsm_snapshot(sc->md, sc->data_dev->bdev, c, &gen, &nr);
	if (r == -EBUSY) {
		DMERR("%s: snapshot: consumer %u has snapshot %llu in progress",
		      dev_name_of(sc), c, dsm_snap_gen(sc->md, c));
		goto out;
	}
	if (r) {
		DMERR("%s: snapshot failed: %d", dev_name_of(sc), r);
		/* Only a metadata write error says the device is unwritable. */
		if (r != -ENOMEM)
			set_mode(sc, STREAM_MODE_RO);
		goto out;
	}
	bitmap_copy(sc->undrained[c], dsm_snap_map(sc->md, c), sc->nr_blocks);
	sc->snap_cut[c] = gen;
	DMINFO("%s: consumer %u snapshot %llu: %llu blocks", dev_name_of(sc),
	       c, gen, nr);
	DMEMIT("%llu %llu", gen, nr);
	r = 1;
out:
	mutex_unlock(&sc->snap_lock);
	mutex_unlock(&sc->quiesce_lock);
	return r;
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
		DMERR("%s: %s: invalid snapshot id '%s'", dev_name_of(sc),
		      argv[0], argv[2]);
		return -EINVAL;
	}
	if (ack && READ_ONCE(sc->mode) != STREAM_MODE_RW)
		return -EROFS;
	mutex_lock(&sc->snap_lock);
	r = ack ? dsm_ack(sc->md, c, gen, &nr) : dsm_abort(sc->md, c, gen, &nr);
	/* Even a failed ack ended the snapshot in core. */
	if (!dsm_snap_gen(sc->md, c))
		__drop_copies(sc, c);
	mutex_unlock(&sc->snap_lock);
	if (r == -ESTALE) {
		DMERR("%s: %s: consumer %u has no snapshot %llu (current: %llu)",
		      dev_name_of(sc), argv[0], c, gen, dsm_snap_gen(sc->md, c));
		return r;
	}
	if (r) {
		DMERR("%s: %s failed: %d", dev_name_of(sc), argv[0], r);
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
		      dev_name_of(sc));
		return -EINVAL;
	}
	mutex_lock(&sc->snap_lock);
	if (!gen || dsm_snap_gen(sc->md, c) != gen)
		r = -ESTALE;
	else
		r = emit_ranges(sc, dsm_snap_map(sc->md, c), true, cursor,
				result, maxlen);
	mutex_unlock(&sc->snap_lock);
	if (r == -ESTALE)
		DMERR("%s: ranges: consumer %u has no snapshot %llu",
		      dev_name_of(sc), c, gen);
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
				      dev_name_of(sc), argv[i], sc->nr_blocks);
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
		      dev_name_of(sc), argv[2], DSM_IMAGE_ID_LEN - 1);
		return -EINVAL;
	}
	if (!strcasecmp(argv[3], "keep")) {
		keep = true;
	} else if (!strcasecmp(argv[3], "discard")) {
		keep = false;
	} else {
		DMERR("%s: invalidate: policy must be keep or discard",
		      dev_name_of(sc));
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
	if (r == -EBUSY) {
		DMERR("%s: invalidate: a snapshot is in progress",
		      dev_name_of(sc));
		return r;
	}
	if (r < 0) {
		DMERR("%s: invalidate failed: %ld", dev_name_of(sc), r);
		set_mode(sc, STREAM_MODE_RO);
		return r;
	}
	DMINFO("%s: image %s: %ld blocks invalidated (%s)", dev_name_of(sc),
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
		WRITE_ONCE(sc->fill_on, true);
	} else if (argc == 2 && !strcasecmp(argv[1], "off")) {
		WRITE_ONCE(sc->fill_on, false);
	} else if (argc == 3 && !strcasecmp(argv[1], "rate") &&
		   !parse_u64(argv[2], &rate)) {
		WRITE_ONCE(sc->fill_rate, rate);
	} else {
		DMERR("%s: fill: expected on, off or rate <bytes/s>",
		      dev_name_of(sc));
		return -EINVAL;
	}
	dm_table_event(sc->ti->table);
	return 0;
}

/*
 * fail_parked: fail every bio waiting for the helper with EIO now (the way
 * out of a flushing suspend with no helper).  The fetches stay queued.
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
		DMWARN("%s: failed %u parked bios on request", dev_name_of(sc),
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
			      dev_name_of(sc));
			return r;
		}
		if (r < 0) {
			DMERR("%s: revert failed: %ld", dev_name_of(sc), r);
			set_mode(sc, STREAM_MODE_RO);
			return r;
		}
		DMINFO("%s: reverted %ld blocks", dev_name_of(sc), r);
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
		r = emit_ranges(sc, dsm_present_map(sc->md), false, cursor,
				result, maxlen);
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
		      dev_name_of(sc), argv[0], argc - 1);
	return r;

unknown:
	DMERR("%s: unsupported message '%s'", dev_name_of(sc),
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

	if (sc->discard_zeroes)
		limits->discard_granularity = sc->block_sectors << SECTOR_SHIFT;
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

	fetch_cache = KMEM_CACHE(stream_fetch, 0);
	if (!fetch_cache)
		return -ENOMEM;
	r = stream_chan_init();
	if (r)
		goto out_cache;
	r = dm_register_target(&stream_target);
	if (r) {
		DMERR("register failed %d", r);
		goto out_chan;
	}
	return 0;

out_chan:
	stream_chan_exit();
out_cache:
	kmem_cache_destroy(fetch_cache);
	return r;
}

static void __exit dm_stream_exit(void)
{
	dm_unregister_target(&stream_target);
	stream_chan_exit();
	kmem_cache_destroy(fetch_cache);
}

module_init(dm_stream_init);
module_exit(dm_stream_exit);

MODULE_DESCRIPTION(DM_NAME " target streaming a disk image on demand");
MODULE_LICENSE("GPL");
