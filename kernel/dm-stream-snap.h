/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-stream snapshots: the target's half of a point-in-time snapshot
 * (undrained blocks, preserved copies, their budget, the reader).  The
 * metadata's half (which blocks, ids, ack/abort on disk) is in
 * dm-stream-metadata.c.  Calls only into the metadata; nothing here calls
 * back into the target or the channel.
 */
#ifndef DM_STREAM_SNAP_H
#define DM_STREAM_SNAP_H

#include <linux/mutex.h>
#include <linux/types.h>
#include <linux/xarray.h>

#include "dm-stream-metadata.h"

struct stream_c;

struct stream_snap {
	/*
	 * Guards copies, copy_bytes, cut[] and changes to undrained[] bits;
	 * taken after the target's quiesce_lock and before the metadata's
	 * commit_lock.  The undrained[] pointers are set while suspended and
	 * never freed before the dtr; the map path tests their bits
	 * locklessly.
	 */
	struct mutex lock;
	unsigned long *undrained[DSM_MAX_CONSUMERS];
	struct xarray copies;		/* block * 4 + consumer -> copy */
	u64 copy_bytes;
	u64 budget;			/* bytes, from the table */
	u64 cut[DSM_MAX_CONSUMERS];	/* snapshot ids this table cut */
};

void stream_snap_init(struct stream_snap *snap, u64 budget);
/* dtr: drop every copy and map. */
void stream_snap_destroy(struct stream_c *sc);

/* Lockless, any context: must a write to @block wait for a copy? */
bool stream_snap_needs_preserve(struct stream_c *sc, u64 block);
/*
 * Worker, before a write to present @block: keep the block's content at
 * the cut for every snapshot that has not got it yet (or abort the
 * snapshot when it cannot).  May sleep for one block read.
 */
void stream_snap_preserve(struct stream_c *sc, u64 block);

/*
 * Messages, process context.  cut: the device is quiesced (the caller
 * holds quiesce_lock); returns 0 with the id and size, or -errno
 * (-EBUSY: a snapshot of @c is in progress).  end: ack or abort snapshot
 * @gen of @c (-ESTALE: not the one in progress).  ranges: a page of the
 * snapshot's block ranges (see dsm_emit_ranges()).
 */
int stream_snap_cut(struct stream_c *sc, unsigned int c, u64 *gen, u64 *nr);
int stream_snap_end(struct stream_c *sc, bool ack, unsigned int c, u64 gen,
		    u64 *nr);
int stream_snap_ranges(struct stream_c *sc, unsigned int c, u64 gen,
		       u64 cursor, char *result, unsigned int maxlen);
/* preresume: abort a snapshot another table (the one reloaded) cut. */
void stream_snap_abort_foreign(struct stream_c *sc);

/*
 * DM_STREAM_IOC_SNAP_READ: copy @block as it was at the cut of snapshot
 * @gen of consumer @c to @buf.  Process context; the caller holds a
 * reference on the target.
 */
int stream_snap_read(struct stream_c *sc, unsigned int c, u64 gen, u64 block,
		     void __user *buf, u32 len);

#endif
