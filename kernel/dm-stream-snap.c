// SPDX-License-Identifier: GPL-2.0
/*
 * dm-stream snapshots (see dm-stream-snap.h for the split with the
 * metadata).
 *
 * A snapshot of consumer c is cut while the device is suspended (no write
 * in flight): its blocks are the ones dirty for c at that instant, and
 * what a drain must send is their content at the cut.  Those blocks are
 * also marked "undrained" here.  The first write after the cut to an
 * undrained block is held (deferred to the worker), the block's current
 * content is read into memory (a struct stream_copy), the undrained bit is
 * cleared and only then is the write issued.  Readers of the snapshot
 * (DM_STREAM_IOC_SNAP_READ) get the copy if there is one and otherwise
 * read the data device under the lock, which still holds the content at
 * the cut because every write to it is held meanwhile.  The extra latency
 * is one block read, once per block per snapshot.  Copies live until ack
 * or abort; when they would exceed the table's preserve_mb budget (or a
 * read fails) the snapshot is aborted instead: its blocks become dirty
 * again, its readers and its ack get -ESTALE, and a table event is
 * raised.  Writes are never held longer than that read.
 *
 * The metadata object is shared with a table being replaced (reload); a
 * snapshot that table cut has no copies here and is aborted at preresume.
 */
#include <linux/blkdev.h>
#include <linux/highmem.h>
#include <linux/kref.h>
#include <linux/log2.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "dm-stream-core.h"

#define DM_MSG_PREFIX "stream"

/* A block's content at a snapshot's cut, shared by the snapshots needing it. */
struct stream_copy {
	struct kref kref;
	struct stream_c *sc;
	unsigned int nr_pages;
	struct page *pages[];
};

static unsigned int copy_index_shift(void)
{
	return ilog2(DSM_MAX_CONSUMERS);
}

static unsigned long copy_index(u64 block, unsigned int c)
{
	return (block << copy_index_shift()) | c;
}

