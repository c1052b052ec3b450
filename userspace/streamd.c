// SPDX-License-Identifier: GPL-2.0
/*
 * streamd - fetch absent blocks of a dm-stream device from an NBD server.
 *
 *   streamd [options] <dm device name> <NBD URI>
 *
 * Design: one thread, one poll(2) loop over two descriptors, the target's
 * channel (/dev/dm-stream, see kernel/uapi/dm-stream.h) and the libnbd
 * connection.  Requests read from the kernel become libnbd asynchronous
 * preads, up to --queue-depth in flight; each completion writes the blocks
 * back to the kernel in a single write(2) (header then payload, contiguous:
 * the channel takes exactly one reply per write; the payload starts a
 * page, so the kernel writes it to the data device from our pages in
 * place, and the write(2) returns once that write has completed).  A
 * request names a run of adjacent blocks (at most --max-request bytes,
 * agreed at attach), read with one pread.
 *
 * Blocks that the server's base:allocation metadata reports as reading as
 * zero are answered with DM_STREAM_REPLY_ZERO and never transferred.  The
 * zero map is built once per connection, by asynchronous block-status
 * requests interleaved with the reads (a short reply moves the cursor by
 * what it covered); a request for a block it does not cover yet waits in
 * the queue until it does (or the map fails), others go on.  The zero
 * blocks at either end of a request are answered apart, untransferred;
 * zero blocks between data blocks are read with them.
 *
 * Requests: a pool of --queue-depth requests, each with a buffer of
 * --max-request bytes,
 * is allocated at start-up; the channel is read only for as many requests
 * as the pool has free, so a request taken from the kernel always has
 * somewhere to go and nothing is allocated while serving.  A reply the
 * kernel does not take is kept and sent again (every 100 ms), unless the
 * kernel says the request timed out (ENOENT) or we were detached (ENODEV).
 *
 * Failures: a read that fails while the connection is alive is retried a few
 * times; a request of several blocks is then read again in pieces
 * (split()), and a block that still fails is reported to the kernel as
 * -EIO, alone.  A lost connection is never
 * reported: every request in flight goes back to the local queue, and the
 * helper reconnects and reissues them.  A connection is lost when libnbd
 * says so, when TCP keepalive gives up, when the handshake does not finish
 * within --connect-timeout, or when reads are outstanding and none has
 * completed for --io-timeout (a stopped server, a partitioned network).
 * Reconnects back off exponentially with jitter (100 ms .. 5 s); the
 * backoff is reset only by a successful read, so a server that accepts and
 * dies is not hammered.  An export of the wrong size is never used: the
 * helper says so loudly and keeps retrying until the right image is back.
 * If the target goes away (table reload, removal) the helper re-attaches
 * to the device of the same name; requests it held are requeued by the
 * kernel.
 *
 * Once it has attached, streamd does not exit on its own (only on
 * SIGTERM/SIGINT, or --exit-when-complete).  What is permanent at start-up
 * exits with status 1 and a message instead of looping: a malformed URI,
 * no /dev/dm-stream, no such device.
 *
 * Memory: the helper serves I/O the kernel may need to reclaim memory, so it
 * sets PR_SET_IO_FLUSHER and locks its pages.
 *
 * Background fill: a second thread (struct filler) makes every absent
 * block present, 4 MiB at a time, by asking the kernel to fetch them
 * (DM_STREAM_IOC_FETCH on its own /dev/dm-stream file): the kernel queues
 * background fetches that the main loop serves like any other, sending
 * demand fetches first (BG_DEPTH), and the thread waits for each chunk.
 * The data goes from the reply to the data device only.  With a module
 * older than that ioctl (or STREAMD_FILL_READ=1) it reads the blocks
 * through the dm device with O_DIRECT and the idle I/O priority instead,
 * which the target turns into the same background fetches.
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
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <linux/ioprio.h>

#include <libdevmapper.h>
#include <libnbd.h>
#include <systemd/sd-daemon.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "uapi/dm-stream.h"
#include "dm.h"
#include "parse.h"
#include "reqpool.h"
#include "tls.h"

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

#define DEFAULT_DEPTH	32
#define DEFAULT_MAX_REQUEST	(512 << 10)
#define MAX_RETRIES	3
#define BATCH		64
/*
 * Background requests (DM_STREAM_REQ_BACKGROUND: the fill's) in flight at
 * most, issued only when no demand request waits: a demand read queues
 * behind at most this many (1 MiB with the default --max-request) on the
 * connection, and two keep the server busy between them.
 */
#define BG_DEPTH	2
#define BACKOFF_MIN_MS	100
#define BACKOFF_MAX_MS	5000
#define DEFAULT_IO_TIMEOUT	30	/* s without progress: reconnect */
#define DEFAULT_CONNECT_TIMEOUT	10	/* s for connect + handshake */
#define REPLY_RETRY_MS	100
#define TLS_GIVE_UP	3	/* TLS failures in a row at start-up: exit */
#define ZERO_MAP_CHUNK	(1ULL << 30)


struct stats {
	uint64_t requests;
	uint64_t background;		/* requests with the BACKGROUND flag */
	uint64_t fetched;		/* blocks read from the server */
	uint64_t zero;			/* answered as zero, not transferred */
	uint64_t bytes;			/* payload bytes read from the server */
	uint64_t read_errors;
	uint64_t reconnects;
	uint64_t reattaches;
	uint64_t stalls;		/* connections dropped for no progress */
	uint64_t reply_retries;		/* replies the kernel did not take */
	uint64_t fill_failed;		/* fill reads that failed (retried) */
};

struct streamd {
	const char *name;
	const char *uri;
	const char *stats_path;
	unsigned int depth;
	uint64_t max_request;		/* bytes, --max-request */
	uint32_t max_blocks;		/* per request, agreed at attach */
	unsigned int io_timeout;	/* s, 0: never */
	unsigned int connect_timeout;	/* s */
	bool verbose;
	bool notified;		/* READY=1 sent to systemd (first attach) */
	bool use_syslog;
	bool by_uuid;
	const char *image_id;		/* --image-id, or NULL */
	struct su_tls tls;		/* --tls-*, files kept (see tls.h) */
	uint64_t image_size;		/* export size once connected, else 0 */

	int fd;				/* /dev/dm-stream, -1 when detached */
	/*
	 * /dev, opened at start-up: after an initramfs switch_root our
	 * root's /dev is an empty directory (devtmpfs moved to the new
	 * root), and a re-attach must still find dm-stream.
	 */
	int dev_dirfd;
	uint32_t block_size;
	uint64_t nr_blocks;

	bool attached_once;		/* past start-up: never exit */
	struct nbd_handle *nbd;		/* NULL while disconnected */
	uint64_t conn_gen;
	bool conn_lost;			/* a read failed for connection reasons */
	unsigned int backoff_ms;
	struct timespec next_connect;
	struct timespec last_progress;	/* last completion, or first issue */
	int64_t bad_size;		/* export size last refused, logged once */
	unsigned int tls_failures;	/* in a row, before the first connect */

	uint8_t *zero_map;		/* bit per block: reads as zero */
	uint64_t zmap_off;		/* covered up to here (bytes) */
	uint64_t zmap_end;		/* the in-flight request's extents end */
	bool zmap_busy;			/* a block-status request in flight */
	bool zmap_done;

