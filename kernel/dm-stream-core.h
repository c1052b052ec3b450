/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-stream: state shared by the target (dm-stream-target.c) and the helper
 * channel (dm-stream-chan.c).  Not part of any ABI.
 */
#ifndef DM_STREAM_CORE_H
#define DM_STREAM_CORE_H

#include <linux/bio.h>
#include <linux/completion.h>
#include <linux/refcount.h>
#include <linux/device-mapper.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/rwsem.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include "dm-stream-metadata.h"
#include "dm-stream-snap.h"
#include "dm-stream-chan.h"

/* Data block size bounds, in sectors: the table's and a reply's payload. */
#define MIN_BLOCK_SECTORS	8
#define MAX_BLOCK_SECTORS	2048

enum stream_mode {
	STREAM_MODE_RW,
	STREAM_MODE_RO,		/* metadata cannot be written: no new state */
	STREAM_MODE_FAIL,	/* metadata unusable: all I/O fails */
};

/*
 * The target object.  Lifetime invariants:
 *   - dm core holds it from ctr to dtr.  Outside that, only a snapshot
 *     reader holds it (@refs, taken under stream_chan_lock while the
 *     target is registered); the dtr unregisters it, drops its own
 *     reference and waits for the readers.
 *   - A helper file is linked to it, and unlinked, under stream_chan_lock
 *     (dm-stream-chan.c); the dtr unlinks it before anything is freed.
 *   - Every fetch with waiters is waited for at postsuspend: dm core waits
 *     for in-flight bios, parked ones included, unless the suspend is
 *     noflush, in which case presuspend requeues the parked ones.  So
 *     after postsuspend no fetch has waiters and no bio is in the worker.
 *   - Only the worker (and the waker, on the same single-threaded
 *     workqueue) retires or expires fetches; a fetch being written
 *     (FETCH_WRITING, FETCH_FILLING) comes back to it through
 *     sc->completed; idle fetches are dropped while suspended, and readahead
 *     fetches by fetch_timeout.
 */
struct stream_c {
	struct dm_target *ti;
	/*
	 * Users outside the dm core's own references (snapshot readers found
	 * through the channel) take a reference under stream_chan_lock while
	 * the target is registered; the dtr unregisters, drops the initial
	 * reference and waits for @gone.
	 */
	refcount_t refs;
	struct completion gone;
	struct dm_dev *metadata_dev;
	struct dm_dev *data_dev;
	struct dm_stream_metadata *md;

	u32 block_sectors;
	unsigned int block_shift;	/* log2(block_sectors) */
	u64 nr_blocks;
	unsigned int fetch_timeout;	/* seconds, 0 = forever */
	u32 intent_sectors;		/* table: write-intent region, 0 off */
	bool intent_set;		/* ... given in the table */
	u32 intent_shift;		/* log2 blocks, or DSM_INTENT_OFF */
	bool discard_zeroes;		/* data dev can write zeroes */

	enum stream_mode mode;		/* READ_ONCE; set_mode() changes it */
	bool requeue;			/* noflush suspend: requeue misses */
	bool data_flush_failed;		/* set by end_io, acted on by the worker */

	/*
	 * Guards deferred, deferred_flush, deferred_dirty, flush_completions
	 * and completed.
	 * Taken from bio completion (interrupt) context: irqsave.
	 */
	spinlock_t lock;
	struct bio_list deferred;	/* bios needing the worker */
	struct bio_list deferred_flush;	/* issue after the next commit */
	struct bio_list deferred_dirty;	/* writes waiting for their dirty bits */
	struct bio_list flush_completions; /* complete after next commit */
	struct bio_list starved;	/* parked bios that found no memory */
	struct list_head completed;	/* fetches whose I/O ended */

	struct stream_fetchq fq;	/* dm-stream-chan.c */

	struct workqueue_struct *wq;
	struct work_struct worker;
	struct delayed_work waker;

	/*
	 * Held across a message that needs a suspended device and by
	 * resume/postsuspend while they change @active, so that such a
	 * message never runs on a live device.  Taken before snap_lock.
	 */
	struct mutex quiesce_lock;
	/* resumed; changed under quiesce_lock and stream_chan_lock */
	bool active;
	struct list_head node;		/* stream_targets */

	struct stream_snap snap;	/* dm-stream-snap.c */

	/*
	 * Sequential readahead.  ra_max (blocks, 0: off) is the table's;
	 * ra_lock guards ra_last, ra_start, ra_end and ra_size: the block
	 * the last read miss was in, where the running sequence of windows
	 * starts and ends, and the size of the next window.
	 * ra_mark is the first block of the last window queued (-1: none);
	 * the first read reaching it (seen in map) takes it and sets ra_hit,
	 * and the worker queues the next window, so readahead stays a
	 * window ahead of a sequential reader.
	 */
	spinlock_t ra_lock;		/* see above; never with others */
	u32 ra_sectors;			/* table: readahead, sectors */
	bool ra_set;			/* ... given in the table */
	u32 ra_max;
	u32 ra_size;
	u64 ra_last, ra_start, ra_end;
	atomic64_t ra_mark;
	bool ra_hit;			/* map -> worker: READ_ONCE */
	/* map -> worker: commit, a write-intent region is wanted ahead */
	bool commit_soon;

	atomic_t parked;		/* bios waiting for a block */
	atomic64_t nr_fetched;
	atomic64_t nr_zero;
	atomic64_t nr_fetch_errors;
};

static inline const char *stream_name(struct stream_c *sc)
{
	return dm_device_name(dm_table_get_md(sc->ti->table));
}

#endif
