// SPDX-License-Identifier: GPL-2.0
/*
 * streamd - fetch absent blocks of a dm-stream device from an NBD server.
 *
 *   streamd [options] <dm device name> <NBD URI>
 *
 * Design: one thread, one poll(2) loop over two descriptors, the target's
 * channel (/dev/dm-stream, see kernel/uapi/dm-stream.h) and the libnbd
 * connection.  Requests read from the kernel become libnbd asynchronous
 * preads, up to --queue-depth in flight; each completion writes the block
 * back to the kernel in a single write(2) (header then payload, contiguous:
 * the channel takes exactly one reply per write).
 *
 * Blocks that the server's base:allocation metadata reports as reading as
 * zero are answered with DM_STREAM_REPLY_ZERO and never transferred.  The
 * zero map is built once per connection.
 *
 * Failures: a read that fails while the connection is alive is retried a few
 * times and then reported to the kernel as -EIO.  A lost connection is never
 * reported: every request in flight goes back to the local queue, and the
 * helper reconnects with exponential backoff (100 ms .. 5 s) and reissues
 * them.  If the target goes away (table reload, removal) the helper
 * re-attaches to the device of the same name; requests it held are requeued
 * by the kernel.
 *
 * Memory: the helper serves I/O the kernel may need to reclaim memory, so it
 * sets PR_SET_IO_FLUSHER and locks its pages.
 *
 * Background fill: a second thread (struct filler) makes every absent
 * block present by reading it through the dm device with O_DIRECT, one
 * block at a time, so each of its reads becomes an ordinary miss that the
 * main loop serves; a demand miss waits behind at most one fill block.
 * The switch and the rate limit live in the kernel target ("fill on|off",
 * "fill rate", shown in the status line), so streamctl can change them at
 * run time and they survive a helper restart; the thread reads them
 * through libdevmapper and pages through the absent ranges with the
 * "absent <cursor>" message.  --fill turns the switch on at start.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>

#include <libdevmapper.h>
#include <libnbd.h>

#include "uapi/dm-stream.h"
#include "size.h"

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

#define DEFAULT_DEPTH	64
#define MAX_RETRIES	3
#define BATCH		64
#define BACKOFF_MIN_MS	100
#define BACKOFF_MAX_MS	5000

struct req {
	struct req *next;		/* queue or inflight list */
	uint64_t tag;
	uint64_t block;
	unsigned int retries;
	uint64_t conn_gen;		/* connection it was issued on */
	bool done;			/* completion seen */
	int error;
	/* dm_stream_reply header, then block_size payload bytes */
	unsigned char *buf;
};

struct stats {
	uint64_t requests;
	uint64_t fetched;		/* blocks read from the server */
	uint64_t zero;			/* answered as zero, not transferred */
	uint64_t bytes;			/* payload bytes read from the server */
	uint64_t read_errors;
	uint64_t reconnects;
	uint64_t reattaches;
};

struct streamd {
	const char *name;
	const char *uri;
	const char *stats_path;
	unsigned int depth;
	bool verbose;
	bool use_syslog;
	bool by_uuid;
	const char *image_id;		/* --image-id, or NULL */
	uint64_t image_size;		/* export size once connected, else 0 */

	int fd;				/* /dev/dm-stream, -1 when detached */
	uint32_t block_size;
	uint64_t nr_blocks;

	struct nbd_handle *nbd;		/* NULL while disconnected */
	uint64_t conn_gen;
	bool conn_lost;			/* a read failed for connection reasons */
	unsigned int backoff_ms;
	struct timespec next_connect;

	uint8_t *zero_map;		/* bit per block: reads as zero */

	struct req *queue, **queue_tail;	/* to issue */
	struct req *inflight;		/* issued on the current connection */
	unsigned int nr_inflight;

	struct stats st;
	struct filler *fill;
};

/*
 * The fill thread.  The plain fields are written by main() before the
 * thread starts and read-only afterwards; the atomics pass state between
 * the thread and the main loop, which keeps serving the thread's in-flight
 * read until the thread has exited.
 */
struct filler {
	const char *name;
	bool by_uuid;
	bool enable;			/* --fill: switch on at start */
	uint64_t rate;			/* --fill-rate, 0: leave as is */
	bool exit_when_complete;
	pthread_t thread;
	bool started;
	atomic_bool complete;		/* thread -> main */
	atomic_bool stop;		/* main -> thread */
	atomic_bool exited;		/* thread -> main */
};

/*
 * Set by the signal handlers, read by the main loop and the fill thread:
 * the only global mutable state, owned by main().
 */
