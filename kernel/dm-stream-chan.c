// SPDX-License-Identifier: GPL-2.0
/*
 * dm-stream fetch queue and helper channel: /dev/dm-stream.
 *
 * A fetch is one block being made present.  States (under the queue lock):
 *
 *   (miss)  --park-->  FETCH_QUEUED  --helper read()-->  FETCH_SENT
 *   FETCH_SENT  --reply write()-->  FETCH_WRITING  --endio-->  completed
 *   FETCH_SENT  --helper closes / detach / failed read()-->  FETCH_QUEUED
 *   (whole-block write)  --park-->  FETCH_FILLING  --endio-->  completed
 *   QUEUED/SENT  --fetch_timeout-->  dropped, waiters failed
 *   completed  --worker: stream_fetch_retire()-->  gone (present if ok)
 *
 * Ranges: chan_read() sends a queued fetch together with the queued
 * fetches of the blocks around it, up to the helper's max_blocks, as one
 * request under one tag; each stays a fetch of its own.  A reply names
 * a sub-range of one request: every block of it must be FETCH_SENT to the
 * replying file under that tag, or nothing is done; then its blocks are
 * written to the data device with one bio (struct range_write) and each
 * fetch completes on its own.  A miss costs a helper round trip and a
 * data write per range, not per block.
 *
 * Payloads: a payload that starts on a page boundary (streamd lays its
 * buffers out so) is written from the helper's own pages, pinned for the
 * write, and write(2) returns once the data write has completed, as an
 * O_DIRECT write does: no page is allocated, zeroed or copied.  Any other
 * payload (or one in memory that cannot be pinned) is copied into pages of
 * ours first and write(2) returns at once.
 *
 * The ABI is described in uapi/dm-stream.h.  One helper file attaches to one
 * target; requests it has read but not answered go back to the queue when
 * it closes.  Replies are validated against the outstanding request (tag,
 * block, owner, length) before anything touches the data device.
 *
 * Lifetimes: a target and a file point at each other while attached.  The
 * link is made and broken only under stream_chan_lock, with the target's
 * fetch queue lock and the file's sem held for write, so a file operation
 * that holds the file's sem for read sees a target that stays alive.
 */
#include <linux/fs.h>
#include <linux/highmem.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/poll.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "dm-stream-core.h"
#include "dm-stream-snap.h"
#include "uapi/dm-stream.h"

#define DM_MSG_PREFIX "stream chan"
#define MAX_BATCH 256
/*
 * The largest reply payload: one block of the largest block size, so a
 * range's bio has at most BIO_MAX_VECS pages.
 */
#define MAX_PAYLOAD	(MAX_BLOCK_SECTORS << SECTOR_SHIFT)

/* Guards stream_targets, every sc->active, and attach/detach. */
DEFINE_MUTEX(stream_chan_lock);
static LIST_HEAD(stream_targets);

/* Fetches of every target; created at module load. */
static struct kmem_cache *fetch_cache;