	struct su_reqpool pool;		/* depth requests, allocated once */
	struct su_reqq queue;		/* to issue: demand */
	struct su_reqq bg_queue;	/* to issue after queue: background */
	struct su_req *inflight;	/* issued on the current connection */
	unsigned int nr_inflight;
	unsigned int nr_bg_inflight;	/* of which background */
	struct su_req *replies;		/* replies to send again */

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
	int dev_dirfd;			/* main's /dev (see struct streamd) */
	/*
	 * Fill by reading through the device (STREAMD_FILL_READ=1, or a
	 * module without DM_STREAM_IOC_FETCH); else ask the kernel to fetch.
	 * Set before the thread starts; then the thread's own.
	 */
	bool fill_read;
	pthread_t thread;
	bool started;
	atomic_bool complete;		/* thread -> main */
	atomic_bool stop;		/* main -> thread */
	atomic_bool exited;		/* thread -> main */
	atomic_uint_fast64_t failed;	/* thread -> main: reads that failed */
	/*
	 * thread -> main: an eventfd in the main loop's poll set, written
	 * when complete or exited turns true, so that the main loop acts on
	 * them at once instead of at its next timeout (which added up to a
	 * second to every --exit-when-complete fill).  -1: none (the main
	 * loop then sees them within its timeout).
	 */
	int wake_fd;
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
		char line[1024];

		/* one write: /dev/kmsg (the initramfs) makes a record of each */
		vsnprintf(line, sizeof(line), fmt, ap);
		fprintf(stderr, "streamd: %s\n", line);
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
	fprintf(f, "requests=%" PRIu64 "\nbackground=%" PRIu64
		"\nfetched=%" PRIu64 "\nzero=%" PRIu64
		"\nbytes=%" PRIu64 "\nread_errors=%" PRIu64
		"\nreconnects=%" PRIu64 "\nreattaches=%" PRIu64
		"\nstalls=%" PRIu64 "\nreply_retries=%" PRIu64
		"\nfill_failed=%" PRIu64 "\n",
		sd->st.requests, sd->st.background, sd->st.fetched,
		sd->st.zero, sd->st.bytes,
		sd->st.read_errors, sd->st.reconnects, sd->st.reattaches,
		sd->st.stalls, sd->st.reply_retries,
		atomic_load(&sd->fill->failed));
	if (sd->stats_path) {
		if (fclose(f) || rename(tmp, sd->stats_path))
			err("write %s: %m", sd->stats_path);
	}
}

/* --- kernel channel ---------------------------------------------------- */

static void detach(struct streamd *sd)
{
	struct su_req *r;

	if (sd->fd >= 0)
		close(sd->fd);
	sd->fd = -1;
	/* The kernel requeues what we held; forget it here. */
	while ((r = su_reqq_pop(&sd->queue)))
		su_req_put(&sd->pool, r);
	while ((r = su_reqq_pop(&sd->bg_queue)))
		su_req_put(&sd->pool, r);
	while ((r = sd->replies)) {
		sd->replies = r->next;
		su_req_put(&sd->pool, r);
	}
	for (r = sd->inflight; r; r = r->next)
		r->conn_gen = 0;	/* completions will be dropped */
}

/*
 * Returns 0, or -errno: -ENOENT no such device (yet), -EBUSY another
 * helper is attached, -ENXIO no /dev/dm-stream.
 */