static volatile sig_atomic_t got_stop, got_usr1;

/* Set once by main() before the loop starts (--daemon); read-only after. */
static bool log_to_syslog;

static void __attribute__((format(printf, 2, 3)))
logmsg(int prio, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	if (log_to_syslog) {
		vsyslog(prio, fmt, ap);
	} else {
		fputs("streamd: ", stderr);
		vfprintf(stderr, fmt, ap);
		fputc('\n', stderr);
	}
	va_end(ap);
}

#define err(...)	logmsg(LOG_ERR, __VA_ARGS__)
#define info(...)	logmsg(LOG_INFO, __VA_ARGS__)
#define dbg(sd, ...)	do { if ((sd)->verbose) logmsg(LOG_DEBUG, __VA_ARGS__); } while (0)

static void on_signal(int sig)
{
	if (sig == SIGUSR1)
		got_usr1 = 1;
	else
		got_stop = 1;
}

static void write_stats(struct streamd *sd)
{
	FILE *f = stderr;
	char tmp[PATH_MAX];

	if (sd->stats_path) {
		snprintf(tmp, sizeof(tmp), "%s.tmp", sd->stats_path);
		f = fopen(tmp, "w");
		if (!f) {
			err("open %s: %m", tmp);
			return;
		}
	}
	fprintf(f, "requests=%" PRIu64 "\nfetched=%" PRIu64 "\nzero=%" PRIu64
		"\nbytes=%" PRIu64 "\nread_errors=%" PRIu64
		"\nreconnects=%" PRIu64 "\nreattaches=%" PRIu64 "\n",
		sd->st.requests, sd->st.fetched, sd->st.zero, sd->st.bytes,
		sd->st.read_errors, sd->st.reconnects, sd->st.reattaches);
	if (sd->stats_path) {
		if (fclose(f) || rename(tmp, sd->stats_path))
			err("write %s: %m", sd->stats_path);
	}
}

static void queue_req(struct streamd *sd, struct req *r)
{
	r->next = NULL;
	*sd->queue_tail = r;
	sd->queue_tail = &r->next;
}

static struct req *dequeue_req(struct streamd *sd)
{
	struct req *r = sd->queue;

	if (r) {
		sd->queue = r->next;
		if (!sd->queue)
			sd->queue_tail = &sd->queue;
	}
	return r;
}

static void free_req(struct req *r)
{
	free(r->buf);
	free(r);
}

/* --- kernel channel ---------------------------------------------------- */

static void detach(struct streamd *sd)
{
	struct req *r;

	if (sd->fd >= 0)
		close(sd->fd);
	sd->fd = -1;
	/* The kernel requeues what we held; forget it here. */
	while ((r = dequeue_req(sd)))
		free_req(r);
	for (r = sd->inflight; r; r = r->next)
		r->conn_gen = 0;	/* completions will be dropped */
}

/* Returns 0, or -errno (-ENOENT: no such device yet). */
static int attach(struct streamd *sd)
{
	struct dm_stream_attach a;
	int fd, r;

	fd = open("/dev/" DM_STREAM_DEVNAME, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		err("open /dev/%s: %m", DM_STREAM_DEVNAME);
		return r;
	}
	memset(&a, 0, sizeof(a));
	a.magic = DM_STREAM_MAGIC;
	a.version = DM_STREAM_VERSION;
	a.size = sizeof(a);
	a.flags = sd->by_uuid ? DM_STREAM_ATTACH_BY_UUID : 0;
	snprintf(a.id, sizeof(a.id), "%s", sd->name);
	/* The kernel refuses an image that is not the device's. */
	a.image_size = sd->image_size;
	if (sd->image_id)
		snprintf(a.image_id, sizeof(a.image_id), "%s", sd->image_id);
	if (ioctl(fd, DM_STREAM_IOC_ATTACH, &a) < 0) {
		r = -errno;
		if (r == -EMEDIUMTYPE)
			err("%s: the device refuses image %s (%s%s): see the kernel log",
			    sd->name, sd->uri, sd->image_id ? "id " : "size",
			    sd->image_id ? sd->image_id : "");
		close(fd);
		return r;
	}
	if (sd->block_size && (a.block_size != sd->block_size ||
			       a.nr_blocks != sd->nr_blocks)) {
		err("%s: geometry changed (%u x %" PRIu64 " -> %u x %llu)",
		    sd->name, sd->block_size, sd->nr_blocks, a.block_size,
		    (unsigned long long)a.nr_blocks);
		close(fd);
		return -EINVAL;
	}
	sd->fd = fd;
	sd->block_size = a.block_size;
	sd->nr_blocks = a.nr_blocks;
	info("attached to %s: %llu blocks of %u bytes, %llu present",
	     sd->name, (unsigned long long)a.nr_blocks, a.block_size,
	     (unsigned long long)a.nr_present);
	return 0;
}