void stream_fetchq_init(struct stream_fetchq *fq)
{
	init_waitqueue_head(&fq->write_wait);
	init_waitqueue_head(&fq->range_wait);
	mutex_init(&fq->lock);
	xa_init(&fq->fetches);
	INIT_LIST_HEAD(&fq->pending);
	INIT_LIST_HEAD(&fq->sent);
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

void stream_fetch_free(struct stream_fetch *f)
{
	kmem_cache_free(fetch_cache, f);
}

/* A new fetch of @block, in sc->fetches; NULL without memory. */
static struct stream_fetch *__insert_fetch(struct stream_c *sc, u64 block)
{
	struct stream_fetch *f;

	lockdep_assert_held(&sc->fq.lock);
	f = alloc_fetch(sc, block);
	if (f && xa_insert(&sc->fq.fetches, block, f, GFP_NOIO)) {
		stream_fetch_free(f);
		f = NULL;
	}
	return f;
}

/*
 * @f is wanted by a read (or a partial write) parked since @since, as its
 * first waiter or (for the blocks of a read after the one it parks on)
 * on its behalf: as a waiter of its own would, a demand makes it a demand,
 * to the head of the queue while queued, and its age starts at @since
 * unless an earlier waiter started it.
 */
static void __claim_fetch(struct stream_c *sc, struct stream_fetch *f,
			  bool background, unsigned long since)
{
	lockdep_assert_held(&sc->fq.lock);
	if (bio_list_empty(&f->waiters)) {
		if (!background && f->state == FETCH_QUEUED)
			list_move(&f->list, &sc->fq.pending);
		f->queued_at = since;
		f->background = background;
	} else if (!background) {
		f->background = false;
	}
}

/*
 * Queue a fetch for every block of [@first, @end) that is absent and has
 * none; *@queued, how many.  Out of memory it stops and returns -ENOMEM
 * (for readahead and a read's later blocks that costs a later miss), else
 * 0.  For readahead and the fill; and with @claim for the blocks of a read
 * after the one it parks on (parked since @since), so that they go to the
 * helper in the same range, their fetches claimed for it
 * (__claim_fetch()).
 */
static int __queue_absent(struct stream_c *sc, u64 first, u64 end,
			  bool claim, bool background, unsigned long since,
			  unsigned int *queued)
{
	const unsigned long *present = dsm_present_map(sc->md);
	struct stream_fetch *f;
	unsigned int n = 0;
	int r = 0;
	u64 b;

	lockdep_assert_held(&sc->fq.lock);
	for (b = first; b < end; b++) {
		if (dsm_test(present, b))
			continue;
		f = xa_load(&sc->fq.fetches, b);
		if (f) {
			/* a fill's block is the write's, not the image's */
			if (claim && f->state != FETCH_FILLING)
				__claim_fetch(sc, f, background, since);
			continue;
		}
		f = __insert_fetch(sc, b);
		if (!f) {
			r = -ENOMEM;
			break;
		}
		f->state = FETCH_QUEUED;
		f->background = background;
		if (claim)
			f->queued_at = since;
		list_add_tail(&f->list, &sc->fq.pending);
		n++;
	}
	*queued = n;
	return r;
}

enum stream_park stream_fetch_park(struct stream_c *sc, struct bio *bio,
				   u64 block, unsigned int nr, bool fill,
				   unsigned long since,
				   struct stream_fetch **fp)
{
	bool background = !fill && stream_bio_background(bio);
	u64 end = block + nr;
	struct stream_fetch *f;
	unsigned int more;
	bool queued;

	if (WARN_ON_ONCE(!nr || (fill && nr > 1)))
		return STREAM_PARK_NOMEM;
	mutex_lock(&sc->fq.lock);
	/* Under the lock: stream_fetch_retire() sets present under it. */
	while (block < end && dsm_test(dsm_present_map(sc->md), block))
		block++;
	if (block == end) {
		mutex_unlock(&sc->fq.lock);
		return STREAM_PARK_PRESENT;
	}
	if (READ_ONCE(sc->requeue)) {
		mutex_unlock(&sc->fq.lock);
		return STREAM_PARK_REQUEUE;
	}
	f = xa_load(&sc->fq.fetches, block);
	if (f && fill && bio_list_empty(&f->waiters) &&
	    f->state == FETCH_QUEUED) {
		/*
		 * A readahead fetch nobody waited for: a whole-block write
		 * takes it over as a fill (it needs nothing from the
		 * server).
		 */
		list_del_init(&f->list);
		f->state = FETCH_FILLING;
		mutex_unlock(&sc->fq.lock);
		*fp = f;
		return STREAM_PARK_FILL;
	}
	if (f) {
		__claim_fetch(sc, f, background, since);
		queued = false;
	} else {
		f = __insert_fetch(sc, block);
		if (!f) {
			mutex_unlock(&sc->fq.lock);
			return STREAM_PARK_NOMEM;
		}
		if (fill) {
			f->state = FETCH_FILLING;
			mutex_unlock(&sc->fq.lock);
			*fp = f;
			return STREAM_PARK_FILL;
		}
		f->state = FETCH_QUEUED;
		f->background = background;
		f->queued_at = since;
		list_add_tail(&f->list, &sc->fq.pending);
		queued = true;
	}
	bio_list_add(&f->waiters, bio);
	/* Out of memory, a later block parks on its own when reached. */
	__queue_absent(sc, block + 1, end, true, background, since, &more);
	if (more)
		queued = true;
	if (queued && sc->fq.helper)
		wake_up_interruptible(&sc->fq.helper->wait);
	mutex_unlock(&sc->fq.lock);
	return STREAM_PARK_WAITING;
}

/*
 * A fetch left sc->fetches, or the queue stopped: wake DM_STREAM_IOC_FETCH
 * callers.  Pairs with the barrier in wait_event's prepare_to_wait().
 */
static void wake_range_waiters(struct stream_c *sc)
{
	if (wq_has_sleeper(&sc->fq.range_wait))
		wake_up_all(&sc->fq.range_wait);
}

/* Lockless (RCU): a block of [@first, @end) is being made present. */
static bool range_busy(struct stream_c *sc, u64 first, u64 end)
{
	unsigned long idx = first;

	return READ_ONCE(sc->fq.stopped) || READ_ONCE(sc->requeue) ?
		false : !!xa_find(&sc->fq.fetches, &idx, end - 1, XA_PRESENT);
}

/* Blocks queued under one hold of fq.lock, which misses in map wait for. */
#define RANGE_SLICE	64

int stream_fetch_range(struct stream_c *sc, u64 first, u64 count,
		       bool nowait, u64 *absent)
{
	u64 end = first + count, s, e;
	unsigned int n;
	int r = 0;

	for (s = first; s < end && !r; s = e) {
		e = min(s + RANGE_SLICE, end);
		mutex_lock(&sc->fq.lock);
		if (READ_ONCE(sc->requeue) || sc->fq.stopped) {
			r = -EAGAIN;
		} else if (READ_ONCE(sc->mode) != STREAM_MODE_RW) {
			r = -EROFS;
		} else {
			/* Background: behind any demand (chan_read). */
			r = __queue_absent(sc, s, e, false, true, 0, &n);
			if (n && sc->fq.helper)
				wake_up_interruptible(&sc->fq.helper->wait);
		}
		mutex_unlock(&sc->fq.lock);
	}
	if (r)
		return r;
	/*
	 * Freezable: the helper that serves these fetches is frozen during
	 * a system suspend, and this wait must not fail the freeze (no lock
	 * is held; calling again queues only what is still absent).
	 */
	if (!nowait &&
	    wait_event_state(sc->fq.range_wait, !range_busy(sc, first, end),
			     (TASK_KILLABLE | TASK_FREEZABLE)))
		return -EINTR;
	/* A suspend cut the wait short: what it queued may stay queued. */
	if (!nowait && (READ_ONCE(sc->requeue) || READ_ONCE(sc->fq.stopped)))
		return -EAGAIN;
	*absent = dsm_count_clear(dsm_present_map(sc->md), first, end);
	return 0;
}

unsigned int stream_fetch_readahead(struct stream_c *sc, u64 first,
				    u64 count)
{
	unsigned int n = 0;
	u64 end;

	if (first >= sc->nr_blocks)
		return 0;
	end = min(first + count, sc->nr_blocks);
	mutex_lock(&sc->fq.lock);
	/* Nothing new in ro mode, nor while suspending or suspended. */
	if (READ_ONCE(sc->mode) != STREAM_MODE_RW || READ_ONCE(sc->requeue) ||
	    sc->fq.stopped)
		goto out;
	/* Out of memory, what it did not queue is missed later. */
	__queue_absent(sc, first, end, false, false, 0, &n);
	if (n && sc->fq.helper)
		wake_up_interruptible(&sc->fq.helper->wait);
out:
	mutex_unlock(&sc->fq.lock);
	return n;
}

unsigned int stream_fetch_fill_run(struct stream_c *sc, u64 first,
				   unsigned int max, struct stream_fetch **fp)
{
	const unsigned long *present = dsm_present_map(sc->md);
	struct stream_fetch *f, *head = NULL;
	unsigned int n = 0;

	mutex_lock(&sc->fq.lock);
	/* Under the lock, as in stream_fetch_park(). */
	if (READ_ONCE(sc->requeue))
		goto out;
	for (; n < max; n++) {
		if (dsm_test(present, first + n))
			break;
		f = xa_load(&sc->fq.fetches, first + n);
		if (f) {
			/*
			 * A queued fetch nobody waits for (readahead, the
			 * background fill, a block a whole read will reach
			 * later): taken over, as stream_fetch_park() does.
			 */
			if (f->state != FETCH_QUEUED ||
			    !bio_list_empty(&f->waiters))
				break;
			list_del_init(&f->list);
		} else {
			f = __insert_fetch(sc, first + n);
			if (!f)
				break;
		}
		f->state = FETCH_FILLING;
		if (head)
			list_add_tail(&f->list, &head->list);
		else
			head = f;
	}
out:
	mutex_unlock(&sc->fq.lock);
	*fp = head;
	return n;
}

void stream_fetch_fill_done(struct stream_fetch *f, blk_status_t status)
{
	struct stream_fetch *g, *tmp;
	LIST_HEAD(run);

	/*
	 * A head for the circle of fills; each leaves it before it
	 * completes, and nothing touches it after (the worker may retire
	 * and free it at once).
	 */
	list_add_tail(&run, &f->list);
	list_for_each_entry_safe(g, tmp, &run, list) {
		list_del_init(&g->list);
		g->status = status;
		stream_fetch_io_done(g);
	}
}

void stream_fetch_io_done(struct stream_fetch *f)
{
	struct stream_c *sc = f->sc;
	unsigned long flags;

	/* Nothing touches sc after the unlock: stream_fetch_quiesce(). */
	spin_lock_irqsave(&sc->lock, flags);
	list_add_tail(&f->list, &sc->completed);
	queue_work(sc->wq, &sc->worker);
	if (f->state == FETCH_WRITING && !--sc->fq.writing)
		wake_up(&sc->fq.write_wait);
	spin_unlock_irqrestore(&sc->lock, flags);
}

void stream_fetch_quiesce(struct stream_c *sc)
{
	mutex_lock(&sc->fq.lock);
	WRITE_ONCE(sc->fq.stopped, true);	/* read locklessly: chan_write */
	mutex_unlock(&sc->fq.lock);
	wake_range_waiters(sc);
	spin_lock_irq(&sc->lock);
	wait_event_lock_irq(sc->fq.write_wait, !sc->fq.writing, sc->lock);
	spin_unlock_irq(&sc->lock);
}

void stream_fetch_restart(struct stream_c *sc)
{
	mutex_lock(&sc->fq.lock);
	WRITE_ONCE(sc->fq.stopped, false);
	mutex_unlock(&sc->fq.lock);
}

bool stream_fetch_retire(struct stream_c *sc, struct stream_fetch *f,
			 struct bio_list *waiters)
{
	bool last = false;

	mutex_lock(&sc->fq.lock);
	if (!f->status)
		last = dsm_set_present(sc->md, f->block);
	xa_erase(&sc->fq.fetches, f->block);
	bio_list_merge(waiters, &f->waiters);
	bio_list_init(&f->waiters);
	mutex_unlock(&sc->fq.lock);
	wake_range_waiters(sc);
	if (f->status && f->state != FETCH_FILLING)
		atomic64_inc(&sc->nr_fetch_errors);
	return last;
}

unsigned int stream_fetch_take_waiters(struct stream_c *sc,
				       struct bio_list *out)
{
	struct list_head *lists[] = { &sc->fq.pending, &sc->fq.sent };
	struct stream_fetch *f, *tmp;
	unsigned int n = 0, i;
	LIST_HEAD(dropped);
	struct bio *bio;

	mutex_lock(&sc->fq.lock);
	for (i = 0; i < ARRAY_SIZE(lists); i++)
		list_for_each_entry_safe(f, tmp, lists[i], list) {
			bio_list_for_each(bio, &f->waiters)
				n++;
			bio_list_merge(out, &f->waiters);
			bio_list_init(&f->waiters);
			/* A late reply to it gets -ENOENT. */
			xa_erase(&sc->fq.fetches, f->block);
			list_move_tail(&f->list, &dropped);
		}
	mutex_unlock(&sc->fq.lock);
	wake_range_waiters(sc);
	list_for_each_entry_safe(f, tmp, &dropped, list)
		stream_fetch_free(f);
	return n;
}

unsigned long stream_fetch_oldest(struct stream_c *sc)
{
	struct list_head *lists[] = { &sc->fq.pending, &sc->fq.sent };
	unsigned long now = jiffies, age = 0;
	struct stream_fetch *f;
	int i;

	mutex_lock(&sc->fq.lock);
	for (i = 0; i < ARRAY_SIZE(lists); i++)
		list_for_each_entry(f, lists[i], list)
			if (!bio_list_empty(&f->waiters))
				age = max(age, now - f->queued_at);
	mutex_unlock(&sc->fq.lock);
	return age;
}

/*
 * @f, sent, is being dropped: the other blocks of its request (same file
 * and tag, within max_blocks of it) go back to the head of the queue.
 * Returns how many did; the caller wakes the helper.
 */
static unsigned int __requeue_siblings(struct stream_c *sc,
				       struct stream_fetch *f)
{
	struct stream_file *hf = f->owner;
	struct stream_fetch *g;
	unsigned int n = 0;
	u32 d;
	int dir;

	lockdep_assert_held(&sc->fq.lock);
	for (dir = -1; dir <= 1; dir += 2)
		for (d = 1; d < hf->max_blocks; d++) {
			if (dir < 0 && d > f->block)
				break;
			g = xa_load(&sc->fq.fetches, f->block + dir * (s64)d);
			if (!g || g->state != FETCH_SENT || g->owner != hf ||
			    g->tag != f->tag)
				continue;
			g->state = FETCH_QUEUED;
			g->owner = NULL;
			list_move(&g->list, &sc->fq.pending);
			n++;
		}
	return n;
}

void stream_fetch_expire(struct stream_c *sc, unsigned long limit,
			 struct bio_list *dead)
{
	struct list_head *lists[] = { &sc->fq.pending, &sc->fq.sent };
	struct stream_fetch *f, *tmp;
	unsigned int requeued = 0;
	LIST_HEAD(expired);
	int i;

	mutex_lock(&sc->fq.lock);
	for (i = 0; i < ARRAY_SIZE(lists); i++)
		list_for_each_entry_safe(f, tmp, lists[i], list) {
			if (time_before(jiffies, f->queued_at + limit))
				continue;
			list_move_tail(&f->list, &expired);
			xa_erase(&sc->fq.fetches, f->block);
			/* A readahead fetch nobody waits for goes quietly. */
			if (!bio_list_empty(&f->waiters))
				f->status = BLK_STS_TIMEOUT;
			bio_list_merge(dead, &f->waiters);
			bio_list_init(&f->waiters);
		}
	/*
	 * The other blocks of an expired fetch's request go out again under
	 * a new tag: the helper's reply, which names the expired one too,
	 * will be refused whole.  (A second pass: this moves fetches between
	 * the lists walked above.)  The helper may be asleep in read(2) or
	 * poll(2): wake it, as for any fetch queued.
	 */
	list_for_each_entry(f, &expired, list)
		if (f->state == FETCH_SENT)
			requeued += __requeue_siblings(sc, f);
	if (requeued && sc->fq.helper)
		wake_up_interruptible(&sc->fq.helper->wait);
	mutex_unlock(&sc->fq.lock);
	if (!list_empty(&expired))
		wake_range_waiters(sc);

	list_for_each_entry_safe(f, tmp, &expired, list) {
		if (f->status) {
			DMERR_LIMIT("%s: block %llu not fetched within %lus",
				    stream_name(sc), f->block, limit / HZ);
			atomic64_inc(&sc->nr_fetch_errors);
		}
		stream_fetch_free(f);
	}
}

bool stream_fetch_cancel_idle(struct stream_c *sc)
{
	struct stream_fetch *f, *tmp;
	struct list_head *lists[] = { &sc->fq.pending, &sc->fq.sent };
	LIST_HEAD(idle);
	unsigned int i;
	bool busy;

	mutex_lock(&sc->fq.lock);
	for (i = 0; i < ARRAY_SIZE(lists); i++)
		list_for_each_entry_safe(f, tmp, lists[i], list) {
			if (!bio_list_empty(&f->waiters))
				continue;
			xa_erase(&sc->fq.fetches, f->block);
			list_move_tail(&f->list, &idle);
		}
	busy = !xa_empty(&sc->fq.fetches);
	mutex_unlock(&sc->fq.lock);
	wake_range_waiters(sc);
	list_for_each_entry_safe(f, tmp, &idle, list)
		stream_fetch_free(f);
	return busy;
}

void stream_fetch_destroy(struct stream_c *sc)
{
	struct stream_fetch *f;
	unsigned long idx;

	xa_for_each(&sc->fq.fetches, idx, f) {
		WARN_ON_ONCE(!bio_list_empty(&f->waiters));
		stream_fetch_free(f);
	}
	xa_destroy(&sc->fq.fetches);
}

static int check_image(struct stream_c *sc, u64 image_size,
		       const char *image_id)
{
	u64 size = sc->nr_blocks << (sc->block_shift + SECTOR_SHIFT);
	char have[DSM_IMAGE_ID_LEN];

	dsm_image_id(sc->md, have);
	if (image_size && image_size != size) {
		DMERR("%s: helper's image has %llu bytes, the device %llu: refused",
		      stream_name(sc), image_size, size);
		return -EMEDIUMTYPE;
	}
	if (*image_id && *have && strcmp(image_id, have)) {
		DMERR("%s: helper serves image '%s', the device holds '%s': refused",
		      stream_name(sc), image_id, have);
		return -EMEDIUMTYPE;
	}
	return 0;
}

void stream_chan_register(struct stream_c *sc)
{
	mutex_lock(&stream_chan_lock);
	list_add_tail(&sc->node, &stream_targets);
	mutex_unlock(&stream_chan_lock);
}

/*
 * Break the link between @sc and its helper.  Requests the helper had read
 * go back to the front of the queue.  Caller holds stream_chan_lock.
 */
static void __detach(struct stream_c *sc)
{
	struct stream_file *hf = sc->fq.helper;
	struct stream_fetch *f;

	lockdep_assert_held(&stream_chan_lock);
	if (!hf)
		return;
	sc->fq.dying = true;
	wake_up_interruptible(&hf->wait);
	down_write(&hf->sem);
	mutex_lock(&sc->fq.lock);
	list_for_each_entry(f, &sc->fq.sent, list) {
		f->state = FETCH_QUEUED;
		f->owner = NULL;
	}
	list_splice_init(&sc->fq.sent, &sc->fq.pending);
	sc->fq.helper = NULL;
	WRITE_ONCE(sc->fq.max_blocks, 0);
	sc->fq.dying = false;
	mutex_unlock(&sc->fq.lock);
	hf->sc = NULL;
	up_write(&hf->sem);
}

/*
 * Drop the helper (it re-attaches): after an image update its cached view
 * of the image, such as which blocks read as zero, is stale.
 */
void stream_chan_detach(struct stream_c *sc)
{
	struct stream_file *hf;

	mutex_lock(&stream_chan_lock);
	hf = sc->fq.helper;
	if (hf) {
		__detach(sc);
		wake_up_interruptible(&hf->wait);
	}
	mutex_unlock(&stream_chan_lock);
}

void stream_chan_unregister(struct stream_c *sc)
{
	mutex_lock(&stream_chan_lock);
	list_del_init(&sc->node);
	if (sc->fq.helper) {
		struct stream_file *hf = sc->fq.helper;

		__detach(sc);
		/* Tell the helper its target is gone: POLLHUP, -ENODEV. */
		wake_up_interruptible(&hf->wait);
	}
	mutex_unlock(&stream_chan_lock);
}

static int chan_open(struct inode *inode, struct file *file)
{
	struct stream_file *hf;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	hf = kzalloc(sizeof(*hf), GFP_KERNEL);
	if (!hf)
		return -ENOMEM;
	init_rwsem(&hf->sem);
	init_waitqueue_head(&hf->wait);
	file->private_data = hf;
	return stream_open(inode, file);
}

static int chan_release(struct inode *inode, struct file *file)
{
	struct stream_file *hf = file->private_data;

	mutex_lock(&stream_chan_lock);
	if (hf->sc) {
		struct stream_c *sc = hf->sc;

		__detach(sc);
		DMINFO("%s: helper detached",
		       stream_name(sc));
	}
	mutex_unlock(&stream_chan_lock);
	kfree(hf);
	return 0;
}

static bool target_matches(struct stream_c *sc, const char *id, bool by_uuid)
{
	char name[DM_STREAM_NAME_LEN], uuid[DM_STREAM_UUID_LEN];

	if (dm_copy_name_and_uuid(dm_table_get_md(sc->ti->table), name, uuid))
		return false;
	return !strcmp(by_uuid ? uuid : name, id);
}

/*
 * Copy an ioctl structure that may grow (see uapi/dm-stream.h): its head is
 * magic, version and size; any size from @min (the version 1 layout) up is
 * accepted.
 */
static long copy_ioctl_struct(void *dst, size_t ksize, size_t min,
			      const void __user *argp)
{
	u32 head[3];

	if (copy_from_user(head, argp, sizeof(head)))
		return -EFAULT;
	if (head[0] == DM_STREAM_MAGIC && head[1] != DM_STREAM_VERSION)
		DMERR_LIMIT("%s (pid %d) speaks channel ABI version %u, this module %u: refused",
			    current->comm, task_pid_nr(current), head[1],
			    DM_STREAM_VERSION);
	if (head[0] != DM_STREAM_MAGIC || head[1] != DM_STREAM_VERSION ||
	    head[2] < min || head[2] > PAGE_SIZE)
		return -EPROTO;
	return copy_struct_from_user(dst, ksize, argp, head[2]);
}

/*
 * The part shared by the ioctls naming a target: flags (BY_UUID only) and
 * a terminated, non-empty id of DM_STREAM_UUID_LEN bytes.
 */
static long check_id(u32 flags, const char *id)
{
	if (flags & ~DM_STREAM_ATTACH_BY_UUID)
		return -EINVAL;
	if (strnlen(id, DM_STREAM_UUID_LEN) == DM_STREAM_UUID_LEN || !id[0])
		return -EINVAL;
	return 0;
}

static bool all_zero(const void *p, size_t len)
{
	return !memchr_inv(p, 0, len);
}

/* The target named @id; a reload briefly has two: prefer the live one. */
static struct stream_c *__find_target(const char *id, bool by_uuid)
{
	struct stream_c *sc, *found = NULL;

	lockdep_assert_held(&stream_chan_lock);
	list_for_each_entry(sc, &stream_targets, node) {
		if (!target_matches(sc, id, by_uuid))
			continue;
		if (!found || (sc->active && !found->active))
			found = sc;
	}
	return found;
}

static long chan_attach(struct stream_file *hf, void __user *argp)
{
	struct dm_stream_attach a;
	struct stream_c *found;
	bool by_uuid;
	long r = 0;

	r = copy_ioctl_struct(&a, sizeof(a),
			      offsetofend(struct dm_stream_attach, reserved),
			      argp);
	if (!r)
		r = check_id(a.flags, a.id);
	if (r)
		return r;
	if (!all_zero(a.pad, sizeof(a.pad)) ||
	    !all_zero(a.reserved, sizeof(a.reserved)) || a.reserved3 ||
	    strnlen(a.image_id, sizeof(a.image_id)) == sizeof(a.image_id))
		return -EINVAL;
	by_uuid = a.flags & DM_STREAM_ATTACH_BY_UUID;

	mutex_lock(&stream_chan_lock);
	if (hf->sc) {
		r = -EISCONN;
		goto out;
	}
	found = __find_target(a.id, by_uuid);
	if (!found) {
		r = -ENOENT;
		goto out;
	}
	if (found->fq.helper) {
		r = -EBUSY;
		goto out;
	}
	r = check_image(found, a.image_size, a.image_id);
	if (r)
		goto out;
	a.max_blocks = clamp_t(u32, a.max_blocks, 1,
			       MAX_PAYLOAD >> (found->block_shift +
					       SECTOR_SHIFT));
	down_write(&hf->sem);
	mutex_lock(&found->fq.lock);
	found->fq.helper = hf;
	WRITE_ONCE(found->fq.max_blocks, a.max_blocks);
	hf->sc = found;
	hf->max_blocks = a.max_blocks;
	mutex_unlock(&found->fq.lock);
	up_write(&hf->sem);

	a.block_size = found->block_sectors << SECTOR_SHIFT;
	a.nr_blocks = found->nr_blocks;
	a.nr_present = dsm_nr_present(found->md);
	DMINFO("%s: helper attached",
	       stream_name(found));
	mutex_unlock(&stream_chan_lock);
	/*
	 * No user copy under stream_chan_lock (see chan_read).  Only what
	 * the caller's (possibly older) layout has room for.  A failed copy
	 * leaves the helper attached; its close detaches.
	 */
	if (copy_to_user(argp, &a, min_t(size_t, a.size, sizeof(a))))
		return -EFAULT;
	return 0;
out:
	mutex_unlock(&stream_chan_lock);
	return r;
}

void stream_put(struct stream_c *sc)
{
	if (refcount_dec_and_test(&sc->refs))
		complete(&sc->gone);
}

/*
 * The target named @id (by uuid with @by_uuid), with a reference for the
 * caller to drop with stream_put(): a reference, not stream_chan_lock,
 * keeps it alive while an ioctl works on it.  ERR_PTR(-ENOENT) if there
 * is none; with @active_only, ERR_PTR(-EAGAIN) for an inactive table.
 */
static struct stream_c *get_target(const char *id, bool by_uuid,
				   bool active_only)
{
	struct stream_c *sc;

	mutex_lock(&stream_chan_lock);
	sc = __find_target(id, by_uuid);
	if (!sc)
		sc = ERR_PTR(-ENOENT);
	else if (active_only && !sc->active)
		sc = ERR_PTR(-EAGAIN);
	else
		refcount_inc(&sc->refs);
	mutex_unlock(&stream_chan_lock);
	return sc;
}

static long chan_snap_read(void __user *argp)
{
	struct dm_stream_snap_read a;
	struct stream_c *sc;
	long r;

	r = copy_ioctl_struct(&a, sizeof(a),
			      offsetofend(struct dm_stream_snap_read, reserved),
			      argp);
	if (!r)
		r = check_id(a.flags, a.id);
	if (r)
		return r;
	if (!all_zero(a.pad, sizeof(a.pad)) ||
	    !all_zero(a.reserved, sizeof(a.reserved)))
		return -EINVAL;

	sc = get_target(a.id, a.flags & DM_STREAM_ATTACH_BY_UUID, false);
	if (IS_ERR(sc))
		return PTR_ERR(sc);
	r = stream_snap_read(sc, a.consumer, a.gen, a.block,
			     u64_to_user_ptr(a.buf), a.len);
	stream_put(sc);
	return r;
}

static long chan_fetch(void __user *argp)
{
	struct dm_stream_fetch a;
	struct stream_c *sc;
	long r;

	r = copy_ioctl_struct(&a, sizeof(a),
			      offsetofend(struct dm_stream_fetch, reserved),
			      argp);
	if (r)
		return r;
	r = check_id(a.flags & ~DM_STREAM_FETCH_NOWAIT, a.id);
	if (r)
		return r;
	if (!all_zero(a.pad, sizeof(a.pad)) ||
	    !all_zero(a.reserved, sizeof(a.reserved)) ||
	    !a.nr_blocks || a.nr_blocks > DM_STREAM_FETCH_MAX)
		return -EINVAL;

	/*
	 * The wait ends at the latest at postsuspend
	 * (stream_fetch_quiesce()), which comes before the dtr waits for
	 * the reference.  An inactive table gets no helper and no waker:
	 * nothing to do.
	 */
	sc = get_target(a.id, a.flags & DM_STREAM_ATTACH_BY_UUID, true);
	if (IS_ERR(sc))
		return PTR_ERR(sc);
	if (a.block >= sc->nr_blocks || a.nr_blocks > sc->nr_blocks - a.block)
		r = -ERANGE;
	else
		r = stream_fetch_range(sc, a.block, a.nr_blocks,
				       a.flags & DM_STREAM_FETCH_NOWAIT,
				       &a.nr_absent);
	stream_put(sc);
	if (r)
		return r;
	if (put_user(a.nr_absent,
		     (__u64 __user *)(argp + offsetof(struct dm_stream_fetch,
						      nr_absent))))
		return -EFAULT;
	return 0;
}

static long chan_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct stream_file *hf = file->private_data;

	/* Type and number only: the structures may grow (uapi header). */
	if (_IOC_TYPE(cmd) != _IOC_TYPE(DM_STREAM_IOC_ATTACH))
		return -ENOTTY;
	switch (_IOC_NR(cmd)) {
	case _IOC_NR(DM_STREAM_IOC_ATTACH):
		return chan_attach(hf, (void __user *)arg);
	case _IOC_NR(DM_STREAM_IOC_SNAP_READ):
		return chan_snap_read((void __user *)arg);
	case _IOC_NR(DM_STREAM_IOC_FETCH):
		return chan_fetch((void __user *)arg);
	default:
		return -ENOTTY;
	}
}