static int attach(struct streamd *sd)
{
	struct dm_stream_attach a;
	int fd, r;

	fd = openat(sd->dev_dirfd, DM_STREAM_DEVNAME,
		    O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		r = errno == ENOENT ? -ENXIO : -errno;
		/* once attached, the caller says "waiting for" once */
		if (!sd->attached_once)
			err("open /dev/%s: %m%s", DM_STREAM_DEVNAME,
			    errno == ENOENT ? " (is dm-stream loaded?)" : "");
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
	/*
	 * Blocks per request: before the first attach the block size is
	 * not known, so ask as if blocks were 4 KiB (the smallest) and
	 * attach again below if that gave more than --max-request.
	 */
	a.max_blocks = sd->max_blocks ? sd->max_blocks :
		(uint32_t)(sd->max_request / 4096);
	if (ioctl(fd, DM_STREAM_IOC_ATTACH, &a) < 0) {
		r = -errno;
		if (r == -EMEDIUMTYPE)
			err("%s: the device refuses image %s (%s%s): see the kernel log",
			    sd->name, sd->uri, sd->image_id ? "id " : "size",
			    sd->image_id ? sd->image_id : "");
		if (r == -EPROTO)
			err("/dev/%s refuses channel ABI version %d: the dm-stream module and streamd are from different releases",
			    DM_STREAM_DEVNAME, DM_STREAM_VERSION);
		close(fd);
		return r;
	}
	if (!sd->max_blocks && a.max_blocks > 1 &&
	    (uint64_t)a.max_blocks * a.block_size > sd->max_request) {
		sd->max_blocks = sd->max_request / a.block_size ?
			(uint32_t)(sd->max_request / a.block_size) : 1;
		close(fd);
		return attach(sd);
	}
	if (sd->max_blocks && a.max_blocks != sd->max_blocks) {
		err("%s: the kernel takes %u blocks per request, not %u",
		    sd->name, a.max_blocks, sd->max_blocks);
		close(fd);
		return -EINVAL;
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
	sd->max_blocks = a.max_blocks;
	info("attached to %s: %llu blocks of %u bytes, %llu present, up to %u blocks a request",
	     sd->name, (unsigned long long)a.nr_blocks, a.block_size,
	     (unsigned long long)a.nr_present, a.max_blocks);
	/*
	 * Ready once the device's misses have someone to go to (Type=notify
	 * units); a no-op without $NOTIFY_SOCKET.  Reattaches only update
	 * the status line.
	 */
	sd_notifyf(0, "%sSTATUS=attached to %s", sd->notified ? "" : "READY=1\n",
		   sd->name);
	sd->notified = true;
	return 0;
}

static void now(struct timespec *t)
{
	clock_gettime(CLOCK_MONOTONIC, t);
}

/*
 * Send one reply for @count blocks from @block of request @tag; the
 * payload (if any) follows the header in @buf.
 */
static int reply_to(struct streamd *sd, void *buf, uint64_t tag,
		    uint64_t block, uint32_t count, int error, bool zero)
{
	struct dm_stream_reply *h = buf;
	size_t len = (error || zero) ? 0 : (size_t)count * sd->block_size;
	ssize_t n;

	if (sd->fd < 0)
		return -ENODEV;
	memset(h, 0, sizeof(*h));
	h->magic = DM_STREAM_MAGIC;
	h->version = DM_STREAM_VERSION;
	h->size = sizeof(*h);
	h->flags = zero ? DM_STREAM_REPLY_ZERO : 0;
	h->error = error;
	h->tag = tag;
	h->block = block;
	h->nr_blocks = count;
	h->len = len;
	n = write(sd->fd, buf, sizeof(*h) + len);
	if (n < 0)
		return -errno;
	if ((size_t)n != sizeof(*h) + len)
		return -EIO;
	return 0;
}

/* Send @r's reply; its payload (if any) is already in r->buf. */
static int reply(struct streamd *sd, struct su_req *r, int error, bool zero)
{
	return reply_to(sd, r->buf, r->tag, r->block, r->count, error, zero);
}

/* The queue @r waits in to be issued: demand or background. */
static struct su_reqq *queue_of(struct streamd *sd, struct su_req *r)
{
	return r->background ? &sd->bg_queue : &sd->queue;
}

/*
 * A request whose read failed whole (after its retries) is read again in
 * pieces (su_req_split(), reqpool.h), so that a bad block of the server
 * fails only itself, not the neighbours the kernel sent with it (a demand
 * read among them would get EIO).  Each piece is answered as a sub-range
 * of the request as soon as it is read.  Pieces get one try each (the
 * range had its retries): a piece that fails is halved, a single block
 * that fails is answered EIO.  So one bad block in a request costs about
 * two reads per halving, and a run of bad blocks one read each.
 *
 * A refused answer (ENOENT) does not end a split: the kernel drops the
 * blocks of a request apart (stream_fetch_cancel_idle() those nobody
 * waits for), and the rest still want their answer.  After a fetch
 * timeout it sends the request's unanswered blocks again under a new
 * tag, and every answer under the old one is refused: two refusals in a
 * row end the split.
 */
static void split(struct streamd *sd, struct su_req *r)
{
	su_req_split(r);
	su_reqq_push_front(queue_of(sd, r), r);
}

/*
 * @r's piece was just answered (@error) or its answer refused
 * (@refused): on to its next piece, if @r is split and any is left.
 */
static bool split_next(struct streamd *sd, struct su_req *r, int error,
		       bool refused)
{
	if (su_req_split_next(r, error, refused)) {
		su_reqq_push_front(queue_of(sd, r), r);
		return true;
	}
	if (r->split_bad > 1)
		err("read block %" PRIu64 "+%u: %u blocks unreadable, reported EIO",
		    r->split_end - r->split_len, r->split_len, r->split_bad);
	return false;
}

/*
 * Answer @r and give it back to the pool (or, split, go on to its next
 * piece), or keep it for another try:
 * only "timed out" (ENOENT) and "detached" (ENODEV) let a reply go.
 */
static void answer(struct streamd *sd, struct su_req *r, int error, bool zero)
{
	int e = reply(sd, r, error, zero);

	/*
	 * The write(2) waits for the data device (a payload written in
	 * place); time spent there is not the server's: restart the clock.
	 */
	if (!e)
		now(&sd->last_progress);
	if (!e || e == -ENOENT || e == -ENODEV) {
		if (e == -ENOENT)
			info("block %" PRIu64 "+%u: the kernel gave up on it (fetch_timeout)",
			     r->block, r->count);
		if (e != -ENODEV && split_next(sd, r, error, e == -ENOENT))
			return;
		su_req_put(&sd->pool, r);
		return;
	}
	if (!r->retries++)
		err("reply block %" PRIu64 "+%u tag %" PRIu64 ": %s; will retry",
		    r->block, r->count, r->tag, strerror(-e));
	sd->st.reply_retries++;
	r->reply_error = error;
	r->reply_zero = zero;
	r->next = sd->replies;
	sd->replies = r;
}

static void retry_replies(struct streamd *sd)
{
	struct su_req *r, *list = sd->replies;

	sd->replies = NULL;
	while ((r = list)) {
		list = r->next;
		answer(sd, r, r->reply_error, r->reply_zero);
	}
}

static bool block_is_zero(struct streamd *sd, uint64_t block)
{
	return sd->zero_map && (sd->zero_map[block / 8] & (1U << (block % 8)));
}

/*
 * Answer @n zero blocks from @block of request @r apart.  1: answered;
 * 0: nothing to answer, or not taken now (they are read with the rest);
 * -1: the request is gone (timed out, detached) and @r went back to the
 * pool.
 */
static int zero_run(struct streamd *sd, struct su_req *r, uint64_t block,
		    uint32_t n)
{
	struct dm_stream_reply h;
	int e;

	if (!n)
		return 0;
	e = reply_to(sd, &h, r->tag, block, n, 0, true);
	if (e == -ENOENT || e == -ENODEV) {
		su_req_put(&sd->pool, r);
		return -1;
	}
	if (e)
		return 0;
	sd->st.zero += n;
	return 1;
}

/*
 * Answer the zero blocks at the ends of @r apart, and leave in @r the
 * blocks to read (first and last not zero).  Returns false when nothing
 * is left to read (all zero, answered; or the request is gone).  A zero
 * answer the kernel does not take now stays in @r, read with the rest.
 */
static bool trim_zero(struct streamd *sd, struct su_req *r)
{
	uint32_t lead = 0, tail = 0;
	int e;

	while (lead < r->count && block_is_zero(sd, r->block + lead))
		lead++;
	if (lead == r->count) {
		sd->st.zero += r->count;
		answer(sd, r, 0, true);
		return false;
	}
	while (block_is_zero(sd, r->block + r->count - 1 - tail))
		tail++;
	e = zero_run(sd, r, r->block, lead);
	if (e < 0)
		return false;
	if (e) {
		r->block += lead;
		r->count -= lead;
	}
	e = zero_run(sd, r, r->block + r->count - tail, tail);
	if (e < 0)
		return false;
	if (e)
		r->count -= tail;
	return true;
}

/* Queue @r to be issued (again): its queue's tail. */
static void requeue(struct streamd *sd, struct su_req *r)
{
	su_reqq_push(queue_of(sd, r), r);
}

/* Take as many requests as the pool has room for. */
static int read_requests(struct streamd *sd)
{
	struct dm_stream_request reqs[BATCH];
	unsigned int want = sd->pool.nr_free < BATCH ? sd->pool.nr_free : BATCH;
	ssize_t n, i;
	struct su_req *r;

	if (!want)
		return 0;
	n = read(sd->fd, reqs, want * sizeof(reqs[0]));
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
		    q->block >= sd->nr_blocks || !q->nr_blocks ||
		    q->nr_blocks > sd->max_blocks ||
		    q->nr_blocks > sd->nr_blocks - q->block) {
			err("malformed request from kernel (magic %x version %u type %u block %llu+%u)",
			    q->magic, q->version, q->type,
			    (unsigned long long)q->block, q->nr_blocks);
			continue;
		}
		r = su_req_get(&sd->pool);	/* cannot fail: want <= nr_free */
		r->tag = q->tag;
		r->block = q->block;
		r->count = q->nr_blocks;
		r->background = q->flags & DM_STREAM_REQ_BACKGROUND;
		sd->st.requests++;
		sd->st.background += r->background;
		dbg(sd, "request block %" PRIu64 "+%u tag %" PRIu64 "%s",
		    r->block, r->count, r->tag,
		    r->background ? " (background)" : "");
		requeue(sd, r);
	}
	return 0;
}

/* --- NBD side ------------------------------------------------------------ */

static long ms_until(const struct timespec *t)
{
	struct timespec n;

	now(&n);
	return (t->tv_sec - n.tv_sec) * 1000 +
		(t->tv_nsec - n.tv_nsec) / 1000000;
}

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
	if (offset > sd->zmap_end)
		sd->zmap_end = offset;
	return 0;
}

static int zmap_done_cb(void *user_data, int *error)
{
	struct streamd *sd = user_data;

	now(&sd->last_progress);
	sd->zmap_busy = false;
	if (*error || sd->zmap_end <= sd->zmap_off) {
		/* a failure, or a reply that covered nothing: stop here */
		if (*error)
			info("block status at %" PRIu64 ": %s; zero blocks past it will be transferred",
			     sd->zmap_off, strerror(*error));
		sd->zmap_done = true;
		return 1;
	}
	/* A short reply moves the cursor by what it covered. */
	sd->zmap_off = sd->zmap_end;
	if (sd->zmap_off >= sd->nr_blocks * (uint64_t)sd->block_size)
		sd->zmap_done = true;
	return 1;
}

/* Start the zero map of a new connection: it is built by zmap_step(). */
/*
 * Forget what the zero map says: it describes the image of one
 * connection, and after a re-attach (an image update) or a reconnect the
 * image may be another.  Until a new map covers a block, it is fetched.
 */
static void zmap_forget(struct streamd *sd)
{
	if (sd->zero_map)
		memset(sd->zero_map, 0, (sd->nr_blocks + 7) / 8);
	sd->zmap_off = sd->zmap_end = 0;
	sd->zmap_busy = false;
	sd->zmap_done = true;
}