/* Send one reply; the payload (if any) is already in r->buf. */
static int reply(struct streamd *sd, struct req *r, int error, bool zero)
{
	struct dm_stream_reply *h = (struct dm_stream_reply *)r->buf;
	size_t len = (error || zero) ? 0 : sd->block_size;
	ssize_t n;

	if (sd->fd < 0)
		return -ENODEV;
	memset(h, 0, sizeof(*h));
	h->magic = DM_STREAM_MAGIC;
	h->version = DM_STREAM_VERSION;
	h->size = sizeof(*h);
	h->flags = zero ? DM_STREAM_REPLY_ZERO : 0;
	h->error = error;
	h->tag = r->tag;
	h->block = r->block;
	h->len = len;
	n = write(sd->fd, r->buf, sizeof(*h) + len);
	if (n < 0) {
		int e = -errno;

		/* ENOENT: the kernel gave up on it (fetch_timeout). */
		err("reply block %" PRIu64 " tag %" PRIu64 ": %s",
		    r->block, r->tag, strerror(-e));
		return e;
	}
	return 0;
}

static bool block_is_zero(struct streamd *sd, uint64_t block)
{
	return sd->zero_map && (sd->zero_map[block / 8] & (1U << (block % 8)));
}

static int read_requests(struct streamd *sd)
{
	struct dm_stream_request reqs[BATCH];
	ssize_t n, i;
	struct req *r;

	n = read(sd->fd, reqs, sizeof(reqs));
	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return 0;
		return -errno;
	}
	for (i = 0; i < n / (ssize_t)sizeof(reqs[0]); i++) {
		struct dm_stream_request *q = &reqs[i];

		if (q->magic != DM_STREAM_MAGIC ||
		    q->version != DM_STREAM_VERSION ||
		    q->size != sizeof(*q) || q->type != DM_STREAM_REQ_FETCH ||
		    q->block >= sd->nr_blocks) {
			err("malformed request from kernel (magic %x version %u type %u block %llu)",
			    q->magic, q->version, q->type,
			    (unsigned long long)q->block);
			continue;
		}
		r = calloc(1, sizeof(*r));
		if (r)
			r->buf = malloc(sizeof(struct dm_stream_reply) +
					sd->block_size);
		if (!r || !r->buf) {
			/* Unanswered: the kernel requeues it on detach. */
			err("out of memory for block %llu",
			    (unsigned long long)q->block);
			if (r)
				free(r);
			return -ENOMEM;
		}
		r->tag = q->tag;
		r->block = q->block;
		sd->st.requests++;
		dbg(sd, "request block %" PRIu64 " tag %" PRIu64, r->block,
		    r->tag);
		if (block_is_zero(sd, r->block)) {
			sd->st.zero++;
			reply(sd, r, 0, true);
			free_req(r);
			continue;
		}
		queue_req(sd, r);
	}
	return 0;
}

/* --- NBD side ------------------------------------------------------------ */

static int extent_cb(void *user_data, const char *metacontext,
		     uint64_t offset, uint32_t *entries, size_t nr_entries,
		     int *error)
{
	struct streamd *sd = user_data;
	uint64_t bs = sd->block_size;
	size_t i;

	if (strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION))
		return 0;
	for (i = 0; i + 1 < nr_entries; i += 2) {
		uint64_t len = entries[i];

		if (entries[i + 1] & LIBNBD_STATE_ZERO) {
			/* whole blocks inside [offset, offset + len) */
			uint64_t b = (offset + bs - 1) / bs;
			uint64_t e = (offset + len) / bs;

			for (; b < e && b < sd->nr_blocks; b++)
				sd->zero_map[b / 8] |= 1U << (b % 8);
		}
		offset += len;
	}
	return 0;
}