static bool has_requests(struct stream_c *sc)
{
	return !list_empty_careful(&sc->fq.pending) || READ_ONCE(sc->fq.dying);
}

/* Put the @n requests of @reqs that @hf was just given back in the queue. */
static void requeue_sent(struct stream_c *sc, struct stream_file *hf,
			 const struct dm_stream_request *reqs, size_t n)
{
	struct stream_fetch *f;
	size_t i;

	u32 j;

	mutex_lock(&sc->fq.lock);
	for (i = n; i-- > 0; ) {
		for (j = reqs[i].nr_blocks; j-- > 0; ) {
			f = xa_load(&sc->fq.fetches, reqs[i].block + j);
			if (!f || f->state != FETCH_SENT || f->owner != hf ||
			    f->tag != reqs[i].tag)
				continue;
			f->state = FETCH_QUEUED;
			f->owner = NULL;
			list_move(&f->list, &sc->fq.pending);
		}
	}
	mutex_unlock(&sc->fq.lock);
}

/* Move queued fetch @f to the sent list as part of request @tag. */
static void __send_fetch(struct stream_c *sc, struct stream_file *hf,
			 struct stream_fetch *f, u64 tag)
{
	lockdep_assert_held(&sc->fq.lock);
	f->state = FETCH_SENT;
	f->owner = hf;
	f->tag = tag;
	/*
	 * A background fetch nobody waits for (the fill's) has no reader's
	 * deadline to keep: fetch_timeout counts from now, not from when
	 * it was queued behind the rest of its chunk.
	 */
	if (f->background && bio_list_empty(&f->waiters))
		f->queued_at = jiffies;
	list_move_tail(&f->list, &sc->fq.sent);
}