static void zmap_start(struct streamd *sd)
{
	zmap_forget(sd);
	if (nbd_can_meta_context(sd->nbd, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1) {
		info("server has no base:allocation; zero blocks will be transferred");
		return;
	}
	if (!sd->zero_map)
		sd->zero_map = calloc((sd->nr_blocks + 7) / 8, 1);
	if (sd->zero_map)
		sd->zmap_done = false;
}

/* One block-status request at a time, beside the reads. */
static void zmap_step(struct streamd *sd)
{
	uint64_t size = sd->nr_blocks * (uint64_t)sd->block_size, count;

	if (!sd->nbd || sd->zmap_done || sd->zmap_busy)
		return;
	count = size - sd->zmap_off;
	if (count > ZERO_MAP_CHUNK)
		count = ZERO_MAP_CHUNK;
	/* the stall clock covers it like a read */
	if (!sd->nr_inflight)
		now(&sd->last_progress);
	sd->zmap_busy = true;
	if (nbd_aio_block_status(sd->nbd, count, sd->zmap_off,
				 (nbd_extent_callback) {
					.callback = extent_cb,
					.user_data = sd },
				 (nbd_completion_callback) {
					.callback = zmap_done_cb,
					.user_data = sd },
				 0) == -1) {
		err("block status at %" PRIu64 ": %s", sd->zmap_off,
		    nbd_get_error());
		sd->zmap_busy = false;
		sd->zmap_done = true;
	}
}

static void disconnect(struct streamd *sd)
{
	struct su_req *r, *next;

	if (!sd->nbd)
		return;
	/* Everything in flight is reissued on the next connection. */
	sd->conn_gen++;
	sd->conn_lost = false;
	nbd_close(sd->nbd);
	sd->nbd = NULL;
	zmap_forget(sd);
	for (r = sd->inflight; r; r = next) {
		next = r->next;
		if (sd->fd >= 0 && r->conn_gen) {
			r->done = false;
			requeue(sd, r);
		} else {
			su_req_put(&sd->pool, r);
		}
	}
	sd->inflight = NULL;
	sd->nr_inflight = 0;
	sd->nr_bg_inflight = 0;
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
	zmap_forget(sd);	/* also when we were not connected */
}

/* Exponential backoff with +-25 % jitter, so that a fleet spreads out. */
static void schedule_connect(struct streamd *sd)
{
	long ms;

	sd->backoff_ms = sd->backoff_ms ? sd->backoff_ms * 2 : BACKOFF_MIN_MS;
	if (sd->backoff_ms > BACKOFF_MAX_MS)
		sd->backoff_ms = BACKOFF_MAX_MS;
	ms = sd->backoff_ms * 3 / 4 + random() % (sd->backoff_ms / 2 + 1);
	now(&sd->next_connect);
	sd->next_connect.tv_nsec += ms * 1000000L;
	sd->next_connect.tv_sec += sd->next_connect.tv_nsec / 1000000000L;
	sd->next_connect.tv_nsec %= 1000000000L;
}

/* TCP keepalive, so that a silent peer is found without I/O (TCP only). */
static void keepalive(int fd)
{
	int one = 1, idle = 10, intvl = 5, cnt = 3, domain;
	socklen_t len = sizeof(domain);

	if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) ||
	    (domain != AF_INET && domain != AF_INET6))
		return;
	if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl)) ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt)))
		err("TCP keepalive: %m (continuing)");
}

/* Drive an asynchronous connect until ready, failed or @deadline. */
static int connect_wait(struct nbd_handle *h, const struct timespec *deadline)
{
	struct pollfd pfd;
	unsigned int dir;
	long wait;
	int r;

	while (nbd_aio_is_connecting(h) == 1) {
		wait = ms_until(deadline);
		if (wait <= 0 || got_stop)
			return -ETIMEDOUT;
		pfd.fd = nbd_aio_get_fd(h);
		dir = nbd_aio_get_direction(h);
		pfd.events = (dir & LIBNBD_AIO_DIRECTION_READ ? POLLIN : 0) |
			     (dir & LIBNBD_AIO_DIRECTION_WRITE ? POLLOUT : 0);
		r = poll(&pfd, 1, wait > 1000 ? 1000 : wait);
		if (r < 0 && errno != EINTR)
			return -errno;
		if (r <= 0)
			continue;
		/*
		 * A failed non-blocking connect reports POLLOUT|POLLERR|
		 * POLLHUP, and libnbd's connecting and sending states take
		 * only a write notification.
		 */
		if ((dir & LIBNBD_AIO_DIRECTION_WRITE) &&
		    (pfd.revents & (POLLOUT | POLLHUP | POLLERR)))
			r = nbd_aio_notify_write(h);
		else
			r = nbd_aio_notify_read(h);
		if (r == -1)
			return -(nbd_get_errno() ? nbd_get_errno() : EIO);
	}
	return nbd_aio_is_ready(h) == 1 ? 0 : -ECONNRESET;
}

/*
 * Returns 0, -EAGAIN (retry later) or, before the first attach only,
 * -EINVAL for a URI libnbd cannot use.
 */
static int nbd_connect(struct streamd *sd)
{
	uint64_t want = sd->nr_blocks * (uint64_t)sd->block_size;
	struct timespec deadline;
	struct nbd_handle *h;
	int64_t size;
	int r;

	h = nbd_create();
	if (!h) {
		err("nbd_create: %s", nbd_get_error());
		return -EAGAIN;
	}
	nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
	/*
	 * No zeroing of every read buffer first (a memset of each byte
	 * fetched, 8% of the guest's CPU in a whole-image fill): the
	 * buffers are the request pool's, zeroed once and then only ever
	 * holding this image's blocks, and a read that fails is never
	 * answered with its buffer (reap() replies -EIO).  A server that reports success without
	 * sending every byte can leave a block wrong either way, as one
	 * that sends wrong bytes can: zeroes would be no more right.
	 */
	if (nbd_set_pread_initialize(h, false) == -1)
		dbg(sd, "nbd_set_pread_initialize: %s", nbd_get_error());
	if (su_tls_apply(&sd->tls, h) == -1) {
		err("TLS settings: %s", nbd_get_error());
		nbd_close(h);
		return sd->conn_gen ? -EAGAIN : -EKEYREJECTED;
	}
	now(&deadline);
	deadline.tv_sec += sd->connect_timeout;
	if (nbd_aio_connect_uri(h, sd->uri) == -1) {
		r = nbd_get_errno();
		err("connect %s: %s", sd->uri, nbd_get_error());
		nbd_close(h);
		/* a URI that does not parse will never connect */
		return (r == EINVAL || r == EPROTONOSUPPORT || r == ENOTSUP) &&
		       !sd->conn_gen ? -EINVAL : -EAGAIN;
	}
	r = connect_wait(h, &deadline);
	if (r) {
		const char *msg = nbd_get_error();

		if (r == -ETIMEDOUT)
			err("connect %s: no handshake within %u s (server over its client limit?)",
			    sd->uri, sd->connect_timeout);
		else
			err("connect %s: %s", sd->uri, msg ? msg : strerror(-r));
		/*
		 * TLS refused before we ever connected (wrong key, untrusted
		 * certificate, TLS on one side only) will not change by
		 * waiting; but a server restarting mid-handshake looks the
		 * same once: exit only after TLS_GIVE_UP such failures in a
		 * row, nothing else in between.
		 */
		if (r != -ETIMEDOUT && !sd->conn_gen && msg &&
		    ((su_tls_wanted(&sd->tls) && su_tls_error(msg)) ||
		     strstr(msg, "requires TLS"))) {
			if (++sd->tls_failures >= TLS_GIVE_UP) {
				nbd_close(h);
				return -EKEYREJECTED;
			}
		} else {
			sd->tls_failures = 0;
		}
		nbd_close(h);
		return -EAGAIN;
	}
	size = nbd_get_size(h);
	if (size < 0 || (uint64_t)size != want) {
		/* Never mix images: wait for the right one. */
		if (size != sd->bad_size)
			err("%s: export is %" PRId64 " bytes but %s needs %" PRIu64
			    ": NOT USING IT; retrying until the right image is served",
			    sd->uri, size, sd->name, want);
		sd->bad_size = size;
		nbd_close(h);
		return -EAGAIN;
	}
	sd->bad_size = 0;
	keepalive(nbd_aio_get_fd(h));
	sd->image_size = size;
	sd->nbd = h;
	now(&sd->last_progress);
	if (sd->conn_gen++)
		sd->st.reconnects++;
	zmap_start(sd);
	info("connected to %s (%" PRId64 " bytes)", sd->uri, size);
	return 0;
}