/* Map which blocks read as zero; best effort, a failure only costs bytes. */
static void build_zero_map(struct streamd *sd, struct nbd_handle *h)
{
	uint64_t size = sd->nr_blocks * sd->block_size, off = 0;

	if (nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1) {
		info("server has no base:allocation; zero blocks will be transferred");
		return;
	}
	if (!sd->zero_map) {
		sd->zero_map = calloc((sd->nr_blocks + 7) / 8, 1);
		if (!sd->zero_map)
			return;
	}
	/* A rebuild must not keep bits of an older image. */
	memset(sd->zero_map, 0, (sd->nr_blocks + 7) / 8);
	while (off < size) {
		uint64_t count = size - off > (1ULL << 30) ? (1ULL << 30) :
				 size - off;

		if (nbd_block_status(h, count, off,
				     (nbd_extent_callback) {
					.callback = extent_cb,
					.user_data = sd },
				     0) == -1) {
			err("block status at %" PRIu64 ": %s", off,
			    nbd_get_error());
			return;
		}
		off += count;
	}
}

static void disconnect(struct streamd *sd)
{
	struct req *r, *next;

	if (!sd->nbd)
		return;
	/* Everything in flight is reissued on the next connection. */
	sd->conn_gen++;
	sd->conn_lost = false;
	nbd_close(sd->nbd);
	sd->nbd = NULL;
	for (r = sd->inflight; r; r = next) {
		next = r->next;
		if (sd->fd >= 0 && r->conn_gen) {
			r->done = false;
			queue_req(sd, r);
		} else {
			free_req(r);
		}
	}
	sd->inflight = NULL;
	sd->nr_inflight = 0;
}

/*
 * The kernel dropped us: the target was reloaded or removed, or the image
 * was updated (invalidate).  Re-attach, and reconnect so that the zero
 * map describes the image as it is now.
 */
static void reattach(struct streamd *sd)
{
	sd->st.reattaches++;
	detach(sd);
	disconnect(sd);
}

static void schedule_connect(struct streamd *sd)
{
	clock_gettime(CLOCK_MONOTONIC, &sd->next_connect);
	sd->next_connect.tv_nsec += (long)sd->backoff_ms * 1000000L;
	sd->next_connect.tv_sec += sd->next_connect.tv_nsec / 1000000000L;
	sd->next_connect.tv_nsec %= 1000000000L;
	sd->backoff_ms = sd->backoff_ms ? sd->backoff_ms * 2 : BACKOFF_MIN_MS;
	if (sd->backoff_ms > BACKOFF_MAX_MS)
		sd->backoff_ms = BACKOFF_MAX_MS;
}

static long ms_until(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (t->tv_sec - now.tv_sec) * 1000 +
		(t->tv_nsec - now.tv_nsec) / 1000000;
}

/* Returns 0, -EAGAIN (retry later) or another -errno (fatal). */
static int nbd_connect(struct streamd *sd)
{
	struct nbd_handle *h;
	int64_t size;

	h = nbd_create();
	if (!h) {
		err("nbd_create: %s", nbd_get_error());
		return -ENOMEM;
	}
	nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
	if (nbd_connect_uri(h, sd->uri) == -1) {
		err("connect %s: %s", sd->uri, nbd_get_error());
		nbd_close(h);
		return -EAGAIN;
	}
	size = nbd_get_size(h);
	if (size < 0 || (uint64_t)size != sd->nr_blocks * sd->block_size) {
		err("%s: export is %" PRId64 " bytes, device %s needs %" PRIu64,
		    sd->uri, size, sd->name, sd->nr_blocks * sd->block_size);
		nbd_close(h);
		return -EINVAL;
	}
	build_zero_map(sd, h);
	sd->image_size = size;
	sd->nbd = h;
	sd->backoff_ms = 0;
	if (sd->conn_gen++)
		sd->st.reconnects++;
	info("connected to %s (%" PRId64 " bytes)", sd->uri, size);
	return 0;
}

static int pread_done(void *user_data, int *error)
{
	struct req *r = user_data;

	r->done = true;
	r->error = *error;
	return 1;
}

static void issue(struct streamd *sd)
{
	struct req *r;
	int64_t c;

	while (sd->nbd && sd->nr_inflight < sd->depth &&
	       (r = dequeue_req(sd))) {
		r->done = false;
		r->error = 0;
		r->conn_gen = sd->conn_gen;
		c = nbd_aio_pread(sd->nbd,
				  r->buf + sizeof(struct dm_stream_reply),
				  sd->block_size,
				  r->block * (uint64_t)sd->block_size,
				  (nbd_completion_callback) {
					.callback = pread_done,
					.user_data = r },
				  0);
		if (c == -1) {
			err("pread block %" PRIu64 ": %s", r->block,
			    nbd_get_error());
			/* Back to the front; the connection is checked next. */
			r->next = sd->queue;
			sd->queue = r;
			if (!r->next)
				sd->queue_tail = &r->next;
			break;
		}
		r->next = sd->inflight;
		sd->inflight = r;
		sd->nr_inflight++;
	}
}