/* The queued fetch of @block, if any. */
static struct stream_fetch *__queued(struct stream_c *sc, u64 block)
{
	struct stream_fetch *f = xa_load(&sc->fq.fetches, block);

	lockdep_assert_held(&sc->fq.lock);
	return f && f->state == FETCH_QUEUED ? f : NULL;
}

/*
 * Build one request from the first queued fetch and the queued fetches
 * adjacent to it, at most hf->max_blocks of them.
 */
static void __make_request(struct stream_c *sc, struct stream_file *hf,
			   struct dm_stream_request *req)
{
	struct stream_fetch *f = list_first_entry(&sc->fq.pending,
						  struct stream_fetch, list);
	u64 tag = ++sc->fq.next_tag, first = f->block;
	bool background = f->background;
	u32 n = 1;

	lockdep_assert_held(&sc->fq.lock);
	__send_fetch(sc, hf, f, tag);
	while (n < hf->max_blocks && first > 0 &&
	       (f = __queued(sc, first - 1))) {
		__send_fetch(sc, hf, f, tag);
		background &= f->background;
		first--;
		n++;
	}
	while (n < hf->max_blocks && (f = __queued(sc, first + n))) {
		__send_fetch(sc, hf, f, tag);
		background &= f->background;
		n++;
	}
	memset(req, 0, sizeof(*req));
	req->magic = DM_STREAM_MAGIC;
	req->version = DM_STREAM_VERSION;
	req->size = sizeof(*req);
	req->type = DM_STREAM_REQ_FETCH;
	req->flags = background ? DM_STREAM_REQ_BACKGROUND : 0;
	req->tag = tag;
	req->block = first;
	req->nr_blocks = n;
}

