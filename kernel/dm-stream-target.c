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
 * Crash ordering is the metadata's business; see the commit protocol in
 * dm-stream-metadata.c.  The target's part is to hold REQ_PREFLUSH bios
 * until a commit, to commit before issuing (or, for whole-block fills,
 * before completing) REQ_FUA writes, and to commit periodically.
 */
#include <linux/blkdev.h>
#include <linux/log2.h>
#include <linux/module.h>
#include <linux/slab.h>

#include "dm-stream-core.h"

#define DM_MSG_PREFIX "stream"

#define COMMIT_PERIOD	(HZ)
#define MIN_BLOCK_SECTORS	8
#define MAX_BLOCK_SECTORS	2048

static struct kmem_cache *fetch_cache;

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

/* Worker context: modes only go rw -> ro -> fail. */
static void set_mode(struct stream_c *sc, enum stream_mode m)
{
	if (m <= READ_ONCE(sc->mode))
		return;
	WRITE_ONCE(sc->mode, m);
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

/*
 * A bio to a present block.  Returns a DM_MAPIO_* code; with
 * DM_MAPIO_REMAPPED the caller submits (map) or the dm core does.
 */
static int handle_present(struct stream_c *sc, struct bio *bio, u64 block)
{
	if (!is_write(bio))
		goto remap;
	if (READ_ONCE(sc->mode) != STREAM_MODE_RW)
		return DM_MAPIO_KILL;
	dsm_set_dirty(sc->md, block);
	if ((bio->bi_opf & REQ_FUA) && dsm_changed(sc->md)) {
		/* Its dirty bit must be durable before it completes. */
		defer_bio(sc, &sc->deferred_flush, bio);
		return DM_MAPIO_SUBMITTED;
	}
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
		    (dsm_test(dsm_dirty_map(sc->md), block) &&
		     !(bio->bi_opf & REQ_FUA))) {
			remap(sc, bio);
			return DM_MAPIO_REMAPPED;
		}
		return handle_present(sc, bio, block);
	}

	if (mode != STREAM_MODE_RW)
		return DM_MAPIO_KILL;
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
		submit_mapped(sc, bio, handle_present(sc, bio, block));
		return;
	}
	if (READ_ONCE(sc->mode) != STREAM_MODE_RW) {
		mutex_unlock(&sc->fetch_lock);
		atomic_dec(&sc->parked);
		bio_io_error(bio);
		return;
	}
	f = xa_load(&sc->fetches, block);
	if (f) {
		bio_list_add(&f->waiters, bio);
		mutex_unlock(&sc->fetch_lock);
		return;
	}

	fill = is_write(bio) && bio_covers_block(sc, bio);
	f = alloc_fetch(sc, block);
	r = f ? xa_insert(&sc->fetches, block, f, GFP_NOIO) : -ENOMEM;
	if (r) {
		mutex_unlock(&sc->fetch_lock);
		if (f)
			free_fetch(f);
		/* Out of memory under I/O: retry from the worker later. */
		defer_bio(sc, &sc->deferred, bio);
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
	if (!r) {
		r = dsm_set_present(sc->md, f->block);
		if (r)
			DMERR_LIMIT("cannot record block %llu present: %d",
				    f->block, r);
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
	struct bio_list bios, flush_bios, completions;
	struct stream_fetch *f, *tmp;
	LIST_HEAD(done);
	struct bio *bio;
	int r;

	spin_lock_irq(&sc->lock);
	list_splice_init(&sc->completed, &done);
	spin_unlock_irq(&sc->lock);
	list_for_each_entry_safe(f, tmp, &done, list) {
		list_del_init(&f->list);
		retire_fetch(sc, f);
	}

	spin_lock_irq(&sc->lock);
	bios = sc->deferred;
	bio_list_init(&sc->deferred);
	flush_bios = sc->deferred_flush;
	bio_list_init(&sc->deferred_flush);
	completions = sc->flush_completions;
	bio_list_init(&sc->flush_completions);
	spin_unlock_irq(&sc->lock);

	while ((bio = bio_list_pop(&bios)))
		process_parked(sc, bio);

	if (bio_list_empty(&flush_bios) && bio_list_empty(&completions))
		return;

	r = stream_commit(sc);
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
						     bio_block(sc, bio)));
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

/*
 * Construct a stream mapping:
 *
 *   stream <metadata dev> <data dev> <block size>
 *          [<#feature args> [<feature arg>]*]
 *
 * block size: sectors, power of two in [8, 2048].
 * feature args: fetch_timeout <seconds>
 */
static int parse_features(struct stream_c *sc, struct dm_arg_set *as,
			  char **error)
{
	static const struct dm_arg _args[] = {
		{0, 2, "Invalid number of feature arguments"},
		{0, 86400, "Invalid fetch_timeout (0-86400 seconds)"},
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
		} else {
			*error = "Unknown feature argument";
			return -EINVAL;
		}
	}
	return 0;
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

	sc = kzalloc(sizeof(*sc), GFP_KERNEL);
	if (!sc) {
		ti->error = "Cannot allocate target context";
		return -ENOMEM;
	}
	sc->ti = ti;

	if (sscanf(argv[2], "%u%c", &bs, &dummy) != 1 ||
	    bs < MIN_BLOCK_SECTORS || bs > MAX_BLOCK_SECTORS ||
	    !is_power_of_2(bs)) {
		ti->error = "Invalid block size (power of two, 8-2048 sectors)";
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
	INIT_LIST_HEAD(&sc->completed);
	mutex_init(&sc->fetch_lock);
	xa_init(&sc->fetches);
	INIT_LIST_HEAD(&sc->pending);
	INIT_LIST_HEAD(&sc->sent);
	INIT_LIST_HEAD(&sc->node);

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

	stream_chan_unregister(sc);
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
	dsm_close(sc->md);
	dm_put_device(ti, sc->data_dev);
	dm_put_device(ti, sc->metadata_dev);
	kfree(sc);
}