static int pread_done(void *user_data, int *error)
{
	struct su_req *r = user_data;

	r->done = true;
	r->error = *error;
	return 1;
}

/*
 * The next request to issue: a demand one, else a background one if fewer
 * than BG_DEPTH are in flight; NULL if none may go now.
 */
static struct su_req *next_to_issue(struct streamd *sd)
{
	struct su_req *r = su_reqq_pop(&sd->queue);

	if (!r && sd->nr_bg_inflight < BG_DEPTH)
		r = su_reqq_pop(&sd->bg_queue);
	return r;
}

/* Put @held back at the head of @q, in their order. */
static void restore_held(struct su_reqq *q, struct su_reqq *held)
{
	struct su_req *r;

	if (!held->head)
		return;
	while ((r = su_reqq_pop(q)))
		su_reqq_push(held, r);
	while ((r = su_reqq_pop(held)))
		su_reqq_push(q, r);
}

static void issue(struct streamd *sd)
{
	struct su_reqq held, held_bg;
	struct su_req *r;
	int64_t c;

	su_reqq_init(&held);
	su_reqq_init(&held_bg);
	while (sd->nbd && sd->nr_inflight < sd->depth &&
	       (r = next_to_issue(sd))) {
		/*
		 * While the zero map is being built, a block it does not
		 * cover yet waits for it (block-status answers come in
		 * milliseconds), so that a zero block is never transferred;
		 * the requests behind it go on.
		 */
		if (!sd->zmap_done &&
		    (r->block + r->count) * (uint64_t)sd->block_size >
		    sd->zmap_off) {
			su_reqq_push(r->background ? &held_bg : &held, r);
			continue;
		}
		/* A split request's ends were trimmed before (split()). */
		if (!r->split_end && !trim_zero(sd, r))
			continue;
		r->done = false;
		r->error = 0;
		r->conn_gen = sd->conn_gen;
		c = nbd_aio_pread(sd->nbd,
				  r->buf + sizeof(struct dm_stream_reply),
				  (size_t)r->count * sd->block_size,
				  r->block * (uint64_t)sd->block_size,
				  (nbd_completion_callback) {
					.callback = pread_done,
					.user_data = r },
				  0);
		if (c == -1) {
			err("pread block %" PRIu64 "+%u: %s", r->block,
			    r->count, nbd_get_error());
			/* Back to the front; the connection is checked next. */
			su_reqq_push_front(queue_of(sd, r), r);
			sd->conn_lost = true;
			break;
		}
		/* The stall clock starts with the first read outstanding. */
		if (!sd->nr_inflight)
			now(&sd->last_progress);
		r->next = sd->inflight;
		sd->inflight = r;
		sd->nr_inflight++;
		sd->nr_bg_inflight += r->background;
	}
	/* The held requests first, in their order, then the rest. */
	restore_held(&sd->queue, &held);
	restore_held(&sd->bg_queue, &held_bg);
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
	struct su_req **pp = &sd->inflight, *r;

	while ((r = *pp)) {
		if (!r->done) {
			pp = &r->next;
			continue;
		}
		*pp = r->next;
		sd->nr_inflight--;
		sd->nr_bg_inflight -= r->background;
		now(&sd->last_progress);
		if (!r->conn_gen) {		/* target went away */
			su_req_put(&sd->pool, r);
			continue;
		}
		if (!r->error) {
			sd->st.fetched += r->count;
			sd->st.bytes += (uint64_t)r->count * sd->block_size;
			/* The server works: the next reconnect starts fast. */
			sd->backoff_ms = 0;
			r->retries = 0;
			answer(sd, r, 0, false);
		} else if (is_connection_error(r->error)) {
			/* Not the block's fault: reconnect and reissue. */
			dbg(sd, "block %" PRIu64 "+%u: %s; will reissue",
			    r->block, r->count, strerror(r->error));
			sd->conn_lost = true;
			requeue(sd, r);
		} else if (r->split_end && su_req_split_halve(r)) {
			/* a piece: halved at once (see split()) */
			su_reqq_push_front(queue_of(sd, r), r);
		} else if (r->split_end || ++r->retries > MAX_RETRIES) {
			if (r->count > 1) {
				err("read block %" PRIu64 "+%u: %s; reading it again in parts",
				    r->block, r->count, strerror(r->error));
				split(sd, r);
				continue;
			}
			sd->st.read_errors++;
			if (!r->split_bad)
				err("read block %" PRIu64 "+%u: %s; reporting EIO",
				    r->block, r->count, strerror(r->error));
			r->retries = 0;
			answer(sd, r, -EIO, false);
		} else {
			dbg(sd, "retry block %" PRIu64 "+%u", r->block,
			    r->count);
			requeue(sd, r);
		}
	}
}

/* Reads outstanding and none completed for io_timeout: a dead server. */
static bool stalled(struct streamd *sd)
{
	struct timespec t = sd->last_progress;

	if (!sd->nbd || !sd->io_timeout ||
	    (!sd->nr_inflight && !sd->zmap_busy))
		return false;
	t.tv_sec += sd->io_timeout;
	return ms_until(&t) <= 0;
}

/* --- main loop ----------------------------------------------------------- */

/*
 * Attach (again).  Returns 0 when attached, 1 to try again later, or a
 * -errno that ends streamd: only before the first attach, for what will
 * not change by waiting.
 */
static int try_attach(struct streamd *sd, bool *warned)
{
	int r = attach(sd);

	if (!r) {
		*warned = false;
		if (!sd->pool.reqs) {
			size_t len = (size_t)sd->max_blocks * sd->block_size;

			r = su_reqpool_init(&sd->pool, sd->depth,
					    sizeof(struct dm_stream_reply),
					    len);
			if (r) {
				err("no memory for %u requests of %zu bytes",
				    sd->depth, len);
				return r;
			}
		}
		sd->attached_once = true;
		return 0;
	}
	if (!sd->attached_once) {
		if (r == -ENXIO)
			return r;
		if (r == -ENOENT) {
			err("%s: no such stream device", sd->name);
			return r;
		}
	}
	if (!*warned)
		info("waiting for %s: %s", sd->name, strerror(-r));
	*warned = true;
	return 1;
}