static ssize_t chan_read(struct file *file, char __user *buf, size_t count,
			 loff_t *ppos)
{
	struct stream_file *hf = file->private_data;
	struct dm_stream_request *reqs;
	struct stream_c *sc;
	size_t max = min_t(size_t, count / sizeof(*reqs), MAX_BATCH);
	size_t n = 0;
	ssize_t r;

	if (!max)
		return -EINVAL;
	reqs = kcalloc(max, sizeof(*reqs), GFP_KERNEL);
	if (!reqs)
		return -ENOMEM;

	down_read(&hf->sem);
	sc = hf->sc;
	if (!sc) {
		r = -ENODEV;
		goto out;
	}
	for (;;) {
		mutex_lock(&sc->fq.lock);
		while (n < max && !list_empty(&sc->fq.pending))
			__make_request(sc, hf, &reqs[n++]);
		mutex_unlock(&sc->fq.lock);
		if (n)
			break;
		if (file->f_flags & O_NONBLOCK) {
			r = -EAGAIN;
			goto out;
		}
		/* sem stays held: __detach sets dying before down_write. */
		r = wait_event_interruptible(hf->wait, has_requests(sc));
		if (r)
			goto out;
		if (READ_ONCE(sc->fq.dying)) {
			r = -ENODEV;
			goto out;
		}
	}
	/*
	 * No user copy under hf->sem: __detach waits for it while holding
	 * stream_chan_lock, so a helper faulting here would stall every
	 * stream device's remove and resume.  The requests are FETCH_SENT to
	 * @hf; a detach meanwhile requeues them itself.
	 */
	up_read(&hf->sem);
	r = n * sizeof(*reqs);
	if (copy_to_user(buf, reqs, r)) {
		/* Never delivered: back to the front of the queue. */
		down_read(&hf->sem);
		if (hf->sc == sc)
			requeue_sent(sc, hf, reqs, n);
		up_read(&hf->sem);
		r = -EFAULT;
	}
	kfree(reqs);
	return r;
out:
	up_read(&hf->sem);
	kfree(reqs);
	return r;
}