bool stream_snap_needs_preserve(struct stream_c *sc, u64 block)
{
	unsigned int c;

	for (c = 0; c < DSM_MAX_CONSUMERS; c++) {
		unsigned long *u = READ_ONCE(sc->snap.undrained[c]);

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

	lockdep_assert_held(&cp->sc->snap.lock);
	cp->sc->snap.copy_bytes -= (u64)cp->nr_pages << PAGE_SHIFT;
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

	lockdep_assert_held(&sc->snap.lock);
	xa_for_each(&sc->snap.copies, idx, cp) {
		if ((idx & (DSM_MAX_CONSUMERS - 1)) != c)
			continue;
		xa_erase(&sc->snap.copies, idx);
		kref_put(&cp->kref, copy_release);
	}
	if (sc->snap.undrained[c])
		bitmap_zero(sc->snap.undrained[c], sc->nr_blocks);
}

/*
 * A snapshot that can no longer be served at its cut: abort it (its blocks
 * are dirty again).  Caller holds snap_lock.
 */
static void __break_snapshot(struct stream_c *sc, unsigned int c,
			     const char *why)
{
	u64 gen = dsm_snap_gen(sc->md, c), nr;

	lockdep_assert_held(&sc->snap.lock);
	if (dsm_abort(sc->md, c, gen, &nr))
		return;
	__drop_copies(sc, c);
	DMWARN("%s: snapshot %llu of consumer %u aborted: %s",
	       stream_name(sc), gen, c, why);
	dm_table_event(sc->ti->table);
}

void stream_snap_preserve(struct stream_c *sc, u64 block)
{
	u64 bytes = (u64)sc->block_sectors << SECTOR_SHIFT;
	struct stream_copy *cp;
	unsigned int c, mask = 0;
	int r;

	mutex_lock(&sc->snap.lock);
	for (c = 0; c < DSM_MAX_CONSUMERS; c++)
		if (sc->snap.undrained[c] && dsm_snap_gen(sc->md, c) &&
		    test_bit(block, sc->snap.undrained[c]))
			mask |= 1U << c;
	if (!mask)
		goto out;

	if (sc->snap.copy_bytes + bytes > sc->snap.budget) {
		cp = ERR_PTR(-ENOSPC);
	} else {
		cp = read_copy(sc, block);
		if (!IS_ERR(cp))
			sc->snap.copy_bytes += bytes;
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
		r = xa_err(xa_store(&sc->snap.copies, copy_index(block, c), cp,
				    GFP_NOIO));
		if (r) {
			kref_put(&cp->kref, copy_release);
			__break_snapshot(sc, c, "out of memory");
			continue;
		}
		clear_bit(block, sc->snap.undrained[c]);
	}
	if (!IS_ERR(cp))
		kref_put(&cp->kref, copy_release);
out:
	mutex_unlock(&sc->snap.lock);
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

	mutex_lock(&sc->snap.lock);
	if (dsm_snap_gen(sc->md, c) != gen) {
		r = -ESTALE;
		goto out;
	}
	if (!test_bit(block, dsm_snap_map(sc->md, c))) {
		r = -ENOENT;
		goto out;
	}
	cp = xa_load(&sc->snap.copies, copy_index(block, c));
	if (cp) {
		kref_get(&cp->kref);
		mutex_unlock(&sc->snap.lock);
		r = copy_out(buf, cp->pages, cp->nr_pages);
		mutex_lock(&sc->snap.lock);
		kref_put(&cp->kref, copy_release);
		goto out;
	}
	if (!test_bit(block, sc->snap.undrained[c])) {
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
	mutex_unlock(&sc->snap.lock);
	if (IS_ERR(cp))
		return PTR_ERR(cp);
	r = copy_out(buf, cp->pages, cp->nr_pages);
	copy_free(cp);		/* never kept: not counted in copy_bytes */
	return r;
out:
	mutex_unlock(&sc->snap.lock);
	return r;
}

void stream_snap_init(struct stream_snap *snap, u64 budget)
{
	mutex_init(&snap->lock);
	xa_init(&snap->copies);
	snap->budget = budget;
}

void stream_snap_destroy(struct stream_c *sc)
{
	unsigned int c;

	mutex_lock(&sc->snap.lock);
	for (c = 0; c < DSM_MAX_CONSUMERS; c++) {
		__drop_copies(sc, c);
		kvfree(sc->snap.undrained[c]);
		sc->snap.undrained[c] = NULL;
	}
	mutex_unlock(&sc->snap.lock);
	xa_destroy(&sc->snap.copies);
}

int stream_snap_cut(struct stream_c *sc, unsigned int c, u64 *gen, u64 *nr)
{
	int r;

	lockdep_assert_held(&sc->quiesce_lock);
	mutex_lock(&sc->snap.lock);
	if (!sc->snap.undrained[c]) {
		unsigned long *u = kvcalloc(BITS_TO_LONGS(sc->nr_blocks),
					    sizeof(unsigned long), GFP_KERNEL);

		if (!u) {
			r = -ENOMEM;
			goto out;
		}
		WRITE_ONCE(sc->snap.undrained[c], u);
	}
	r = dsm_snapshot(sc->md, sc->data_dev->bdev, c, gen, nr);
	if (r)
		goto out;
	bitmap_copy(sc->snap.undrained[c], dsm_snap_map(sc->md, c),
		    sc->nr_blocks);
	sc->snap.cut[c] = *gen;
out:
	mutex_unlock(&sc->snap.lock);
	return r;
}

int stream_snap_end(struct stream_c *sc, bool ack, unsigned int c, u64 gen,
		    u64 *nr)
{
	int r;

	mutex_lock(&sc->snap.lock);
	r = ack ? dsm_ack(sc->md, c, gen, nr) : dsm_abort(sc->md, c, gen, nr);
	/* Even a failed ack ended the snapshot in core. */
	if (!dsm_snap_gen(sc->md, c))
		__drop_copies(sc, c);
	mutex_unlock(&sc->snap.lock);
	return r;
}

int stream_snap_ranges(struct stream_c *sc, unsigned int c, u64 gen,
		       u64 cursor, char *result, unsigned int maxlen)
{
	int r;

	mutex_lock(&sc->snap.lock);
	if (!gen || dsm_snap_gen(sc->md, c) != gen)
		r = -ESTALE;
	else
		r = dsm_emit_ranges(dsm_snap_map(sc->md, c), sc->nr_blocks,
				    true, cursor, result, maxlen);
	mutex_unlock(&sc->snap.lock);
	return r;
}

void stream_snap_abort_foreign(struct stream_c *sc)
{
	unsigned int c;
	u64 gen, nr;

	mutex_lock(&sc->snap.lock);
	for (c = 0; c < DSM_MAX_CONSUMERS; c++) {
		gen = dsm_snap_gen(sc->md, c);
		if (!gen || gen == sc->snap.cut[c])
			continue;
		if (!dsm_abort(sc->md, c, gen, &nr))
			DMINFO("%s: snapshot %llu of consumer %u aborted by the table reload",
			       stream_name(sc), gen, c);
	}
	mutex_unlock(&sc->snap.lock);
}
