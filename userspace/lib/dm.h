/* SPDX-License-Identifier: GPL-2.0 */
/*
 * libdevmapper calls on a stream device, for streamd and streamctl: one
 * task per call (create, set name or uuid, run, read, destroy), every
 * failure reported to stderr with the operation and the device.
 */
#ifndef STREAM_LIB_DM_H
#define STREAM_LIB_DM_H

#include <stdbool.h>
#include <stdint.h>

#include "status.h"

struct su_dev {
	const char *id;			/* dm name, or uuid with by_uuid */
	bool by_uuid;
	bool quiet;			/* no message on failure */
};

/*
 * Send @msg to sector 0; *resp (if @resp) gets the whole answer, malloc'd
 * (free() it).  Returns 0 or -EIO (the kernel log has the reason).
 */
int su_dm_message(const struct su_dev *d, const char *msg, char **resp);

/*
 * Status of the device: its name into @name (@len bytes, may be NULL) and
 * its parsed INFO line; *open_count (if not NULL) how many holders have
 * it open.  Returns 0, -ENOENT (no such device), -EMEDIUMTYPE (not a
 * stream target), -EPROTO (unparsable line), -ENOMEM or -EIO.
 */
int su_dm_status(const struct su_dev *d, char *name, size_t len,
		 struct su_status *st, int *open_count);

/*
 * Page through the answers of @query (a message that takes a trailing
 * cursor) from 0 to @total, calling @fn for each range.  Any answer size.
 */
int su_dm_for_each_range(const struct su_dev *d, const char *query,
			 uint64_t total,
			 int (*fn)(void *ctx, uint64_t first, uint64_t count),
			 void *ctx);

#endif