/*
 * The data write of one reply: its fetches (adjacent blocks, in order)
 * and the payload pages (NULL pages: zero blocks, written from the zero
 * page).  Copied pages are ours and the write frees them; pinned pages are
 * the helper's, and the writer waits on @done, then unpins them.
 */
struct range_write {
	struct page **pages;
	unsigned int nr_pages;
	bool pinned;
	/*
	 * Pinned: the writer waits on @done; the writer and the end hold a
	 * reference each, and the last one unpins and frees (a writer that
	 * was killed while waiting leaves it to the end).
	 */
	refcount_t refs;
	struct completion done;
	unsigned int nr;
	struct stream_fetch *f[];
};

static void free_page_array(struct page **pages, unsigned int nr)
{
	unsigned int i;

	if (!pages)
		return;
	for (i = 0; i < nr; i++)
		if (pages[i])
			__free_page(pages[i]);
	kfree(pages);
}

static void release_payload(struct page **pages, unsigned int nr, bool pinned)
{
	if (!pinned) {
		free_page_array(pages, nr);
		return;
	}
	unpin_user_pages(pages, nr);
	kfree(pages);
}

static void free_range_write(struct range_write *w)
{
	if (w->pages)
		release_payload(w->pages, w->nr_pages, w->pinned);
	kfree(w);
}

/*
 * Each fetch completes on its own; nothing touches w->f[i] after.  The
 * last one completes last, after @w is handed back or freed: once every
 * fetch of a target is done, stream_fetch_quiesce() lets its dtr (and
 * then rmmod) go on, so nothing of ours may run after that but the
 * return.
 */
