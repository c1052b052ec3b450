/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-stream fetch queue and helper channel (/dev/dm-stream): one home for
 * the state machine of a block being made present, from the miss that
 * parks a bio to the retirement of its fetch.  Called by the target; calls
 * only into the metadata and the snapshot reader, never back into the
 * target (completions are handed over on sc->completed and the worker is
 * queued on sc->wq).
 */
#ifndef DM_STREAM_CHAN_H
#define DM_STREAM_CHAN_H

#include <linux/bio.h>
#include <linux/ioprio.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/rwsem.h>
#include <linux/wait.h>
#include <linux/xarray.h>

struct stream_c;
struct stream_file;

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
 * retires it; I/O to the block meanwhile waits on @waiters (none for a
 * readahead fetch).  Adjacent fetches sent in one request share @tag.
 */
struct stream_fetch {
	struct stream_c *sc;
	u64 block;
	u64 tag;
	enum stream_fetch_state state;
	struct stream_file *owner;	/* FETCH_SENT only */
	unsigned long queued_at;	/* jiffies */
	/*
	 * pending/sent, then completed; FETCH_FILLING: the other fills of
	 * the same write (a circle, see stream_fetch_fill_run())
	 */
	struct list_head list;
	struct bio_list waiters;
	blk_status_t status;
	/*
	 * Only background reads (stream_bio_background()) wait for it: its
	 * request carries DM_STREAM_REQ_BACKGROUND.  Under fq.lock.
	 */
	bool background;
};

/*
 * The fetch queue of a target.  lock guards every field and every fetch's
 * state, owner, list and waiters; process context only.  helper is also
 * changed only under stream_chan_lock.
 */
struct stream_fetchq {
	struct mutex lock;		/* see above */
	struct xarray fetches;		/* block -> struct stream_fetch */
	struct list_head pending;	/* FETCH_QUEUED */
	struct list_head sent;		/* FETCH_SENT */
	u64 next_tag;
	struct stream_file *helper;
	/* helper->max_blocks, 0 without one; read locklessly by map */
	u32 max_blocks;
	bool dying;			/* helper being detached */
	bool stopped;			/* suspended: replies are refused */
	/* Helper replies being written; under the target's sc->lock. */
	unsigned int writing;
	wait_queue_head_t write_wait;
	/*
	 * DM_STREAM_IOC_FETCH callers waiting for a range; woken when a
	 * fetch leaves @fetches and when the queue stops.
	 */
	wait_queue_head_t range_wait;
};

/* An open /dev/dm-stream. */
struct stream_file {
	/* Held for read by file operations using @sc, for write to change it. */
	struct rw_semaphore sem;
	struct stream_c *sc;
	u32 max_blocks;			/* per request; set with @sc */
	wait_queue_head_t wait;		/* requests pending or target gone */
};

extern struct mutex stream_chan_lock;
int stream_chan_init(void);
void stream_chan_exit(void);

/* Target lifetime: make it findable by helpers, forget it, drop them. */
void stream_chan_register(struct stream_c *sc);
void stream_chan_unregister(struct stream_c *sc);
void stream_chan_detach(struct stream_c *sc);
void stream_put(struct stream_c *sc);

void stream_fetchq_init(struct stream_fetchq *fq);
/*
 * postsuspend/dtr: refuse helper replies from now on and wait for the ones
 * being written to complete (they are not bios dm core waits for).
 * restart: resume.
 */
void stream_fetch_quiesce(struct stream_c *sc);
void stream_fetch_restart(struct stream_c *sc);
/* dtr: free what is left (no waiters: see stream_postsuspend()). */
void stream_fetch_destroy(struct stream_c *sc);

enum stream_park {
	STREAM_PARK_PRESENT,	/* present after all: map it */
	STREAM_PARK_REQUEUE,	/* noflush suspend in progress */
	STREAM_PARK_WAITING,	/* parked behind the block's fetch */
	STREAM_PARK_FILL,	/* a fill was started: *@fill, submit the bio */
	STREAM_PARK_NOMEM,	/* no memory: retry later */
};