/* Errors that say the connection, not the block, is at fault. */
static bool is_connection_error(int e)
{
	switch (e) {
	case ENOTCONN:
	case ESHUTDOWN:
	case ECONNRESET:
	case ECONNABORTED:
	case ECONNREFUSED:
	case EPIPE:
	case ETIMEDOUT:
	case EHOSTUNREACH:
	case ENETUNREACH:
	case ENETDOWN:
		return true;
	default:
		return false;
	}
}

/* Hand completed reads back to the kernel. */
static void reap(struct streamd *sd)
{
	struct req **pp = &sd->inflight, *r;

	while ((r = *pp)) {
		if (!r->done) {
			pp = &r->next;
			continue;
		}
		*pp = r->next;
		sd->nr_inflight--;
		if (!r->conn_gen) {		/* target went away */
			free_req(r);
			continue;
		}
		if (!r->error) {
			sd->st.fetched++;
			sd->st.bytes += sd->block_size;
			reply(sd, r, 0, false);
			free_req(r);
		} else if (is_connection_error(r->error)) {
			/* Not the block's fault: reconnect and reissue. */
			dbg(sd, "block %" PRIu64 ": %s; will reissue",
			    r->block, strerror(r->error));
			sd->conn_lost = true;
			queue_req(sd, r);
		} else if (++r->retries > MAX_RETRIES) {
			sd->st.read_errors++;
			err("read block %" PRIu64 ": %s; reporting EIO",
			    r->block, strerror(r->error));
			reply(sd, r, -EIO, false);
			free_req(r);
		} else {
			dbg(sd, "retry block %" PRIu64, r->block);
			queue_req(sd, r);
		}
	}
}

/* --- main loop ----------------------------------------------------------- */

static int run(struct streamd *sd)
{
	bool warned = false;
	int r;

	struct timespec stop_by = { 0, 0 };

	sd->queue_tail = &sd->queue;
	sd->fd = -1;
	for (;;) {
		struct pollfd pfd[2];
		int nfds = 0, timeout = 1000, dm_idx = -1, nbd_idx = -1;
		long wait;

		if (sd->fill->exit_when_complete &&
		    atomic_load(&sd->fill->complete) && !got_stop) {
			info("%s: every block is present: exiting", sd->name);
			got_stop = 1;
		}
		if (got_stop) {
			/* Serve the fill thread's last read, for 10 s at most. */
			atomic_store(&sd->fill->stop, true);
			if (!sd->fill->started || atomic_load(&sd->fill->exited))
				break;
			if (!stop_by.tv_sec) {
				clock_gettime(CLOCK_MONOTONIC, &stop_by);
				stop_by.tv_sec += 10;
			} else if (ms_until(&stop_by) <= 0) {
				err("fill thread did not stop; exiting anyway");
				break;
			}
			timeout = 100;
		}

		if (got_usr1) {
			got_usr1 = 0;
			write_stats(sd);
		}
		if (sd->fd < 0) {
			r = attach(sd);
			if (r == -ENOENT || r == -EBUSY) {
				if (!warned)
					info("waiting for %s: %s", sd->name,
					     strerror(-r));
				warned = true;
				usleep(200000);
				continue;
			}
			if (r)
				return r;
			warned = false;
		}
		if (!sd->nbd && ms_until(&sd->next_connect) <= 0) {
			r = nbd_connect(sd);
			if (r == -EAGAIN)
				schedule_connect(sd);
			else if (r)
				return r;
		}

		issue(sd);
		if (sd->nbd && (sd->conn_lost || nbd_aio_is_dead(sd->nbd) ||
				nbd_aio_is_closed(sd->nbd))) {
			sd->conn_lost = false;
			err("connection to %s lost; reconnecting", sd->uri);
			reap(sd);
			disconnect(sd);
			schedule_connect(sd);
			continue;
		}

		if (sd->nr_inflight + 0U < sd->depth) {
			pfd[nfds].fd = sd->fd;
			pfd[nfds].events = POLLIN;
			dm_idx = nfds++;
		}
		if (sd->nbd) {
			unsigned int dir = nbd_aio_get_direction(sd->nbd);

			pfd[nfds].fd = nbd_aio_get_fd(sd->nbd);
			pfd[nfds].events = 0;
			if (dir & LIBNBD_AIO_DIRECTION_READ)
				pfd[nfds].events |= POLLIN;
			if (dir & LIBNBD_AIO_DIRECTION_WRITE)
				pfd[nfds].events |= POLLOUT;
			nbd_idx = nfds++;
		} else {
			wait = ms_until(&sd->next_connect);
			if (wait < timeout)
				timeout = wait < 0 ? 0 : wait;
		}

		r = poll(pfd, nfds, timeout);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			err("poll: %m");
			return -errno;
		}
		if (nbd_idx >= 0) {
			short re = pfd[nbd_idx].revents;

			if (re & (POLLIN | POLLHUP | POLLERR))
				nbd_aio_notify_read(sd->nbd);
			else if (re & POLLOUT)
				nbd_aio_notify_write(sd->nbd);
			reap(sd);
		}
		if (dm_idx >= 0) {
			short re = pfd[dm_idx].revents;

			if (re & (POLLHUP | POLLERR)) {
				info("%s went away; re-attaching", sd->name);
				reattach(sd);
				continue;
			}
			if (re & POLLIN) {
				r = read_requests(sd);
				if (r == -ENODEV) {
					reattach(sd);
				} else if (r && r != -ENOMEM) {
					err("read /dev/%s: %s",
					    DM_STREAM_DEVNAME, strerror(-r));
					return r;
				}
			}
		}
	}
	return 0;
}


