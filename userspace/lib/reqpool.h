/* SPDX-License-Identifier: GPL-2.0 */
/*
 * streamd's requests: a pool allocated once (so that serving never
 * allocates) and FIFO queues of pool entries.  Single-threaded: the
 * caller owns the pool and the queues (streamd's main loop).
 */
#ifndef STREAM_LIB_REQPOOL_H
#define STREAM_LIB_REQPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct su_req {
	struct su_req *next;		/* free list, a queue or a list */
	uint64_t tag;
	uint64_t block;
	uint32_t count;			/* blocks from @block */
	uint64_t split_end;		/* split: read in pieces up to here */
	uint32_t split_len;		/* split: blocks of the whole request */
	unsigned int split_bad;		/* split: blocks answered EIO */
	unsigned int split_refused;	/* split: answers refused in a row */
	unsigned int retries;
	uint64_t conn_gen;		/* connection it was issued on */
	bool done;			/* completion seen */
	int error;
	int reply_error;		/* a reply to send again */
	bool reply_zero;
	bool background;		/* DM_STREAM_REQ_BACKGROUND */
	unsigned char *buf;		/* head + size bytes, see init */
	void *mem;			/* the allocation holding buf */
};

struct su_reqpool {
	struct su_req *reqs;
	unsigned int nr;
	struct su_req *free;
	unsigned int nr_free;
};

struct su_reqq {
	struct su_req *head, **tail;
};

/*
 * @nr entries, each with a buffer of @head + @size bytes laid out so that
 * buf + @head starts a page: a reply's payload after its @head byte
 * header, which the kernel then writes from the helper's pages in place.
 * 0 or -ENOMEM (nothing kept).
 */
int su_reqpool_init(struct su_reqpool *p, unsigned int nr, size_t head,
		    size_t size);
void su_reqpool_destroy(struct su_reqpool *p);
/* An entry, reset, or NULL when all are in use. */
struct su_req *su_req_get(struct su_reqpool *p);
void su_req_put(struct su_reqpool *p, struct su_req *r);

/*
 * Reading a request again in pieces once its read has failed whole
 * (streamd's split()), so that a bad block of the server fails only
 * itself.  su_req_split() starts it: @r then names its first piece (the
 * first half).  A piece that fails is halved by su_req_split_halve(),
 * which returns false for a single block: that block is bad.  Once a
 * piece is answered (@bad: as an error) or its answer refused (@refused),
 * su_req_split_next() moves @r to the next piece and returns true, or
 * returns false when the split is over: every block answered, or two
 * answers refused in a row.  The piece after a good one is twice its
 * size, after a bad block one block.
 */
void su_req_split(struct su_req *r);
bool su_req_split_halve(struct su_req *r);
bool su_req_split_next(struct su_req *r, bool bad, bool refused);

void su_reqq_init(struct su_reqq *q);
void su_reqq_push(struct su_reqq *q, struct su_req *r);
void su_reqq_push_front(struct su_reqq *q, struct su_req *r);
struct su_req *su_reqq_pop(struct su_reqq *q);

#endif
