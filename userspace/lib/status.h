/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The stream target's status line and its paged range answers, parsed
 * once for streamd and streamctl.  Pure functions over strings (the
 * libdevmapper calls are in dm.h), so that the unit tests and the fuzz
 * targets feed them anything.
 */
#ifndef STREAM_LIB_STATUS_H
#define STREAM_LIB_STATUS_H

#include <stdbool.h>
#include <stdint.h>

#define SU_NR_CONSUMERS	4

struct su_consumer {
	uint64_t dirty, snap_id, snap_blocks;
};

struct su_status {
	unsigned int block_sectors;
	uint64_t present, total, dirty, parked;
	bool attached;
	char mode[8];			/* rw, ro or fail */
	uint64_t fetched, zero, errors, generation;
	bool fill_on;
	uint64_t fill_rate;		/* bytes/s, 0: unlimited */
	char image[64];			/* "" when none ("-") */
	struct su_consumer c[SU_NR_CONSUMERS];
	bool has_oldest;		/* the field below was there */
	uint64_t oldest_ms;		/* oldest outstanding miss, ms */
};

/*
 * Parse the INFO status of a stream target (see the comment above
 * stream_status() in kernel/dm-stream-target.c).  Fields the module may
 * add at the end are ignored.  Returns 0 or -EPROTO.
 */
int su_parse_status(const char *params, struct su_status *st);

/*
 * One page of a "<next> <first>+<count>..." answer to a paged query
 * ("absent <cursor>", "ranges <c> <gen> <cursor>") asked at @cursor, of a
 * device of @total blocks.  Calls @fn for each range (in order, within
 * the device) and sets *next; a page must move the cursor forward or end
 * at @total.  Returns 0, -EPROTO for a malformed answer, or @fn's error.
 */
int su_parse_range_page(const char *resp, uint64_t cursor, uint64_t total,
			uint64_t *next,
			int (*fn)(void *ctx, uint64_t first, uint64_t count),
			void *ctx);

/*
 * One line of a ranges file: "<offset> <length>" in bytes (decimal or 0x
 * hex), '#' starts a comment.  Returns 1 with the range, 0 for a blank or
 * comment line, -EINVAL when malformed.
 */
int su_parse_range_line(const char *line, uint64_t *off, uint64_t *len);

/*
 * The answer to "snapshot <consumer>": "<snapshot id> <blocks>", an
 * optional trailing newline; the id is never 0.  0 or -EPROTO.
 */
int su_parse_cut(const char *resp, uint64_t *gen, uint64_t *nr);

#endif