/* A libdevmapper task on the target; @resp gets a message's answer. */
static int dm_run(const struct filler *fl, int type, const char *msg,
		  char *resp, size_t len, char **params)
{
	struct dm_task *dmt = dm_task_create(type);
	uint64_t start, length;
	char *ttype = NULL, *p = NULL;
	const char *out;
	int r = -EIO;

	if (!dmt)
		return -ENOMEM;
	if (!(fl->by_uuid ? dm_task_set_uuid(dmt, fl->name) :
	      dm_task_set_name(dmt, fl->name)))
		goto out;
	if (msg && (!dm_task_set_sector(dmt, 0) ||
		    !dm_task_set_message(dmt, msg)))
		goto out;
	if (!dm_task_run(dmt))
		goto out;
	if (msg) {
		out = dm_task_get_message_response(dmt);
		snprintf(resp, len, "%s", out ? out : "");
	} else {
		dm_get_next_target(dmt, NULL, &start, &length, &ttype, &p);
		if (!ttype || strcmp(ttype, "stream") || !p)
			goto out;
		snprintf(resp, len, "%s", dm_task_get_name(dmt));
		*params = strdup(p);
		if (!*params) {
			r = -ENOMEM;
			goto out;
		}
	}
	r = 0;
out:
	dm_task_destroy(dmt);
	return r;
}

struct fill_state {
	bool on;
	uint32_t block_size;		/* bytes */
	uint64_t rate, present, total;
	char name[DM_STREAM_NAME_LEN];
};

static int fill_status(const struct filler *fl, struct fill_state *fs)
{
	char *params = NULL, on[4];
	unsigned int sectors;
	int r;

	r = dm_run(fl, DM_DEVICE_STATUS, NULL, fs->name, sizeof(fs->name),
		   &params);
	if (r)
		return r;
	if (sscanf(params, "%u %" SCNu64 "/%" SCNu64 " %*u %*d %*s %*s %*u %*u %*u %*u %3s %" SCNu64,
		   &sectors, &fs->present, &fs->total, on, &fs->rate) != 5)
		r = -EPROTO;
	fs->block_size = sectors * 512;
	fs->on = !strcmp(on, "on");
	free(params);
	return r;
}

static void sleep_ms(struct filler *fl, long ms)
{
	/* In slices, so that a stop request is seen quickly. */
	while (ms > 0 && !atomic_load(&fl->stop)) {
		long n = ms < 100 ? ms : 100;
		struct timespec ts = { 0, n * 1000000L };

		nanosleep(&ts, NULL);
		ms -= n;
	}
}

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/*
 * One pass over the absent ranges.  Returns 0 when the pass ended (switch
 * off, or end of the device), -errno on failure.
 */