static int run(struct streamd *sd)
{
	struct timespec stop_by = { 0, 0 };
	bool warned = false;
	int r;

	su_reqq_init(&sd->queue);
	su_reqq_init(&sd->bg_queue);
	sd->fd = -1;
	for (;;) {
		struct pollfd pfd[3];
		int nfds = 0, timeout = 1000, dm_idx = -1, nbd_idx = -1;
		int fill_idx = -1;
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
				now(&stop_by);
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
			r = try_attach(sd, &warned);
			if (r < 0)
				return r;
			if (r) {
				usleep(200000);
				continue;
			}
		}
		if (sd->replies)
			retry_replies(sd);
		if (!sd->nbd && ms_until(&sd->next_connect) <= 0) {
			r = nbd_connect(sd);
			if (r == -EINVAL || r == -EKEYREJECTED)
				return r;
			if (r)
				schedule_connect(sd);
		}

		zmap_step(sd);
		issue(sd);
		if (stalled(sd)) {
			sd->st.stalls++;
			err("%s: no reply to %u reads%s for %u s; reconnecting",
			    sd->uri, sd->nr_inflight,
			    sd->zmap_busy ? " and block status" : "",
			    sd->io_timeout);
			sd->conn_lost = true;
		}
		if (sd->nbd && (sd->conn_lost || nbd_aio_is_dead(sd->nbd) ||
				nbd_aio_is_closed(sd->nbd))) {
			sd->conn_lost = false;
			err("connection to %s lost; reconnecting", sd->uri);
			reap(sd);
			disconnect(sd);
			schedule_connect(sd);
			continue;
		}
		/* With a full pool: still there, for POLLHUP (a detach). */
		pfd[nfds].fd = sd->fd;
		pfd[nfds].events = sd->pool.nr_free ? POLLIN : 0;
		dm_idx = nfds++;
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
		if (sd->replies && timeout > REPLY_RETRY_MS)
			timeout = REPLY_RETRY_MS;
		if (sd->fill->wake_fd >= 0) {
			pfd[nfds].fd = sd->fill->wake_fd;
			pfd[nfds].events = POLLIN;
			fill_idx = nfds++;
		}

		r = poll(pfd, nfds, timeout);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			/* cannot happen with valid arguments; do not spin */
			err("poll: %m");
			usleep(100000);
			continue;
		}
		if (fill_idx >= 0 && (pfd[fill_idx].revents & POLLIN)) {
			uint64_t n;

			/* Only a wake-up: the loop's top reads the state. */
			if (read(sd->fill->wake_fd, &n, sizeof(n)) < 0 &&
			    errno != EAGAIN)
				err("fill wake-up: %m");
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
				} else if (r) {
					/* the requests stay queued in the kernel */
					err("read /dev/%s: %s; will retry",
					    DM_STREAM_DEVNAME, strerror(-r));
					usleep(REPLY_RETRY_MS * 1000);
				}
			}
		}
	}
	return 0;
}

struct fill_state {
	bool on;
	uint32_t block_size;		/* bytes */
	uint64_t rate, present, total;
	char name[DM_STREAM_NAME_LEN];
};

/* Fill thread: wake the main loop (see filler.wake_fd). */
static void fill_wake(struct filler *fl)
{
	uint64_t one = 1;

	if (fl->wake_fd >= 0 && write(fl->wake_fd, &one, sizeof(one)) < 0 &&
	    errno != EAGAIN)
		err("fill: wake the main loop: %m");
}

static int fill_status(const struct filler *fl, struct fill_state *fs)
{
	struct su_dev d = { .id = fl->name, .by_uuid = fl->by_uuid,
			    .quiet = true };
	struct su_status st;
	int r;

	r = su_dm_status(&d, fs->name, sizeof(fs->name), &st, NULL);
	if (r)
		return r;
	fs->block_size = st.block_sectors * 512;
	fs->present = st.present;
	fs->total = st.total;
	fs->on = st.fill_on;
	fs->rate = st.fill_rate;
	return 0;
}