static void range_write_endio(struct bio *bio)
{
	struct range_write *w = bio->bi_private;
	blk_status_t status = bio->bi_status;
	struct stream_fetch *last = w->f[w->nr - 1];
	unsigned int i;

	bio_put(bio);
	for (i = 0; i + 1 < w->nr; i++) {
		w->f[i]->status = status;
		stream_fetch_io_done(w->f[i]);
	}
	last->status = status;
	if (!w->pinned) {
		free_range_write(w);
	} else {
		/*
		 * Unpinned before the writer is woken: its write(2) returns
		 * with the helper's pages released, whoever frees @w.
		 */
		release_payload(w->pages, w->nr_pages, true);
		w->pages = NULL;
		complete(&w->done);
		if (refcount_dec_and_test(&w->refs))
			free_range_write(w);
	}
	stream_fetch_io_done(last);
}

/*
 * Pages holding a @len byte payload copied from @src.  Called without
 * hf->sem (see chan_read).
 */
static struct page **copy_payload(const char __user *src, size_t len)
{
	unsigned int i, nr = len >> PAGE_SHIFT;
	struct page **pages;

	pages = kcalloc(nr, sizeof(*pages), GFP_KERNEL);
	if (!pages)
		return ERR_PTR(-ENOMEM);
	for (i = 0; i < nr; i++) {
		pages[i] = alloc_page(GFP_KERNEL);
		if (!pages[i]) {
			free_page_array(pages, nr);
			return ERR_PTR(-ENOMEM);
		}
		if (copy_from_user(page_address(pages[i]),
				   src + i * PAGE_SIZE, PAGE_SIZE)) {
			free_page_array(pages, nr);
			return ERR_PTR(-EFAULT);
		}
	}
	return pages;
}

/*
 * The helper's pages holding a @len byte payload at @src, which starts on
 * a page boundary, pinned for the data write to read them in place.
 * Called without hf->sem, like copy_payload (streamd locks its memory, so
 * this does not fault in practice).
 */
static struct page **pin_payload(const char __user *src, size_t len)
{
	unsigned int nr = len >> PAGE_SHIFT;
	struct page **pages;
	int n;

	pages = kcalloc(nr, sizeof(*pages), GFP_KERNEL);
	if (!pages)
		return ERR_PTR(-ENOMEM);
	n = pin_user_pages_fast((unsigned long)src, nr, 0, pages);
	if (n == nr)
		return pages;
	if (n > 0)
		unpin_user_pages(pages, n);
	kfree(pages);
	return ERR_PTR(n < 0 ? n : -EFAULT);
}

/*
 * Move the reads among @waiters that lie wholly within the reply's
 * blocks [@first, @first + @nr) to @reads.  A read over several blocks
 * waits on the fetch of its first absent one; unless this reply has all
 * of them, it stays, and goes back through the parked path when that
 * fetch retires.
 */
static void take_reads(struct stream_c *sc, struct bio_list *waiters,
		       struct bio_list *reads, u64 first, u32 nr)
{
	struct bio_list keep = BIO_EMPTY_LIST;
	struct bio *bio;
	sector_t s;

	while ((bio = bio_list_pop(waiters))) {
		s = dm_target_offset(sc->ti, bio->bi_iter.bi_sector);
		if (bio_op(bio) == REQ_OP_READ &&
		    s >> sc->block_shift >= first &&
		    (s + bio_sectors(bio) - 1) >> sc->block_shift < first + nr)
			bio_list_add(reads, bio);
		else
			bio_list_add(&keep, bio);
	}
	*waiters = keep;
}

/*
 * Take the fetches of @rep's blocks for writing: every one must be sent
 * to @hf under @rep->tag.  Returns 0 with them in @w, FETCH_WRITING, or
 * -ENOENT / -EAGAIN with nothing changed.  With @reads, the reads parked
 * on them move there, to be served from the reply.
 */
static int take_range(struct stream_c *sc, struct stream_file *hf,
		      const struct dm_stream_reply *rep, struct range_write *w,
		      struct bio_list *reads)
{
	struct stream_fetch *f;
	unsigned int i;

	mutex_lock(&sc->fq.lock);
	for (i = 0; i < rep->nr_blocks; i++) {
		f = xa_load(&sc->fq.fetches, rep->block + i);
		if (!f || f->state != FETCH_SENT || f->owner != hf ||
		    f->tag != rep->tag) {
			mutex_unlock(&sc->fq.lock);
			return -ENOENT;
		}
		w->f[i] = f;
	}
	if (sc->fq.stopped) {
		/* Suspended: nothing is written; the request stays sent. */
		mutex_unlock(&sc->fq.lock);
		return -EAGAIN;
	}
	/* Ours now: no timeout or detach can touch a FETCH_WRITING entry. */
	for (i = 0; i < rep->nr_blocks; i++) {
		f = w->f[i];
		f->state = FETCH_WRITING;
		f->owner = NULL;
		list_del_init(&f->list);
		if (reads)
			take_reads(sc, &f->waiters, reads, rep->block,
				   rep->nr_blocks);
	}
	w->nr = rep->nr_blocks;
	spin_lock_irq(&sc->lock);
	sc->fq.writing += w->nr;
	spin_unlock_irq(&sc->lock);
	mutex_unlock(&sc->fq.lock);
	return 0;
}

/*
 * Complete a read parked on a block of the reply starting at @first from
 * the reply itself (@pages, or zeroes when NULL): its data is the image's,
 * whether or not the data device has it yet, and it saves a read of the
 * data device after the write.  The bio is within the reply's blocks
 * (take_reads()).
 */
static void serve_read(struct stream_c *sc, struct bio *bio,
		       struct page **pages, u64 first)
{
	size_t off = (dm_target_offset(sc->ti, bio->bi_iter.bi_sector) -
		      (first << sc->block_shift)) << SECTOR_SHIFT;
	struct bvec_iter iter;
	struct bio_vec bv;
	unsigned int done, n;

	if (!pages) {
		zero_fill_bio(bio);
		return;
	}
	bio_for_each_segment(bv, bio, iter) {
		for (done = 0; done < bv.bv_len; done += n, off += n) {
			n = min_t(unsigned int, bv.bv_len - done,
				  PAGE_SIZE - offset_in_page(off));
			memcpy_page(bv.bv_page, bv.bv_offset + done,
				    pages[off >> PAGE_SHIFT],
				    offset_in_page(off), n);
		}
	}
}