static int fill_pass(struct filler *fl, struct fill_state *fs, int fd,
		     void *buf, uint32_t bs)
{
	char msg[64], *resp, *p, *end;
	uint64_t cursor = 0, next, first, count, b, done = 0;
	double t0 = now_s(), checked = t0;
	int r = 0;

	resp = malloc(8192);
	if (!resp)
		return -ENOMEM;
	while (cursor < fs->total && !atomic_load(&fl->stop)) {
		snprintf(msg, sizeof(msg), "absent %" PRIu64, cursor);
		r = dm_run(fl, DM_DEVICE_TARGET_MSG, msg, resp, 8192, NULL);
		if (r)
			break;
		next = strtoull(resp, &end, 10);
		if (end == resp || next <= cursor) {
			r = -EPROTO;
			break;
		}
		for (p = end; *p == ' ' && !atomic_load(&fl->stop); ) {
			first = strtoull(p + 1, &end, 10);
			if (*end != '+') {
				r = -EPROTO;
				goto out;
			}
			count = strtoull(end + 1, &p, 10);
			for (b = first; b < first + count && !atomic_load(&fl->stop); b++) {
				if (pread(fd, buf, bs, (off_t)b * bs) != bs) {
					r = errno ? -errno : -EIO;
					goto out;
				}
				done += bs;
				/* The switch and the rate, once a second. */
				if (now_s() - checked >= 1.0) {
					checked = now_s();
					r = fill_status(fl, fs);
					if (r || !fs->on)
						goto out;
				}
				if (fs->rate) {
					double due = t0 + (double)done / fs->rate;
					double wait = due - now_s();

					if (wait > 0)
						sleep_ms(fl, (long)(wait * 1000));
				}
			}
		}
		cursor = next;
	}
out:
	free(resp);
	return r;
}

static int fill_apply_options(struct filler *fl);

static void *fill_main(void *arg)
{
	struct filler *fl = arg;
	struct fill_state fs;
	char path[PATH_MAX];
	void *buf = NULL;
	uint32_t bs = 0;
	int fd = -1, r;
	bool told = false, applied = false;

	while (!atomic_load(&fl->stop)) {
		r = fill_status(fl, &fs);
		if (!r && !applied) {
			r = fill_apply_options(fl);
			if (r)
				err("%s: cannot set the fill switch or rate",
				    fl->name);
			applied = !r;
			if (!r)
				r = fill_status(fl, &fs);
		}
		if (r) {
			sleep_ms(fl, 1000);
			continue;
		}
		if (fs.present >= fs.total) {
			if (!told)
				info("%s: all %" PRIu64 " blocks present",
				     fs.name, fs.total);
			told = true;
			atomic_store(&fl->complete, true);
			if (fl->exit_when_complete)
				break;
			sleep_ms(fl, 1000);
			continue;
		}
		told = false;
		atomic_store(&fl->complete, false);
		if (!fs.on) {
			sleep_ms(fl, 1000);
			continue;
		}
		if (fd < 0) {
			bs = fs.block_size;
			free(buf);
			buf = NULL;
			if (posix_memalign(&buf, 4096, bs)) {
				buf = NULL;
				sleep_ms(fl, 1000);
				continue;
			}
			snprintf(path, sizeof(path), "%s/%s", dm_dir(), fs.name);
			fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
			if (fd < 0) {
				err("fill: open %s: %m", path);
				sleep_ms(fl, 1000);
				continue;
			}
			info("fill: %s: %" PRIu64 " of %" PRIu64 " blocks absent",
			     fs.name, fs.total - fs.present, fs.total);
		}
		r = fill_pass(fl, &fs, fd, buf, bs);
		if (r) {
			err("fill: %s", strerror(-r));
			/* The device may have been reloaded: reopen it. */
			close(fd);
			fd = -1;
			sleep_ms(fl, 1000);
		}
	}
	if (fd >= 0)
		close(fd);
	free(buf);
	atomic_store(&fl->exited, true);
	return NULL;
}

/* --fill and --fill-rate, once the device exists. */
static int fill_apply_options(struct filler *fl)
{
	char msg[64], resp[16];

	if (fl->rate) {
		snprintf(msg, sizeof(msg), "fill rate %" PRIu64, fl->rate);
		if (dm_run(fl, DM_DEVICE_TARGET_MSG, msg, resp, sizeof(resp),
			   NULL))
			return -EIO;
	}
	if (fl->enable && dm_run(fl, DM_DEVICE_TARGET_MSG, "fill on", resp,
				 sizeof(resp), NULL))
		return -EIO;
	return 0;
}

