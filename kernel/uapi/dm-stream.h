/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * dm-stream: kernel <-> helper (streamd) channel ABI.
 *
 * This header is shared, unmodified, by the dm-stream module and by the
 * userspace helper.  All fields are fixed width and native endian (the
 * channel never leaves the machine); every structure carries a magic, the
 * ABI version and its own size so that either side can reject a peer built
 * against another revision.
 *
 * Flow:
 *   1. The helper opens /dev/dm-stream (CAP_SYS_ADMIN required) and issues
 *      DM_STREAM_IOC_ATTACH naming a dm device by name or uuid.  Exactly
 *      one helper may be attached to a target at a time (-EBUSY).
 *   2. read(2) returns a batch of struct dm_stream_request, at most
 *      count / sizeof(struct dm_stream_request) of them.  It blocks until at
 *      least one request is pending unless O_NONBLOCK is set (-EAGAIN);
 *      poll(2) reports POLLIN when requests are pending and POLLHUP once the
 *      target is gone (read then fails with -ENODEV: re-attach).
 *   3. For each request, in any order, the helper write(2)s exactly one
 *      struct dm_stream_reply followed by its payload, in a single write
 *      call.  The kernel validates magic, version, size, tag, block and
 *      payload length; a reply that does not match an outstanding request
 *      of this file is refused (-EINVAL, -ENOENT) and changes nothing.
 *   4. close(2) (or the helper's death) hands every request it had read but
 *      not answered back to the queue for the next helper.
 *   5. The kernel also drops the helper (POLLHUP, -ENODEV) after an image
 *      update: the helper MUST re-attach and forget what it knew about the
 *      image (for streamd, which blocks read as zero).
 *
 * Snapshot readers (streamctl) use DM_STREAM_IOC_SNAP_READ on an
 * unattached /dev/dm-stream file: it copies one block of a snapshot in
 * progress as it was at the cut (see dm-stream.rst, Snapshots).
 *
 * Growing structures: the ioctl structures carry their size; the kernel
 * accepts any size from the version 1 layout up, zero-filling fields a
 * smaller (older) caller lacks and refusing (-E2BIG) a larger one whose
 * extra bytes are not zero (copy_struct_from_user()).  The ioctl numbers
 * are matched on type and number only, not on the size they encode.
 * Every reserved field must be zero (-EINVAL).
 *
 * Changelog:
 *   1: initial version.  DM_STREAM_IOC_SNAP_READ was added later without
 *      a version change: a new ioctl number, which an older module
 *      answers with -ENOTTY.
 *   2: dm_stream_attach carries the image's size and identity, checked
 *      against the device (-EMEDIUMTYPE); structures may grow; reserved
 *      fields must be zero.
 *   3: ranges.  A request names a run of adjacent blocks (nr_blocks), and
 *      a reply answers any sub-range of one request; the helper says at
 *      attach how many blocks it takes in one request (max_blocks).  The
 *      request and reply structures grew by 8 bytes.  A version 2 helper
 *      is refused at attach (-EPROTO, and a line in the kernel log).
 *      DM_STREAM_REQ_BACKGROUND was added later without a version change:
 *      a hint in a field that was always 0, which a helper may ignore.
 *      DM_STREAM_IOC_FETCH was added later without a version change: a new
 *      ioctl number, which an older module answers with -ENOTTY (streamd
 *      then fills by reading through the device, as before).
 */
#ifndef _UAPI_DM_STREAM_H
#define _UAPI_DM_STREAM_H

#include <linux/types.h>
#include <linux/ioctl.h>

#define DM_STREAM_MAGIC		0x4d525453	/* "STRM" */
#define DM_STREAM_VERSION	3
#define DM_STREAM_DEVNAME	"dm-stream"

#define DM_STREAM_NAME_LEN	128	/* DM_NAME_LEN */
#define DM_STREAM_UUID_LEN	129	/* DM_UUID_LEN */
#define DM_STREAM_IMAGE_ID_LEN	64	/* including the NUL */

/* dm_stream_attach.flags */
#define DM_STREAM_ATTACH_BY_UUID	(1U << 0)

/*
 * DM_STREAM_IOC_ATTACH
 * in:  magic, version, size, flags, id (dm name, or uuid with BY_UUID);
 *      image_size: the export's size in bytes, 0 if not known yet; it MUST
 *      equal the device's size (-EMEDIUMTYPE otherwise);
 *      image_id: the image's identity if the helper knows it (streamd
 *      --image-id), else empty; when the device has recorded one (the
 *      last image update's), they MUST be equal (-EMEDIUMTYPE).
 *      max_blocks (version 3): the most blocks the helper takes in one
 *      request, 0 meaning 1.
 * out: block_size (bytes), nr_blocks, nr_present; max_blocks: the most
 *      blocks a request will name (the helper's, capped by the kernel's
 *      largest reply payload, 1 MiB or one block if larger).
 */
struct dm_stream_attach {
	__u32 magic;
	__u32 version;
	__u32 size;		/* sizeof(struct dm_stream_attach) */
	__u32 flags;
	char id[DM_STREAM_UUID_LEN];
	__u8 pad[7];
	__u64 nr_blocks;
	__u64 nr_present;
	__u32 block_size;
	__u32 reserved[5];
	/* version 2 */
	__u64 image_size;
	char image_id[DM_STREAM_IMAGE_ID_LEN];
	/* version 3 */
	__u32 max_blocks;
	__u32 reserved3;
};

#define DM_STREAM_IOC_ATTACH	_IOWR('S', 0x01, struct dm_stream_attach)

/*
 * DM_STREAM_IOC_SNAP_READ
 * in:  magic, version, size, flags (BY_UUID), id, consumer, gen (the
 *      snapshot id), block, buf (user address of len bytes), len (the
 *      block size in bytes).
 * Errors: -ESTALE the snapshot is not in progress (acknowledged, aborted,
 * or lost by a reload), -ENOENT the block is not in the snapshot or no
 * such device, -ENODATA the block is absent (its content is the image's:
 * read it through the device, which fetches it, and retry), -ERANGE block
 * beyond the device, -EINVAL bad consumer or length, -EIO.  A read served
 * from the helper's reply can complete just before its block is marked
 * present: after -ENODATA again, read again (that read waits for it).
 */
struct dm_stream_snap_read {
	__u32 magic;
	__u32 version;
	__u32 size;		/* sizeof(struct dm_stream_snap_read) */
	__u32 flags;
	char id[DM_STREAM_UUID_LEN];
	__u8 pad[3];
	__u32 consumer;
	__u64 gen;
	__u64 block;
	__u64 buf;
	__u32 len;
	__u32 reserved[3];
};

#define DM_STREAM_IOC_SNAP_READ	_IOW('S', 0x02, struct dm_stream_snap_read)

/* dm_stream_fetch.flags (and DM_STREAM_ATTACH_BY_UUID) */
#define DM_STREAM_FETCH_NOWAIT		(1U << 1)

/*
 * DM_STREAM_IOC_FETCH: make a range present without reading it (the
 * background fill), on any /dev/dm-stream file, attached or not.
 * in:  magic, version, size, flags (BY_UUID, NOWAIT), id, block,
 *      nr_blocks (1 to DM_STREAM_FETCH_MAX).
 * The kernel queues a background fetch (DM_STREAM_REQ_BACKGROUND) for
 * every block of the range that is absent and not being made present
 * already; the attached helper answers them like any other request.
 * Without NOWAIT the call then waits until no block of the range is being
 * made present (fetched, written, or dropped at fetch_timeout, which
 * counts from when a fetch is sent); a fatal signal ends the wait, not
 * the fetches, and the wait does not hold up a system suspend.
 * out: nr_absent, the blocks of the range still absent on return (with
 *      NOWAIT, when the fetches were queued); its value on input is
 *      ignored.
 * Errors: -ENOENT no such device, -ERANGE the range is beyond the device,
 * -EINVAL bad flags, length or reserved field, -EAGAIN the device is not
 * resumed or is being suspended (retry after resume; what was queued
 * stays queued for the next resume, unless a noflush suspend dropped
 * it), -EROFS the metadata cannot be written (no block can become
 * present), -ENOMEM (what was queued stays queued), -EINTR.
 */
#define DM_STREAM_FETCH_MAX	8192

struct dm_stream_fetch {
	__u32 magic;
	__u32 version;
	__u32 size;		/* sizeof(struct dm_stream_fetch) */
	__u32 flags;
	char id[DM_STREAM_UUID_LEN];
	__u8 pad[7];
	__u64 block;
	__u64 nr_blocks;
	__u64 nr_absent;	/* out */
	__u32 reserved[4];
};

#define DM_STREAM_IOC_FETCH	_IOWR('S', 0x03, struct dm_stream_fetch)

/* dm_stream_request.type */
#define DM_STREAM_REQ_FETCH	1	/* fetch a run of whole blocks */

/*
 * dm_stream_request.flags
 *
 * BACKGROUND: only background reads wait for these blocks: reads issued
 * with the idle I/O priority class (ionice -c 3), as streamd's fill thread
 * does.  A helper SHOULD send requests without it first and MAY limit how
 * many background requests it has in flight, so that a demand read does
 * not wait behind a background transfer.  A block that a demand read asks
 * for while its request is still queued in the kernel loses the flag; once
 * the request is read, it keeps it.  A hint: a helper that ignores it
 * loses nothing.
 */
#define DM_STREAM_REQ_BACKGROUND	(1U << 0)

/*
 * Kernel -> helper.  FETCH: send blocks @block .. @block + @nr_blocks - 1
 * (byte offset block * block_size, nr_blocks * block_size bytes) back
 * with tag @tag.  nr_blocks is at least 1 and at most the max_blocks
 * agreed at attach.  The blocks are adjacent absent blocks that I/O (or
 * the target's readahead) asked for; the helper SHOULD read them with one
 * request to its server.
 */
struct dm_stream_request {
	__u32 magic;
	__u16 version;
	__u16 size;		/* sizeof(struct dm_stream_request) */
	__u32 type;
	__u32 flags;		/* DM_STREAM_REQ_* */
	__u64 tag;
	__u64 block;
	/* version 3 */
	__u32 nr_blocks;
	__u32 reserved;		/* 0 */
};

/* dm_stream_reply.flags */
#define DM_STREAM_REPLY_ZERO	(1U << 0)	/* blocks read as zeroes, no payload */

/*
 * Helper -> kernel.  Answers @nr_blocks blocks from @block, all of them
 * named by one request (@tag): the whole request, or any sub-range of it,
 * so that a helper can answer a run of zero blocks apart from the data
 * around it.  Every block of a request MUST be answered exactly once; a
 * reply naming a block that is not outstanding under @tag for this file
 * is refused whole (-ENOENT) and changes nothing.
 * Followed in the same write by @len payload bytes: nr_blocks * block_size
 * bytes when error == 0 and ZERO is clear, otherwise none.  A payload that
 * starts on a page boundary is written to the data device from the
 * helper's pages in place, and write(2) returns once that write has
 * completed (the helper may then reuse the buffer; a fatal signal ends
 * the wait, not the write); any other payload, or one in memory that
 * cannot be pinned, is copied first and write(2) returns at once.  error is 0 or
 * a negative errno; an error fails the I/O waiting for these blocks with
 * -EIO (the helper retries transient failures itself and only reports what
 * it cannot recover from); I/O that reaches such a block only after the
 * error was taken asks for it again.
 */
struct dm_stream_reply {
	__u32 magic;
	__u16 version;
	__u16 size;		/* sizeof(struct dm_stream_reply) */
	__u32 flags;
	__s32 error;
	__u64 tag;
	__u64 block;
	__u64 len;
	/* version 3 */
	__u32 nr_blocks;	/* at least 1 */
	__u32 reserved;		/* 0 */
};

#endif /* _UAPI_DM_STREAM_H */