static int fill_message(const struct filler *fl, const char *msg)
{
	struct su_dev d = { .id = fl->name, .by_uuid = fl->by_uuid };

	return su_dm_message(&d, msg, NULL);
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

struct fill_pass {
	struct filler *fl;
	struct fill_state *fs;
	int fd;			/* the device, or /dev/dm-stream (fetch) */
	void *buf;
	uint32_t bs;
	double t0, checked;
	uint64_t done, failed;
	uint64_t single_until;	/* read one by one below this block */
};

/*
 * Read every block of one absent range; a block that fails is skipped.
 * Reads FILL_BYTES (or one block if larger; under a rate limit, a quarter
 * of a second's worth) at a time: the target parks
 * each block of the read and sends adjacent ones as one request, its
 * readahead keeps the next window in flight, so the chunk's fetches go
 * together instead of one round trip after the other.  (1 MiB chunks, and
 * 16 blocks at most, made a 64 MiB fill of 4 KiB blocks 2.5 times as long
 * as nbdcopy.)  A chunk whose read fails (one bad block fails the whole
 * bio) is read again block by block, to skip only the failing ones.
 */
#define FILL_BYTES	(4u << 20)

static uint64_t fill_chunk(uint32_t bs, uint64_t rate)
{
	uint64_t bytes = FILL_BYTES;

	/* Under a rate limit, a quarter of a second's worth at most. */
	if (rate && rate / 4 < bytes)
		bytes = rate / 4;
	return bytes / bs ? bytes / bs : 1;
}

/*
 * @n more blocks done: once a second, the switch and the rate (-ECANCELED
 * when switched off); then wait as long as the rate limit asks.
 */
static int fill_paced(struct fill_pass *p, uint64_t n)
{
	int r;

	p->done += n * p->bs;
	if (now_s() - p->checked >= 1.0) {
		p->checked = now_s();
		r = fill_status(p->fl, p->fs);
		if (r)
			return r;
		if (!p->fs->on)
			return -ECANCELED;
	}
	if (p->fs->rate) {
		double due = p->t0 + (double)p->done / p->fs->rate;
		double wait = due - now_s();

		if (wait > 0)
			sleep_ms(p->fl, (long)(wait * 1000));
	}
	return 0;
}

/*
 * Ask the kernel to fetch @count blocks from @first (DM_STREAM_IOC_FETCH):
 * with @wait, until none of them is being fetched; *@absent, those still
 * absent then.  -ENOTTY: a module without the ioctl.
 */
static int fill_fetch(struct fill_pass *p, uint64_t first, uint64_t count,
		      bool wait, uint64_t *absent)
{
	struct dm_stream_fetch a = {
		.magic = DM_STREAM_MAGIC,
		.version = DM_STREAM_VERSION,
		.size = sizeof(a),
		.flags = wait ? 0 : DM_STREAM_FETCH_NOWAIT,
		.block = first,
		.nr_blocks = count,
	};

	snprintf(a.id, sizeof(a.id), "%s", p->fs->name);
	if (ioctl(p->fd, DM_STREAM_IOC_FETCH, &a) < 0)
		return -errno;
	if (absent)
		*absent = a.nr_absent;
	return 0;
}

/*
 * The same as fill_range(), without reading: the kernel queues background
 * fetches for each chunk and the main loop answers them; their data goes
 * from the reply to the data device and nowhere else.  Without a rate
 * limit the next chunk is queued before waiting for this one, so that the
 * server is never idle between chunks.
 */
static int fill_range_fetch(struct fill_pass *p, uint64_t first,
			    uint64_t count)
{
	struct filler *fl = p->fl;
	uint64_t b, n_blocks, next, absent;
	int r;

	for (b = first; b < first + count && !atomic_load(&fl->stop);
	     b += n_blocks) {
		uint64_t chunk = fill_chunk(p->bs, p->fs->rate);

		n_blocks = first + count - b;
		if (n_blocks > chunk)
			n_blocks = chunk;
		if (n_blocks > DM_STREAM_FETCH_MAX)
			n_blocks = DM_STREAM_FETCH_MAX;
		next = b + n_blocks;
		if (!p->fs->rate && n_blocks > 1 && next < first + count) {
			/* Errors show in the wait for it. */
			fill_fetch(p, next, first + count - next < n_blocks ?
				   first + count - next : n_blocks, false, NULL);
		}
		r = fill_fetch(p, b, n_blocks, true, &absent);
		if (r == -EAGAIN) {
			/* Suspended, or a reload: again once resumed. */
			sleep_ms(fl, 100);
			n_blocks = 0;
			continue;
		}
		if (r)
			return r;
		if (absent) {
			/*
			 * The server cannot give them now (main's reap()
			 * fails only the bad blocks of a request): later.
			 */
			if (!p->failed)
				err("fill: %" PRIu64 " of blocks %" PRIu64 "+%" PRIu64 " not fetched; skipped, retried later",
				    absent, b, n_blocks);
			p->failed += absent;
			atomic_fetch_add(&fl->failed, absent);
		}
		r = fill_paced(p, n_blocks);
		if (r)
			return r;
	}
	return atomic_load(&fl->stop) ? -ECANCELED : 0;
}

static int fill_range(void *ctx, uint64_t first, uint64_t count)
{
	struct fill_pass *p = ctx;
	struct filler *fl = p->fl;
	uint64_t b, n_blocks;
	int r;

	if (!fl->fill_read)
		return fill_range_fetch(p, first, count);

	for (b = first; b < first + count && !atomic_load(&fl->stop);
	     b += n_blocks) {
		ssize_t n;

		n_blocks = first + count - b;
		if (n_blocks > fill_chunk(p->bs, p->fs->rate))
			n_blocks = fill_chunk(p->bs, p->fs->rate);
		if (p->single_until > b)
			n_blocks = 1;
		errno = 0;
		n = pread(p->fd, p->buf, n_blocks * p->bs, (off_t)b * p->bs);
		if (n != (ssize_t)(n_blocks * p->bs)) {
			r = n < 0 ? -errno : -EIO;
			if (r != -EIO)
				return r;	/* the device, not the block */
			if (n_blocks > 1) {
				/* again one by one, to skip only the bad */
				p->single_until = b + n_blocks;
				n_blocks = 0;
				continue;
			}
			/* the server cannot give it now: later */
			if (!p->failed++)
				err("fill: block %" PRIu64 ": %s; skipped, retried later",
				    b, strerror(-r));
			atomic_fetch_add(&fl->failed, 1);
			continue;
		}
		r = fill_paced(p, n_blocks);
		if (r)
			return r;
	}
	return atomic_load(&fl->stop) ? -ECANCELED : 0;
}

/*
 * One pass over the absent ranges (any answer size).  Returns 0 when the
 * pass ended, with *failed the blocks skipped; -errno on failure.
 */
static int fill_pass(struct filler *fl, struct fill_state *fs, int fd,
		     void *buf, uint32_t bs, uint64_t *failed)
{
	struct su_dev d = { .id = fl->name, .by_uuid = fl->by_uuid };
	struct fill_pass p = { .fl = fl, .fs = fs, .fd = fd, .buf = buf,
			       .bs = bs, .t0 = now_s() };
	int r;

	p.checked = p.t0;
	r = su_dm_for_each_range(&d, "absent", fs->total, fill_range, &p);
	*failed = p.failed;
	return r == -ECANCELED ? 0 : r;
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
	bool told = false, applied = false, told_ro = false;
	long backoff = 0;
	uint64_t failed;

	/*
	 * This thread's reads are background ones: the target sends their
	 * fetches with DM_STREAM_REQ_BACKGROUND, and run() issues demand
	 * fetches before them (see BG_DEPTH).
	 */
	if (syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0,
		    IOPRIO_PRIO_VALUE(IOPRIO_CLASS_IDLE, 0)))
		err("fill: ioprio_set: %m; demand reads may wait behind the fill");

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
		if (fs.present >= fs.total || !fs.on) {
			/* Idle: do not hold the device open (dmsetup remove). */
			if (fd >= 0) {
				close(fd);
				fd = -1;
			}
		}
		if (fs.present >= fs.total) {
			if (!told)
				info("%s: all %" PRIu64 " blocks present",
				     fs.name, fs.total);
			told = true;
			if (!atomic_exchange(&fl->complete, true))
				fill_wake(fl);
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
		if (fd < 0 && !fl->fill_read) {
			bs = fs.block_size;
			/* Needs no buffer, and holds no device open. */
			fd = openat(fl->dev_dirfd, DM_STREAM_DEVNAME,
				    O_RDWR | O_CLOEXEC);
			if (fd < 0) {
				err("fill: open /dev/%s: %m", DM_STREAM_DEVNAME);
				sleep_ms(fl, 1000);
				continue;
			}
			info("fill: %s: %" PRIu64 " of %" PRIu64 " blocks absent",
			     fs.name, fs.total - fs.present, fs.total);
		} else if (fd < 0) {
			bs = fs.block_size;
			free(buf);
			buf = NULL;
			if (posix_memalign(&buf, 4096,
					   (size_t)bs * fill_chunk(bs, 0))) {
				buf = NULL;
				sleep_ms(fl, 1000);
				continue;
			}
			/* through /dev as it was at start-up (switch_root) */
			snprintf(path, sizeof(path), "mapper/%s", fs.name);
			fd = openat(fl->dev_dirfd, path,
				    O_RDONLY | O_DIRECT | O_CLOEXEC);
			if (fd < 0) {
				err("fill: open /dev/%s: %m", path);
				sleep_ms(fl, 1000);
				continue;
			}
			info("fill: %s: %" PRIu64 " of %" PRIu64 " blocks absent, reading them",
			     fs.name, fs.total - fs.present, fs.total);
		}
		r = fill_pass(fl, &fs, fd, buf, bs, &failed);
		if (r == -ENOTTY && !fl->fill_read) {
			info("fill: the dm-stream module predates DM_STREAM_IOC_FETCH: filling by reading through the device");
			fl->fill_read = true;
			close(fd);
			fd = -1;
			continue;
		}
		if (r == -EROFS) {
			/* ro mode: nothing can become present until a reload */
			if (!told_ro)
				err("fill: %s is read-only (metadata error): no block can become present; the fill waits",
				    fs.name);
			told_ro = true;
			sleep_ms(fl, 10000);
			continue;
		}
		told_ro = false;
		if (r) {
			err("fill: %s", strerror(-r));
			/* The device may have been reloaded: reopen it. */
			close(fd);
			fd = -1;
			sleep_ms(fl, 1000);
		} else if (failed) {
			/* Skipped blocks: the next pass retries them. */
			backoff = backoff ? backoff * 2 : 1000;
			if (backoff > 60000)
				backoff = 60000;
			info("fill: %" PRIu64 " blocks failed; next pass in %ld s",
			     failed, backoff / 1000);
			sleep_ms(fl, backoff);
		} else {
			backoff = 0;
		}
	}
	if (fd >= 0)
		close(fd);
	free(buf);
	atomic_store(&fl->exited, true);
	fill_wake(fl);
	return NULL;
}