static int fill_start(struct filler *fl)
{
	int r = -pthread_create(&fl->thread, NULL, fill_main, fl);

	if (r) {
		err("fill thread: %s", strerror(-r));
		return r;
	}
	fl->started = true;
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
"Usage: streamd [options] <dm device name> <NBD URI>\n"
"\n"
"Fetch absent blocks of a dm-stream device from an NBD server.\n"
"\n"
"  -q, --queue-depth N   reads in flight to the server (default %d)\n"
"  -f, --fill            switch the background fill on (see streamctl fill)\n"
"  -r, --fill-rate R     limit the fill to R bytes/s (K, M, G suffixes)\n"
"  -x, --exit-when-complete\n"
"                        exit once every block is present\n"
"  -u, --uuid            <dm device name> is a dm uuid\n"
"  -i, --image-id ID     the image's identity; the device refuses the\n"
"                        helper unless it matches the id its last image\n"
"                        update recorded\n"
"  -s, --stats FILE      write counters to FILE on SIGUSR1 and at exit\n"
"  -d, --daemon          detach and log to syslog\n"
"  -p, --pidfile FILE    write the process id to FILE\n"
"  -v, --verbose         log every request\n"
"  -h, --help            this text\n"
"  -V, --version         print the channel ABI version\n"
"\n"
"URI examples: nbd://host:10809/export, nbd+unix:///export?socket=/run/s\n",
		DEFAULT_DEPTH);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "queue-depth", required_argument, NULL, 'q' },
		{ "fill", no_argument, NULL, 'f' },
		{ "fill-rate", required_argument, NULL, 'r' },
		{ "exit-when-complete", no_argument, NULL, 'x' },
		{ "uuid", no_argument, NULL, 'u' },
		{ "image-id", required_argument, NULL, 'i' },
		{ "stats", required_argument, NULL, 's' },
		{ "daemon", no_argument, NULL, 'd' },
		{ "pidfile", required_argument, NULL, 'p' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 }
	};
	struct streamd sd = { .depth = DEFAULT_DEPTH };
	struct filler fl = { 0 };
	const char *pidfile = NULL;
	bool daemonize = false;
	struct sigaction sa;
	char *end;
	int c, r;

	while ((c = getopt_long(argc, argv, "q:fr:xui:s:dp:vhV", opts,
				NULL)) != -1) {
		switch (c) {
		case 'q':
			errno = 0;
			sd.depth = strtoul(optarg, &end, 10);
			if (errno || *end || !sd.depth || sd.depth > 4096) {
				err("invalid queue depth '%s' (1-4096)",
				    optarg);
				return 2;
			}
			break;
		case 'f':
			fl.enable = true;
			break;
		case 'r':
			if (parse_size(optarg, &fl.rate) || !fl.rate) {
				err("invalid fill rate '%s'", optarg);
				return 2;
			}
			break;
		case 'x':
			fl.exit_when_complete = true;
			break;
		case 'u':
			sd.by_uuid = true;
			break;
		case 'i':
			if (strlen(optarg) >= DM_STREAM_IMAGE_ID_LEN) {
				fprintf(stderr, "streamd: --image-id: at most %d characters\n",
					DM_STREAM_IMAGE_ID_LEN - 1);
				return 1;
			}
			sd.image_id = optarg;
			break;
		case 's':
			sd.stats_path = optarg;
			break;
		case 'd':
			daemonize = true;
			break;
		case 'p':
			pidfile = optarg;
			break;
		case 'v':
			sd.verbose = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("streamd channel ABI %d\n", DM_STREAM_VERSION);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (argc - optind != 2) {
		usage(stderr);
		return 2;
	}
	sd.name = argv[optind];
	sd.uri = argv[optind + 1];
	if (strlen(sd.name) >= DM_STREAM_UUID_LEN) {
		err("device name too long: %s", sd.name);
		return 2;
	}

	if (daemonize) {
		if (daemon(0, 0) < 0) {
			err("daemon: %m");
			return 1;
		}
		openlog("streamd", LOG_PID, LOG_DAEMON);
		log_to_syslog = true;
	}
	if (pidfile) {
		FILE *f = fopen(pidfile, "w");

		if (!f || fprintf(f, "%d\n", getpid()) < 0 || fclose(f)) {
			err("write %s: %m", pidfile);
			return 1;
		}
	}

	/* We serve I/O that reclaim may wait on: see prctl(2). */
	if (prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) < 0)
		err("PR_SET_IO_FLUSHER: %m (continuing)");
	if (mlockall(MCL_CURRENT | MCL_FUTURE) < 0)
		err("mlockall: %m (continuing)");

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	fl.name = sd.name;
	fl.by_uuid = sd.by_uuid;
	sd.fill = &fl;
	r = fill_start(&fl);
	if (!r)
		r = run(&sd);
	got_stop = 1;
	atomic_store(&fl.stop, true);
	if (fl.started && atomic_load(&fl.exited))
		pthread_join(fl.thread, NULL);
	write_stats(&sd);
	disconnect(&sd);
	detach(&sd);
	free(sd.zero_map);
	if (r) {
		err("exiting: %s", strerror(-r));
		return 1;
	}
	return 0;
}
