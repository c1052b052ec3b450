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

enum stream_mode {
	STREAM_MODE_RW,
	STREAM_MODE_RO,		/* metadata cannot be written: no new state */
	STREAM_MODE_FAIL,	/* metadata unusable: all I/O fails */
};

enum stream_fetch_state {
	FETCH_QUEUED,		/* on sc->pending, waiting for a helper */
	FETCH_SENT,		/* on sc->sent, read by helper @owner */
	FETCH_WRITING,		/* data being written to the data device */
	FETCH_FILLING,		/* whole-block write in flight, no fetch */
};

struct stream_file;

/*
 * One block being made present, by a fetch or by a whole-block write.
 * Lives in sc->fetches (indexed by block) from creation until the worker
 * retires it; I/O to the block meanwhile waits on @waiters.
 */
struct stream_fetch {
	struct stream_c *sc;
	u64 block;
	u64 tag;
	enum stream_fetch_state state;
	struct stream_file *owner;	/* FETCH_SENT only */
	unsigned long queued_at;	/* jiffies */
	struct list_head list;		/* pending/sent, then completed */
	struct bio_list waiters;
	blk_status_t status;
	bool zero;
	struct page **pages;		/* FETCH_WRITING payload */
	unsigned int nr_pages;
};

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
	bool discard_zeroes;		/* data dev can write zeroes */

	enum stream_mode mode;		/* READ_ONCE; set_mode() changes it */
	bool requeue;			/* noflush suspend: requeue misses */

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

	/*
	 * Guards fetches, pending, sent, next_tag and helper.  Process
	 * context only.  helper is also changed only under stream_chan_lock.
	 */
	struct mutex fetch_lock;
	struct xarray fetches;
	struct list_head pending;
	struct list_head sent;
	u64 next_tag;
	struct stream_file *helper;
	bool dying;

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
	u64 snap_cut[DSM_MAX_CONSUMERS];	/* snapshot ids this table cut */
	struct list_head node;		/* stream_targets */

	/*
	 * Point-in-time snapshots (see "Snapshots" in dm-stream-target.c).
	 * snap_lock guards copies, copy_bytes and changes to undrained[]
	 * bits; it is taken before the metadata's commit_lock.  The
	 * undrained[] pointers are set while suspended and never freed
	 * before the dtr; map tests their bits locklessly.
	 */
	struct mutex snap_lock;
	unsigned long *undrained[DSM_MAX_CONSUMERS];
	struct xarray copies;		/* block * 4 + consumer -> copy */
	u64 copy_bytes;
	u64 copy_budget;		/* bytes, from the table */

	/* Background fill switch, read by streamd through the status. */
	bool fill_on;			/* READ_ONCE */
	u64 fill_rate;			/* bytes/s, 0 = unlimited */

	atomic_t parked;		/* bios waiting for a block */
	atomic64_t nr_fetched;
	atomic64_t nr_zero;
	atomic64_t nr_fetch_errors;
};

/* An open /dev/dm-stream. */
struct stream_file {
	/* Held for read by file operations using @sc, for write to change it. */
	struct rw_semaphore sem;
	struct stream_c *sc;
	wait_queue_head_t wait;		/* requests pending or target gone */
};

/* dm-stream-target.c */
void stream_fetch_io_done(struct stream_c *sc, struct stream_fetch *f);
int stream_snap_read(struct stream_c *sc, unsigned int c, u64 gen, u64 block,
		     void __user *buf, u32 len);
void stream_wake_worker(struct stream_c *sc);
int stream_check_image(struct stream_c *sc, u64 image_size,
		       const char *image_id);

/* dm-stream-chan.c */
extern struct mutex stream_chan_lock;
int stream_chan_init(void);
void stream_chan_exit(void);
void stream_chan_register(struct stream_c *sc);
void stream_put(struct stream_c *sc);
void stream_chan_unregister(struct stream_c *sc);
void stream_chan_detach(struct stream_c *sc);
void __stream_chan_kick(struct stream_c *sc);

#endif