/* --fill and --fill-rate, once the device exists. */
static int fill_apply_options(struct filler *fl)
{
	char msg[64];

	if (fl->rate) {
		snprintf(msg, sizeof(msg), "fill rate %" PRIu64, fl->rate);
		if (fill_message(fl, msg))
			return -EIO;
	}
	if (fl->enable && fill_message(fl, "fill on"))
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
"  -m, --max-request B   the most bytes one read asks for (K, M suffixes;\n"
"                        default 512K; at least one block, at most 1M or\n"
"                        one block); each of the N reads has a buffer of B\n"
"  -t, --io-timeout S    reconnect when reads are outstanding and none\n"
"                        completed for S seconds (default %d, 0: never)\n"
"  -c, --connect-timeout S\n"
"                        give up a connect + handshake after S seconds\n"
"                        and retry (default %d)\n"
"  -f, --fill            switch the background fill on (see streamctl fill)\n"
"  -r, --fill-rate R     limit the fill to R bytes/s (K, M, G suffixes)\n"
"  -x, --exit-when-complete\n"
"                        exit once every block is present\n"
"  -u, --uuid            <dm device name> is a dm uuid\n"
"  -i, --image-id ID     the image's identity; the device refuses the\n"
"                        helper unless it matches the id its last image\n"
"                        update recorded\n"
"  -s, --stats FILE      write counters to FILE on SIGUSR1 and at exit\n"
"      --tls-certificates DIR\n"
"                        X.509: ca-cert.pem [client-cert.pem client-key.pem]\n"
"      --tls-psk-file FILE  TLS-PSK keys (username:hexkey lines)\n"
"      --tls-username NAME  the PSK identity (default: the login name)\n"
"                        any --tls option requires TLS; the files are\n"
"                        copied under $STREAMD_RUNDIR (/run) at start-up\n"
"  -d, --daemon          detach and log to syslog\n"
"  -R, --root-storage-daemon\n"
"                        mark the process (argv[0][0] = '@') so that\n"
"                        systemd spares it at switch_root and shutdown:\n"
"                        for the helper of a root device, started from\n"
"                        the initramfs\n"
"  -p, --pidfile FILE    write the process id to FILE\n"
"  -v, --verbose         log every request\n"
"  -h, --help            this text\n"
"  -V, --version         print the channel ABI version\n"
"\n"
"URI examples: nbd://host:10809/export, nbd+unix:///export?socket=/run/s\n"
"\n"
"Exit status: 0 stopped by a signal or --exit-when-complete; 1 a start-up\n"
"error (bad URI, no /dev/dm-stream, no such device, no memory); 2 usage.\n"
"Once attached, streamd retries everything else.\n",
		DEFAULT_DEPTH, DEFAULT_IO_TIMEOUT, DEFAULT_CONNECT_TIMEOUT);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "queue-depth", required_argument, NULL, 'q' },
		{ "max-request", required_argument, NULL, 'm' },
		{ "io-timeout", required_argument, NULL, 't' },
		{ "connect-timeout", required_argument, NULL, 'c' },
		{ "fill", no_argument, NULL, 'f' },
		{ "fill-rate", required_argument, NULL, 'r' },
		{ "exit-when-complete", no_argument, NULL, 'x' },
		{ "uuid", no_argument, NULL, 'u' },
		{ "image-id", required_argument, NULL, 'i' },
		{ "stats", required_argument, NULL, 's' },
		{ "tls-certificates", required_argument, NULL, 'C' },
		{ "tls-psk-file", required_argument, NULL, 'P' },
		{ "tls-username", required_argument, NULL, 'U' },
		{ "daemon", no_argument, NULL, 'd' },
		{ "pidfile", required_argument, NULL, 'p' },
		{ "root-storage-daemon", no_argument, NULL, 'R' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 }
	};
	struct streamd sd = { .depth = DEFAULT_DEPTH,
			      .max_request = DEFAULT_MAX_REQUEST,
			      .io_timeout = DEFAULT_IO_TIMEOUT,
			      .connect_timeout = DEFAULT_CONNECT_TIMEOUT };
	struct filler fl = { .wake_fd = -1 };
	const char *pidfile = NULL;
	bool daemonize = false;
	static char stats_abs[PATH_MAX];	/* main's: an absolute --stats */
	struct sigaction sa;
	struct timespec seed;
	int c, r;

	while ((c = getopt_long(argc, argv, "q:m:t:c:fr:xui:s:dp:RvhV", opts,
				NULL)) != -1) {
		switch (c) {
		case 'q':
			if (su_parse_uint(optarg, 4096, &sd.depth) ||
			    !sd.depth) {
				err("invalid queue depth '%s' (1-4096)",
				    optarg);
				return 2;
			}
			break;
		case 'm':
			if (su_parse_size(optarg, &sd.max_request) ||
			    sd.max_request < 4096 ||
			    sd.max_request > (64U << 20)) {
				err("invalid max request '%s' (4K-64M)",
				    optarg);
				return 2;
			}
			break;
		case 't':
			if (su_parse_uint(optarg, 86400, &sd.io_timeout)) {
				err("invalid io timeout '%s' (0-86400 s)",
				    optarg);
				return 2;
			}
			break;
		case 'c':
			if (su_parse_uint(optarg, 3600, &sd.connect_timeout) ||
			    !sd.connect_timeout) {
				err("invalid connect timeout '%s' (1-3600 s)",
				    optarg);
				return 2;
			}
			break;
		case 'f':
			fl.enable = true;
			break;
		case 'r':
			if (su_parse_size(optarg, &fl.rate) || !fl.rate) {
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
		case 'C':
			sd.tls.certificates = optarg;
			break;
		case 'P':
			sd.tls.psk_file = optarg;
			break;
		case 'U':
			sd.tls.username = optarg;
			break;
		case 'd':
			daemonize = true;
			break;
		case 'p':
			pidfile = optarg;
			break;
		case 'R':
			/* systemd's "root storage daemon" convention */
			argv[0][0] = '@';
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

	/*
	 * Keep /dev and the device-mapper control device open for good:
	 * started from an initramfs, we lose our view of /dev at
	 * switch_root (see dev_dirfd).
	 */
	sd.dev_dirfd = open("/dev", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (sd.dev_dirfd < 0) {
		err("open /dev: %m");
		return 1;
	}
	dm_hold_control_dev(1);
	{
		char v[64];	/* any ioctl opens the control device */

		if (!dm_driver_version(v, sizeof(v)))
			err("device-mapper control: cannot open it (continuing)");
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

	/* Before serving: the TLS files may be gone after switch_root. */
	if (su_tls_wanted(&sd.tls)) {
		const char *rundir = getenv("STREAMD_RUNDIR");

		/* su_tls_keep() changes directory: --stats stays where it was */
		if (sd.stats_path && sd.stats_path[0] != '/') {
			char cwd[PATH_MAX];

			if (!getcwd(cwd, sizeof(cwd)) ||
			    snprintf(stats_abs, sizeof(stats_abs), "%s/%s", cwd,
				     sd.stats_path) >= (int)sizeof(stats_abs)) {
				err("--stats %s: cannot make it absolute",
				    sd.stats_path);
				return 1;
			}
			sd.stats_path = stats_abs;
		}
		if (!rundir) {
			rundir = access("/run", W_OK) ? "/tmp" : "/run";
			if (rundir[1] == 't')
				err("/run is not writable: the TLS files are kept in /tmp, which an initramfs switch_root removes");
		}
		r = su_tls_keep(&sd.tls, rundir);
		if (r) {
			err("cannot keep the TLS files: %s", strerror(-r));
			return 1;
		}
	} else if (sd.tls.username) {
		err("--tls-username needs --tls-psk-file");
		return 2;
	}
	/* backoff jitter: differs between machines booted together */
	clock_gettime(CLOCK_REALTIME, &seed);
	srandom(seed.tv_nsec ^ getpid());
	fl.name = sd.name;
	fl.by_uuid = sd.by_uuid;
	fl.dev_dirfd = sd.dev_dirfd;
	/* A test knob: the fallback for modules older than the fetch ioctl. */
	fl.fill_read = getenv("STREAMD_FILL_READ") &&
		       !strcmp(getenv("STREAMD_FILL_READ"), "1");
	fl.wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (fl.wake_fd < 0)
		err("eventfd: %m; the fill's end is seen within a second");
	sd.fill = &fl;
	r = fill_start(&fl);
	if (!r)
		r = run(&sd);
	got_stop = 1;
	sd_notify(0, "STOPPING=1");
	atomic_store(&fl.stop, true);
	if (fl.started && atomic_load(&fl.exited)) {
		pthread_join(fl.thread, NULL);
		fl.started = false;
	}
	write_stats(&sd);
	disconnect(&sd);
	detach(&sd);
	su_reqpool_destroy(&sd.pool);
	su_tls_forget(&sd.tls);
	free(sd.zero_map);
	/* Not under a fill thread that did not stop: exit takes both. */
	if (fl.wake_fd >= 0 && !fl.started)
		close(fl.wake_fd);
	if (r) {
		err("exiting: %s", strerror(-r));
		return 1;
	}
	return 0;
}