static ssize_t chan_write(struct file *file, const char __user *buf,
			  size_t count, loff_t *ppos)
{
	struct stream_file *hf = file->private_data;
	struct page **payload = NULL;
	struct bio_list reads = BIO_EMPTY_LIST;
	struct range_write *w = NULL;
	struct dm_stream_reply rep;
	struct stream_c *sc;
	unsigned int i, nr_pages;
	struct bio *bio, *rbio;
	bool zero, pinned;
	size_t bsize;
	ssize_t r;

	if (count < sizeof(rep))
		return -EINVAL;
	if (copy_from_user(&rep, buf, sizeof(rep)))
		return -EFAULT;
	if (rep.magic != DM_STREAM_MAGIC || rep.version != DM_STREAM_VERSION ||
	    rep.size != sizeof(rep))
		return -EPROTO;
	if (rep.flags & ~DM_STREAM_REPLY_ZERO || rep.reserved || !rep.nr_blocks)
		return -EINVAL;
	zero = rep.flags & DM_STREAM_REPLY_ZERO;
	if (rep.len > MAX_PAYLOAD || !PAGE_ALIGNED(rep.len) ||
	    count != sizeof(rep) + rep.len)
		return -EINVAL;
	/*
	 * The data before any lock: see chan_read.  Not for a reply that
	 * would be refused anyway (streamd resends refused replies every
	 * 100 ms while the device is suspended): a hint, checked again
	 * under the locks below.
	 */
	down_read(&hf->sem);
	sc = hf->sc;
	r = !sc ? -ENODEV : READ_ONCE(sc->fq.stopped) ? -EAGAIN : 0;
	up_read(&hf->sem);
	if (r)
		return r;
	pinned = rep.len && PAGE_ALIGNED(buf + sizeof(rep));
	if (pinned) {
		payload = pin_payload(buf + sizeof(rep), rep.len);
		/* Memory we may read but not pin (secretmem, PFNMAP): copied. */
		if (PTR_ERR_OR_ZERO(payload) == -EFAULT)
			pinned = false;
	}
	if (rep.len && !pinned)
		payload = copy_payload(buf + sizeof(rep), rep.len);
	if (IS_ERR(payload))
		return PTR_ERR(payload);

	down_read(&hf->sem);
	sc = hf->sc;
	if (!sc) {
		r = -ENODEV;
		goto out;
	}
	bsize = (size_t)sc->block_sectors << SECTOR_SHIFT;
	/* (count == sizeof(rep) + rep.len: checked before the copy) */
	if (rep.error > 0 || rep.error < -MAX_ERRNO ||
	    rep.nr_blocks > hf->max_blocks ||
	    rep.len != ((rep.error || zero) ? 0 : rep.nr_blocks * bsize)) {
		r = -EINVAL;
		goto out;
	}
	if (rep.block >= sc->nr_blocks ||
	    rep.nr_blocks > sc->nr_blocks - rep.block) {
		r = -ENOENT;
		goto out;
	}
	w = kzalloc(struct_size(w, f, rep.nr_blocks), GFP_KERNEL);
	if (!w) {
		r = -ENOMEM;
		goto out;
	}
	r = take_range(sc, hf, &rep, w, rep.error ? NULL : &reads);
	if (r)
		goto out;

	if (rep.error) {
		DMERR_LIMIT("%s: helper could not fetch blocks %llu+%u: %d",
			    stream_name(sc), rep.block, rep.nr_blocks,
			    rep.error);
		for (i = 0; i < w->nr; i++) {
			w->f[i]->status = BLK_STS_IOERR;
			stream_fetch_io_done(w->f[i]);
		}
		r = count;
		goto out;
	}

	nr_pages = (rep.nr_blocks * bsize) >> PAGE_SHIFT;
	w->pages = payload;
	w->nr_pages = payload ? nr_pages : 0;
	w->pinned = pinned;
	if (pinned) {
		refcount_set(&w->refs, 2);
		init_completion(&w->done);
	}
	payload = NULL;
	bio = bio_alloc(sc->data_dev->bdev, nr_pages,
			REQ_OP_WRITE | (pinned ? REQ_SYNC : 0), GFP_NOIO);
	bio->bi_iter.bi_sector = rep.block << sc->block_shift;
	for (i = 0; i < nr_pages; i++)
		__bio_add_page(bio, w->pages ? w->pages[i] : ZERO_PAGE(0),
			       PAGE_SIZE, 0);
	bio->bi_private = w;
	bio->bi_end_io = range_write_endio;
	atomic64_add(rep.nr_blocks, &sc->nr_fetched);
	if (zero)
		atomic64_add(rep.nr_blocks, &sc->nr_zero);
	/* Before the write: its end frees copied pages. */
	while ((rbio = bio_list_pop(&reads))) {
		serve_read(sc, rbio, w->pages, rep.block);
		atomic_dec(&sc->parked);
		bio_endio(rbio);
	}
	submit_bio(bio);
	r = count;
	if (pinned) {
		/*
		 * The helper may reuse its buffer once we return.  Not under
		 * hf->sem: a detach need not wait for the disk.  The fetches
		 * are FETCH_WRITING, out of everyone else's reach.
		 */
		up_read(&hf->sem);
		/*
		 * Killable: a dying helper never reuses its buffer.
		 * Freezable: a stalled data device must not fail a system
		 * suspend (no lock is held here, and the bio needs nothing
		 * from this task).
		 */
		wait_for_completion_state(&w->done,
					  TASK_KILLABLE | TASK_FREEZABLE);
		if (refcount_dec_and_test(&w->refs))
			free_range_write(w);
		return r;
	}
	w = NULL;
out:
	up_read(&hf->sem);
	if (payload)
		release_payload(payload, rep.len >> PAGE_SHIFT, pinned);
	if (w)
		free_range_write(w);
	return r;
}

static __poll_t chan_poll(struct file *file, poll_table *wait)
{
	struct stream_file *hf = file->private_data;
	__poll_t mask = 0;

	poll_wait(file, &hf->wait, wait);
	down_read(&hf->sem);
	if (!hf->sc)
		mask = EPOLLHUP | EPOLLERR;
	else if (!list_empty_careful(&hf->sc->fq.pending))
		mask = EPOLLIN | EPOLLRDNORM;
	up_read(&hf->sem);
	return mask;
}

static const struct file_operations chan_fops = {
	.owner = THIS_MODULE,
	.open = chan_open,
	.release = chan_release,
	.read = chan_read,
	.write = chan_write,
	.poll = chan_poll,
	.unlocked_ioctl = chan_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static struct miscdevice chan_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = DM_STREAM_DEVNAME,
	.fops = &chan_fops,
	.mode = 0600,
};

int stream_chan_init(void)
{
	int r;

	fetch_cache = KMEM_CACHE(stream_fetch, 0);
	if (!fetch_cache)
		return -ENOMEM;
	r = misc_register(&chan_misc);
	if (r)
		kmem_cache_destroy(fetch_cache);
	return r;
}

void stream_chan_exit(void)
{
	misc_deregister(&chan_misc);
	kmem_cache_destroy(fetch_cache);
}