/*
 * Any context: @bio is a background read, issued with the idle I/O
 * priority class (streamd's fill).  Its fetch is a background one, and it
 * starts no readahead.
 */
static inline bool stream_bio_background(struct bio *bio)
{
	return bio_op(bio) == REQ_OP_READ &&
		IOPRIO_PRIO_CLASS(bio_prio(bio)) == IOPRIO_CLASS_IDLE;
}

/*
 * Worker, or map for a read: park @bio (to blocks [@block, @block + @nr),
 * of which it waits for the first absent one) behind that block's fetch,
 * queueing one for the helper if there is none, and one for each absent
 * block after it, so that they go in one range; STREAM_PARK_PRESENT when
 * all @nr are present.  The fetches' age (fetch_timeout) counts from
 * @since, when @bio was first parked.  With @fill (a whole-block write a
 * snapshot does not need; @nr 1) start a fill instead, taking over a
 * queued readahead fetch if there is one.
 */
enum stream_park stream_fetch_park(struct stream_c *sc, struct bio *bio,
				   u64 block, unsigned int nr, bool fill,
				   unsigned long since,
				   struct stream_fetch **f);
/*
 * Worker: readahead.  Queue a fetch, with nobody waiting, for every block
 * of [@first, @first + @count) that is absent and not being made present
 * already.  Returns how many were queued; fewer (maybe none) when
 * suspended or out of memory, which only costs a later miss.
 */
unsigned int stream_fetch_readahead(struct stream_c *sc, u64 first,
				    u64 count);
/*
 * Map: fills for one write of whole blocks from @first: a FETCH_FILLING
 * fetch for each of up to @max blocks, stopping at the first that is
 * present or being made present (or at no memory), all linked through
 * their @list; a queued fetch that nobody waits for is taken over.
 * Returns how many (0 when suspending), *@f the first.
 */
unsigned int stream_fetch_fill_run(struct stream_c *sc, u64 first,
				   unsigned int max, struct stream_fetch **f);
/*
 * Process context, with a reference on @sc (DM_STREAM_IOC_FETCH): queue a
 * background fetch for every block of [@first, @first + @count) that is
 * absent and not being made present; unless @nowait, wait (killable)
 * until none of them is being made present.  *@absent: the blocks of the
 * range still absent then.  -EAGAIN when suspending or suspended, -EROFS
 * when blocks cannot become present, -ENOMEM, -EINTR.
 */
int stream_fetch_range(struct stream_c *sc, u64 first, u64 count,
		       bool nowait, u64 *absent);
/* Any context: the data write of a fetch or fill has ended. */
void stream_fetch_io_done(struct stream_fetch *f);
/*
 * Any context: the write of fill @f (from stream_fetch_park() or
 * stream_fetch_fill_run()) has ended with @status: every fill it carried
 * completes.
 */
void stream_fetch_fill_done(struct stream_fetch *f, blk_status_t status);
/*
 * Worker: a completed fetch leaves the queue; its block is present if its
 * write succeeded.  Its waiters go to @waiters.  Returns true if that made
 * the last absent block present.  Free it with stream_fetch_free().
 */
bool stream_fetch_retire(struct stream_c *sc, struct stream_fetch *f,
			 struct bio_list *waiters);
void stream_fetch_free(struct stream_fetch *f);
/*
 * Move the waiters of every fetch waiting for the helper (queued or sent,
 * not being written) to @out and drop those fetches.  Returns how many.
 */
unsigned int stream_fetch_take_waiters(struct stream_c *sc,
				       struct bio_list *out);
/*
 * How long the oldest fetch still waiting for the helper (queued or sent)
 * has waited, in jiffies; 0 when none.  Process context (takes fq.lock).
 */
unsigned long stream_fetch_oldest(struct stream_c *sc);
/* Worker: drop fetches older than @limit jiffies; their waiters to @dead. */
void stream_fetch_expire(struct stream_c *sc, unsigned long limit,
			 struct bio_list *dead);
/*
 * Suspended: drop the fetches nobody waits for.  Returns true if fetches
 * whose data is being written remain.
 */
bool stream_fetch_cancel_idle(struct stream_c *sc);

#endif