static void stream_postsuspend(struct dm_target *ti)
{
	struct stream_c *sc = ti->private;

	mutex_lock(&stream_chan_lock);
	sc->active = false;
	mutex_unlock(&stream_chan_lock);
	cancel_delayed_work_sync(&sc->waker);
	flush_workqueue(sc->wq);
	stream_commit(sc);
}

static void stream_resume(struct dm_target *ti)
{
	struct stream_c *sc = ti->private;

	mutex_lock(&stream_chan_lock);
	sc->active = true;
	mutex_unlock(&stream_chan_lock);
	queue_delayed_work(sc->wq, &sc->waker, COMMIT_PERIOD);
}

/*
 * Status:
 *
 * INFO: <block size> <present>/<total> <dirty> <parked misses>
 *       <attached|detached> <rw|ro|fail> <fetched> <zero fetched>
 *       <fetch errors> <generation>
 *
 *   block size in sectors; present, total and dirty in blocks; parked
 *   misses is the number of bios waiting for a block now; fetched counts
 *   blocks written from helper replies (zero fetched of them sent as
 *   zeroes), fetch errors the failed or timed-out ones; generation is the
 *   metadata commit generation.
 *
 * TABLE: <metadata dev> <data dev> <block size>
 *        [<#feature args> [<feature arg>]*]
 */
static void stream_status(struct dm_target *ti, status_type_t type,
			  unsigned int status_flags, char *result,
			  unsigned int maxlen)
{
	struct stream_c *sc = ti->private;
	unsigned int sz = 0;

	switch (type) {
	case STATUSTYPE_INFO:
		DMEMIT("%u %llu/%llu %llu %d %s %s %lld %lld %lld %llu",
		       sc->block_sectors, dsm_nr_present(sc->md),
		       sc->nr_blocks, dsm_nr_dirty(sc->md),
		       atomic_read(&sc->parked),
		       READ_ONCE(sc->helper) ? "attached" : "detached",
		       mode_name(READ_ONCE(sc->mode)),
		       atomic64_read(&sc->nr_fetched),
		       atomic64_read(&sc->nr_zero),
		       atomic64_read(&sc->nr_fetch_errors),
		       dsm_generation(sc->md));
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%s %s %u", sc->metadata_dev->name, sc->data_dev->name,
		       sc->block_sectors);
		if (sc->fetch_timeout)
			DMEMIT(" 2 fetch_timeout %u", sc->fetch_timeout);
		break;
	case STATUSTYPE_IMA:
		*result = '\0';
		break;
	}
}

/*
 * Messages:
 *
 *   revert   Make every block written on this machine (dirty for consumer
 *            0) absent and clean again, so that its next read fetches the
 *            image's content.  Only while suspended (no I/O in flight, and
 *            nothing mounted can be looking); answers "reverted <n>".
 *            Time is proportional to the metadata, not the data.
 */
static int stream_message(struct dm_target *ti, unsigned int argc,
			  char **argv, char *result, unsigned int maxlen)
{
	struct stream_c *sc = ti->private;
	unsigned int sz = 0;
	bool active;
	long r;

	if (argc == 1 && !strcasecmp(argv[0], "revert")) {
		mutex_lock(&stream_chan_lock);
		active = sc->active;
		mutex_unlock(&stream_chan_lock);
		if (active) {
			DMERR("%s: revert: suspend the device first",
			      dm_device_name(dm_table_get_md(ti->table)));
			return -EBUSY;
		}
		if (READ_ONCE(sc->mode) != STREAM_MODE_RW) {
			DMERR("%s: revert: target is in %s mode",
			      dm_device_name(dm_table_get_md(ti->table)),
			      mode_name(READ_ONCE(sc->mode)));
			return -EROFS;
		}
		flush_workqueue(sc->wq);
		if (!xa_empty(&sc->fetches))
			return -EBUSY;
		r = dsm_revert(sc->md, sc->data_dev->bdev);
		if (r < 0) {
			DMERR("%s: revert failed: %ld",
			      dm_device_name(dm_table_get_md(ti->table)), r);
			set_mode(sc, STREAM_MODE_RO);
			return r;
		}
		DMINFO("%s: reverted %ld blocks",
		       dm_device_name(dm_table_get_md(ti->table)), r);
		DMEMIT("reverted %ld", r);
		return 1;
	}
	DMERR("%s: unsupported message '%s'",
	      dm_device_name(dm_table_get_md(ti->table)),
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
	.version = {1, 1, 0},
	.module = THIS_MODULE,
	.ctr = stream_ctr,
	.dtr = stream_dtr,
	.map = stream_map,
	.end_io = stream_end_io,
	.postsuspend = stream_postsuspend,
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
