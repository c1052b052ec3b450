// SPDX-License-Identifier: GPL-2.0
/* streamd's request pool and queues: see reqpool.h. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "reqpool.h"

int su_reqpool_init(struct su_reqpool *p, unsigned int nr, size_t head,
		    size_t size)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	unsigned int i;
	uintptr_t data;

	memset(p, 0, sizeof(*p));
	p->reqs = calloc(nr, sizeof(*p->reqs));
	if (!p->reqs)
		return -ENOMEM;
	p->nr = nr;
	for (i = 0; i < nr; i++) {
		/*
		 * Room to move buf + head up to the next page boundary.
		 * Zeroed: streamd lets libnbd skip zeroing each read buffer,
		 * so a buffer holds nothing but what the server sent into it.
		 */
		p->reqs[i].mem = calloc(1, head + size + page - 1);
		if (!p->reqs[i].mem)
			goto out_free;
		data = (uintptr_t)p->reqs[i].mem + head;
		data = (data + page - 1) & ~(uintptr_t)(page - 1);
		p->reqs[i].buf = (unsigned char *)(data - head);
		su_req_put(p, &p->reqs[i]);
	}
	return 0;
out_free:
	su_reqpool_destroy(p);
	return -ENOMEM;
}

void su_reqpool_destroy(struct su_reqpool *p)
{
	unsigned int i;

	for (i = 0; p->reqs && i < p->nr; i++)
		free(p->reqs[i].mem);
	free(p->reqs);
	memset(p, 0, sizeof(*p));
}

struct su_req *su_req_get(struct su_reqpool *p)
{
	struct su_req *r = p->free;
	unsigned char *buf;
	void *mem;

	if (!r)
		return NULL;
	p->free = r->next;
	p->nr_free--;
	buf = r->buf;
	mem = r->mem;
	memset(r, 0, sizeof(*r));
	r->buf = buf;
	r->mem = mem;
	return r;
}

void su_req_put(struct su_reqpool *p, struct su_req *r)
{
	r->next = p->free;
	p->free = r;
	p->nr_free++;
}

void su_req_split(struct su_req *r)
{
	r->split_end = r->block + r->count;
	r->split_len = r->count;
	r->split_bad = 0;
	r->split_refused = 0;
	r->count = r->count > 1 ? r->count / 2 : 1;
	r->retries = 0;
}

bool su_req_split_halve(struct su_req *r)
{
	if (r->count <= 1)
		return false;
	r->count /= 2;
	return true;
}

bool su_req_split_next(struct su_req *r, bool bad, bool refused)
{
	uint64_t left;

	if (!r->split_end)
		return false;
	r->split_bad += bad;
	r->split_refused = refused ? r->split_refused + 1 : 0;
	left = r->split_end - (r->block + r->count);
	if (!left || r->split_refused >= 2)
		return false;
	r->block += r->count;
	if (bad)
		r->count = 1;
	else if (r->count <= left / 2)
		r->count *= 2;
	if (r->count > left)
		r->count = (uint32_t)left;
	r->retries = 0;
	return true;
}

void su_reqq_init(struct su_reqq *q)
{
	q->head = NULL;
	q->tail = &q->head;
}

void su_reqq_push(struct su_reqq *q, struct su_req *r)
{
	r->next = NULL;
	*q->tail = r;
	q->tail = &r->next;
}

void su_reqq_push_front(struct su_reqq *q, struct su_req *r)
{
	r->next = q->head;
	q->head = r;
	if (!r->next)
		q->tail = &r->next;
}

struct su_req *su_reqq_pop(struct su_reqq *q)
{
	struct su_req *r = q->head;

	if (r) {
		q->head = r->next;
		if (!q->head)
			q->tail = &q->head;
		r->next = NULL;
	}
	return r;
}
