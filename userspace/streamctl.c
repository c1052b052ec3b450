// SPDX-License-Identifier: GPL-2.0
/*
 * streamctl - control a dm-stream device through libdevmapper.
 *
 *   streamctl status [--json] <device>
 *   streamctl snapshot <device> --consumer N --to <NBD URI> [--no-ack]
 *   streamctl ack|abort <device> --consumer N <snapshot id>
 *   streamctl revert [--force] <device>
 *   streamctl invalidate <device> --image-id ID [--keep|--discard]
 *             [--force] <file|->
 *   streamctl fill <device> on|off|--rate R
 *   streamctl fetch [--no-wait] <device> <first block> <count>
 *   streamctl upgrade-metadata <metadata device>
 *
 * Every device-mapper operation is a libdevmapper task (create, set name,
 * run, read the response, destroy); nothing shells out to dmsetup.  The
 * snapshot drain reads blocks through DM_STREAM_IOC_SNAP_READ (their
 * content at the cut, see kernel/uapi/dm-stream.h) and writes them with
 * libnbd's synchronous API.
 *
 * Exit status: 0 success, 1 the operation failed (for snapshot: the
 * snapshot was aborted, its blocks are still dirty), 2 usage error, 3 the
 * device is not a stream device, 4 refused: the device is mounted or held
 * (revert, invalidate without --force).
 *
 * Global mutable state: got_signal only (see there).
 */
#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/fs.h>

#include <libdevmapper.h>
#include <libnbd.h>

#include <json-c/json.h>

#include "uapi/dm-stream.h"
#include "dm.h"
#include "parse.h"
#include "status.h"
#include "tls.h"
#include "upgrade.h"

#define EXIT_USAGE	2
#define EXIT_NOT_STREAM	3
#define EXIT_IN_USE	4
#define NR_CONSUMERS	SU_NR_CONSUMERS
#define RESUME_TRIES	5

/*
 * The signal that asked a snapshot drain to stop (SIGTERM, SIGINT,
 * SIGHUP), 0 if none: set by on_signal(), read by the drain loop.  The
 * only global mutable state.
 */
static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
	got_signal = sig;
}
#define RANGES_PER_MSG	64

static void usage(FILE *f)
{
	fprintf(f,
"Usage: streamctl status [--json] <device>\n"
"       streamctl snapshot <device> --consumer N --to <NBD URI> [--no-ack]\n"
"                 [--tls-certificates DIR | --tls-psk-file FILE\n"
"                  [--tls-username NAME]]\n"
"       streamctl ack|abort <device> --consumer N <snapshot id>\n"
"       streamctl revert [--force] <device>\n"
"       streamctl invalidate <device> --image-id ID [--keep|--discard]\n"
"                 [--force] <ranges file|->\n"
"       streamctl fill <device> on|off|--rate BYTES[K|M|G]\n"
"       streamctl fetch [--no-wait] <device> <first block> <count>\n"
"       streamctl upgrade-metadata <metadata device>\n"
"\n"
"status      presence, dirty blocks per consumer, fill progress\n"
"snapshot    cut a snapshot for consumer N, write its blocks (content at\n"
"            the cut) to the NBD export, flush, then acknowledge\n"
"ack/abort   acknowledge or abort a snapshot drained by other means\n"
"revert      make every block written on this machine absent again;\n"
"            refused while the device is mounted or held (--force)\n"
"invalidate  make the blocks changed by a new image version absent\n"
"fill        switch the helper's background fill, or set its rate\n"
"fetch       make blocks present now (the helper fetches them in the\n"
"            background); prints how many are still absent\n"
"upgrade-metadata  convert format 1 metadata to format 2, offline\n");
}

/* Returns 0, -ENOENT (no such device) or -EMEDIUMTYPE (not stream)... */
static int get_status(const char *dev, struct su_status *st, int *open_count)
{
	struct su_dev d = { .id = dev };
	int r = su_dm_status(&d, NULL, 0, st, open_count);

	if (r)
		fprintf(stderr, "streamctl: status of %s failed: %s\n", dev,
			strerror(-r));
	return r;
}

static int status_exit(int r)
{
	return r == -EMEDIUMTYPE || r == -ENOENT ? EXIT_NOT_STREAM : 1;
}

static int simple_task(int type, const char *dev, const char *what)
{
	struct dm_task *dmt = dm_task_create(type);
	uint32_t cookie = 0;
	int ok;

	if (!dmt)
		return -ENOMEM;
	ok = dm_task_set_name(dmt, dev);
	if (ok && type == DM_DEVICE_RESUME)
		ok = dm_task_set_cookie(dmt, &cookie, 0);
	ok = ok && dm_task_run(dmt);
	if (type == DM_DEVICE_RESUME && cookie)
		dm_udev_wait(cookie);
	dm_task_destroy(dmt);
	if (!ok) {
		fprintf(stderr, "streamctl: %s %s failed\n", what, dev);
		return -EIO;
	}
	return 0;
}

/* Send @msg to sector 0 of @dev; copy the response into @resp. */
static int message(const char *dev, const char *msg, char *resp, size_t len)
{
	struct su_dev d = { .id = dev };
	char *out = NULL;
	int r;

	r = su_dm_message(&d, msg, resp ? &out : NULL);
	if (r) {
		fprintf(stderr, "streamctl: %s: message failed\n", dev);
		return r;
	}
	if (resp)
		snprintf(resp, len, "%s", out);
	free(out);
	return 0;
}

/* Resume, a few times if need be: we never leave it suspended. */
static int resume(const char *dev)
{
	int i;

	for (i = 0; i < RESUME_TRIES; i++) {
		if (!simple_task(DM_DEVICE_RESUME, dev, "resume"))
			return 0;
		usleep(200000);
	}
	fprintf(stderr, "streamctl: %s: could not resume it after %d tries: it is still suspended (dmsetup resume %s)\n",
		dev, RESUME_TRIES, dev);
	return -EIO;
}

/* SIGTERM, SIGINT and SIGHUP held back while the device is suspended. */
static void block_stop_signals(sigset_t *old)
{
	sigset_t stop;

	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGHUP);
	sigprocmask(SIG_BLOCK, &stop, old);
}

/*
 * Suspend (which also freezes a mounted filesystem, so a snapshot cut is
 * consistent), send @msg, resume (always, stop signals held back
 * meanwhile); with @drop_cache, then drop cached pages that the message
 * made stale.
 */
static int suspended_message(const char *dev, const char *msg, char *resp,
			     size_t len, bool drop_cache)
{
	char path[PATH_MAX];
	sigset_t old;
	int r, rr, fd;

	block_stop_signals(&old);
	if (simple_task(DM_DEVICE_SUSPEND, dev, "suspend")) {
		sigprocmask(SIG_SETMASK, &old, NULL);
		return -EIO;
	}
	r = message(dev, msg, resp, len);
	rr = resume(dev);
	sigprocmask(SIG_SETMASK, &old, NULL);
	if (rr)
		return rr;
	if (r || !drop_cache)
		return r;
	snprintf(path, sizeof(path), "%s/%s", dm_dir(), dev);
	fd = open(path, O_RDONLY);
	if (fd < 0 || ioctl(fd, BLKFLSBUF, 0) < 0)
		fprintf(stderr, "streamctl: flush page cache of %s: %m\n", path);
	if (fd >= 0)
		close(fd);
	return 0;
}

static double ms_since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (t.tv_sec - t0->tv_sec) * 1e3 + (t.tv_nsec - t0->tv_nsec) / 1e6;
}

/*
 * Revert and invalidate change blocks under whoever has the device open:
 * a mounted filesystem would see its blocks change beneath its cache and
 * corrupt itself.  A mount, a holder (LVM, another dm device) or mkfs
 * opens the device exclusively, so an exclusive open that fails with EBUSY
 * says it is in use; plain readers (the helper's background fill) do not
 * count.  Returns 0, or EXIT_IN_USE after saying why.
 */
static int refuse_if_held(const char *dev, const char *what)
{
	char path[PATH_MAX];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dm_dir(), dev);
	fd = open(path, O_RDONLY | O_EXCL | O_CLOEXEC);
	if (fd >= 0) {
		close(fd);
		return 0;
	}
	if (errno != EBUSY)
		return 0;	/* not ours to judge: the operation reports */
	fprintf(stderr, "streamctl: %s: refusing to %s: the device is in use (mounted, or held by another device); unmount it first, or use --force\n",
		dev, what);
	return EXIT_IN_USE;
}

static int cmd_revert(const char *dev, bool force)
{
	struct su_status st;
	struct timespec t0;
	char resp[128];
	int r;

	r = get_status(dev, &st, NULL);
	if (r)
		return status_exit(r);
	if (!force) {
		r = refuse_if_held(dev, "revert");
		if (r)
			return r;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (suspended_message(dev, "revert", resp, sizeof(resp), true))
		return 1;
	printf("%s: %s blocks in %.1f ms\n", dev, resp, ms_since(&t0));
	return 0;
}

/* While filling: sample the present count twice, a second apart. */
static void measure_rate(const char *dev, struct su_status *st,
			 double *rate, double *eta)
{
	struct su_status st2;
	struct timespec t0;
	double ms;

	*rate = 0;
	*eta = -1;
	if (st->present >= st->total || !st->fill_on)
		return;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	usleep(1000 * 1000);
	if (get_status(dev, &st2, NULL))
		return;
	ms = ms_since(&t0);
	if (st2.present > st->present)
		*rate = (st2.present - st->present) * 1000.0 / ms;
	*st = st2;
	if (*rate > 0)
		*eta = (st->total - st->present) / *rate;
}

static int add_u64(json_object *o, const char *key, uint64_t v)
{
	return json_object_object_add(o, key, json_object_new_uint64(v));
}

/* --json: one object; every key is documented in streamctl(8). */
static int print_json(const char *dev, const struct su_status *st,
		      double rate, double eta)
{
	json_object *o = json_object_new_object(), *cs, *c;
	const char *text;
	int i, r = 0;

	if (!o)
		return -ENOMEM;
	r |= json_object_object_add(o, "device", json_object_new_string(dev));
	r |= add_u64(o, "block_size", st->block_sectors * 512ULL);
	r |= add_u64(o, "present", st->present);
	r |= add_u64(o, "total", st->total);
	r |= add_u64(o, "dirty", st->dirty);
	r |= add_u64(o, "parked", st->parked);
	if (st->has_oldest)
		r |= add_u64(o, "oldest_parked_ms", st->oldest_ms);
	r |= json_object_object_add(o, "helper", json_object_new_string(
		st->attached ? "attached" : "detached"));
	r |= json_object_object_add(o, "mode", json_object_new_string(st->mode));
	r |= add_u64(o, "fetched", st->fetched);
	r |= add_u64(o, "fetched_zero", st->zero);
	r |= add_u64(o, "fetch_errors", st->errors);
	r |= add_u64(o, "generation", st->generation);
	r |= json_object_object_add(o, "image", json_object_new_string(st->image));
	r |= json_object_object_add(o, "fill", json_object_new_string(
		st->fill_on ? "on" : "off"));
	r |= add_u64(o, "fill_rate_limit", st->fill_rate);
	r |= json_object_object_add(o, "blocks_per_second",
				    json_object_new_double(rate));
	r |= json_object_object_add(o, "eta_seconds", eta < 0 ? NULL :
				    json_object_new_double(eta));
	cs = json_object_new_array();
	r |= json_object_object_add(o, "consumers", cs);
	for (i = 0; cs && i < NR_CONSUMERS; i++) {
		c = json_object_new_object();
		r |= json_object_array_add(cs, c);
		if (!c)
			break;
		r |= add_u64(c, "dirty", st->c[i].dirty);
		r |= add_u64(c, "snapshot", st->c[i].snap_id);
		r |= add_u64(c, "snapshot_blocks", st->c[i].snap_blocks);
	}
	text = r || !cs ? NULL :
	       json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	if (text)
		printf("%s\n", text);
	json_object_put(o);
	return text ? 0 : -ENOMEM;
}

static int cmd_status(const char *dev, bool json)
{
	struct su_status st;
	double rate, eta, pct;
	int r = get_status(dev, &st, NULL), i, bar;

	if (r)
		return status_exit(r);
	measure_rate(dev, &st, &rate, &eta);
	pct = st.total ? 100.0 * st.present / st.total : 100.0;
	if (json)
		return print_json(dev, &st, rate, eta) ? 1 : 0;
	printf("%s: image %s, helper %s, mode %s, %" PRIu64 " parked", dev,
	       st.image[0] ? st.image : "(unnamed)",
	       st.attached ? "attached" : "detached", st.mode, st.parked);
	if (st.has_oldest && st.parked)
		printf(" (oldest %.1f s)", st.oldest_ms / 1000.0);
	printf("\n");
	bar = (int)(pct * 40 / 100);
	printf("  present [%.*s%.*s] %5.1f%%  %" PRIu64 "/%" PRIu64 " blocks",
	       bar, "########################################", 40 - bar,
	       "........................................", pct, st.present,
	       st.total);
	if (rate > 0)
		printf(", %.0f blocks/s, ETA %.0f s", rate, eta);
	printf("\n  fill %s", st.fill_on ? "on" : "off");
	if (st.fill_rate)
		printf(" (limit %" PRIu64 " bytes/s)", st.fill_rate);
	printf(", %" PRIu64 " fetched, %" PRIu64 " fetch errors\n",
	       st.fetched, st.errors);
	for (i = 0; i < NR_CONSUMERS; i++) {
		printf("  consumer %d: %" PRIu64 " dirty", i, st.c[i].dirty);
		if (st.c[i].snap_id)
			printf(", snapshot %" PRIu64 " in progress (%" PRIu64
			       " blocks)", st.c[i].snap_id,
			       st.c[i].snap_blocks);
		printf("\n");
	}
	return 0;
}

static int for_each_range(const char *dev, const char *query, uint64_t total,
			  int (*fn)(void *ctx, uint64_t first, uint64_t count),
			  void *ctx)
{
	struct su_dev d = { .id = dev };

	return su_dm_for_each_range(&d, query, total, fn, ctx);
}

struct drain {
	const char *dev;
	char path[PATH_MAX];
	int chan, devfd;
	struct nbd_handle *nbd;
	struct dm_stream_snap_read rd;
	void *buf;
	uint32_t bs;
	uint64_t blocks, bytes;
};

static int snap_read(struct drain *d, uint64_t block)
{
	int i;

	d->rd.block = block;
	if (ioctl(d->chan, DM_STREAM_IOC_SNAP_READ, &d->rd) == 0)
		return 0;
	if (errno != ENODATA)
		return -errno;
	/*
	 * Absent: its content is the image's; reading it fetches it.  A
	 * read served from the helper's reply can complete a moment before
	 * the block is marked present; a second read waits for that (it
	 * parks behind the block's fetch until then).
	 */
	for (i = 0; i < 2; i++) {
		if (pread(d->devfd, d->buf, d->bs, (off_t)block * d->bs) != d->bs)
			return errno ? -errno : -EIO;
		if (!ioctl(d->chan, DM_STREAM_IOC_SNAP_READ, &d->rd))
			return 0;
		if (errno != ENODATA)
			return -errno;
	}
	return -ENODATA;
}

/*
 * Wait for NBD command @cookie; a stop signal ends the wait (libnbd's
 * synchronous calls poll without a timeout: a drain to a server that
 * stopped answering would never see the signal).  0, -EINTR, or -EIO with
 * libnbd's error.
 */
static int nbd_wait(struct nbd_handle *h, int64_t cookie)
{
	int r;

	if (cookie == -1)
		return -EIO;
	for (;;) {
		r = nbd_aio_command_completed(h, cookie);
		if (r == 1)
			return 0;
		if (r == -1)
			return -EIO;
		if (got_signal)
			return -EINTR;
		if (nbd_poll(h, 200) == -1 && nbd_get_errno() != EINTR)
			return -EIO;
	}
}

static int drain_range(void *ctx, uint64_t first, uint64_t count)
{
	struct drain *d = ctx;
	uint64_t b;
	int r;

	for (b = first; b < first + count; b++) {
		if (got_signal) {
			fprintf(stderr, "streamctl: %s: %s while draining\n",
				d->dev, strsignal(got_signal));
			return -EINTR;
		}
		r = snap_read(d, b);
		if (r) {
			fprintf(stderr, "streamctl: %s: read block %" PRIu64
				" of the snapshot: %s\n", d->dev, b,
				strerror(-r));
			return r;
		}
		r = nbd_wait(d->nbd, nbd_aio_pwrite(d->nbd, d->buf, d->bs,
						    b * d->bs,
						    NBD_NULL_COMPLETION, 0));
		if (r == -EINTR) {
			fprintf(stderr, "streamctl: %s: %s while draining\n",
				d->dev, strsignal(got_signal));
			return r;
		}
		if (r) {
			fprintf(stderr, "streamctl: write block %" PRIu64
				": %s\n", b, nbd_get_error());
			return r;
		}
		d->blocks++;
		d->bytes += d->bs;
	}
	return 0;
}

/* Abort @consumer's snapshot @gen (0: whatever the status says). */
static void abort_snapshot(const char *dev, int consumer, uint64_t gen)
{
	struct su_status st;
	char msg[128];

	if (!gen && !get_status(dev, &st, NULL))
		gen = st.c[consumer].snap_id;
	if (!gen) {
		fprintf(stderr, "streamctl: %s: no snapshot of consumer %d to abort\n",
			dev, consumer);
		return;
	}
	snprintf(msg, sizeof(msg), "abort %d %" PRIu64, consumer, gen);
	if (!message(dev, msg, NULL, 0))
		fprintf(stderr, "streamctl: %s: snapshot %" PRIu64
			" aborted, its blocks stay dirty\n", dev, gen);
}

/*
 * Cut consumer @consumer's snapshot: suspend, message, resume, with the
 * stop signals blocked throughout (a kill cannot leave the device
 * suspended; it is seen once resumed).  Returns 0 with *gen and *nr, or
 * -errno once nothing is left behind (a cut whose resume or answer
 * failed is aborted).
 */
static int cut_snapshot(const char *dev, int consumer, uint64_t *gen,
			uint64_t *nr)
{
	char msg[64], resp[256];
	sigset_t old;
	int r, rm, rr;

	block_stop_signals(&old);
	snprintf(msg, sizeof(msg), "snapshot %d", consumer);
	r = simple_task(DM_DEVICE_SUSPEND, dev, "suspend");
	if (r)
		goto out;
	rm = message(dev, msg, resp, sizeof(resp));
	rr = resume(dev);
	if (!rm && su_parse_cut(resp, gen, nr)) {
		fprintf(stderr, "streamctl: %s: bad answer to '%s': '%.60s'\n",
			dev, msg, resp);
		rm = -EPROTO;
		*gen = 0;
	}
	/* A cut was made (the message passed) but cannot be drained. */
	if ((!rm && rr) || rm == -EPROTO)
		abort_snapshot(dev, consumer, *gen);
	r = rm ? rm : rr;
out:
	sigprocmask(SIG_SETMASK, &old, NULL);
	return r;
}

static int cmd_snapshot(const char *dev, int consumer, const char *uri,
			bool ack, const struct su_tls *tls)
{
	struct su_status st;
	struct drain d = { .dev = dev, .chan = -1, .devfd = -1 };
	char msg[128], resp[256], query[64];
	uint64_t gen = 0, nr = 0;
	struct sigaction sa;
	struct timespec t0;
	int64_t size;
	int r, ret = 1;

	r = get_status(dev, &st, NULL);
	if (r)
		return status_exit(r);
	d.bs = st.block_sectors * 512;
	if (posix_memalign(&d.buf, 4096, d.bs))
		return 1;
	d.nbd = nbd_create();
	if (!d.nbd || su_tls_apply(tls, d.nbd) == -1 ||
	    nbd_connect_uri(d.nbd, uri) == -1) {
		fprintf(stderr, "streamctl: connect %s: %s\n", uri,
			nbd_get_error());
		goto out_nbd;
	}
	size = nbd_get_size(d.nbd);
	if (size < 0 || (uint64_t)size < st.total * d.bs) {
		fprintf(stderr, "streamctl: %s: export has %" PRId64
			" bytes, the device %" PRIu64 "\n", uri, size,
			st.total * d.bs);
		goto out_nbd;
	}
	if (nbd_is_read_only(d.nbd) == 1) {
		fprintf(stderr, "streamctl: %s: export is read-only\n", uri);
		goto out_nbd;
	}
	d.chan = open("/dev/" DM_STREAM_DEVNAME, O_RDWR | O_CLOEXEC);
	snprintf(d.path, sizeof(d.path), "%s/%s", dm_dir(), dev);
	d.devfd = open(d.path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (d.chan < 0 || d.devfd < 0) {
		fprintf(stderr, "streamctl: open %s: %m\n",
			d.chan < 0 ? "/dev/" DM_STREAM_DEVNAME : d.path);
		goto out_fds;
	}

	/* From the cut on, a stop signal aborts the snapshot. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);

	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (cut_snapshot(dev, consumer, &gen, &nr))
		goto out_fds;
	fprintf(stderr, "streamctl: %s: consumer %d snapshot %" PRIu64
		": %" PRIu64 " blocks, cut in %.1f ms\n", dev, consumer, gen,
		nr, ms_since(&t0));

	d.rd.magic = DM_STREAM_MAGIC;
	d.rd.version = DM_STREAM_VERSION;
	d.rd.size = sizeof(d.rd);
	snprintf(d.rd.id, sizeof(d.rd.id), "%s", dev);
	d.rd.consumer = consumer;
	d.rd.gen = gen;
	d.rd.buf = (uintptr_t)d.buf;
	d.rd.len = d.bs;
	snprintf(query, sizeof(query), "ranges %d %" PRIu64, consumer, gen);
	r = for_each_range(dev, query, st.total, drain_range, &d);
	if (!r) {
		r = nbd_wait(d.nbd, nbd_aio_flush(d.nbd, NBD_NULL_COMPLETION,
						  0));
		if (r == -EINTR)
			fprintf(stderr, "streamctl: %s: %s while flushing\n",
				dev, strsignal(got_signal));
		else if (r)
			fprintf(stderr, "streamctl: flush %s: %s\n", uri,
				nbd_get_error());
	}
	if (!r && got_signal) {
		fprintf(stderr, "streamctl: %s: %s before the acknowledgement\n",
			dev, strsignal(got_signal));
		r = -EINTR;
	}
	if (!r && ack) {
		snprintf(msg, sizeof(msg), "ack %d %" PRIu64, consumer, gen);
		r = message(dev, msg, resp, sizeof(resp));
		if (r)
			fprintf(stderr, "streamctl: %s: acknowledgement refused\n",
				dev);
	}
	if (r) {
		abort_snapshot(dev, consumer, gen);
		goto out_fds;
	}
	printf("%s: consumer %d snapshot %" PRIu64 ": %" PRIu64
	       " blocks, %" PRIu64 " bytes sent, %s in %.1f ms\n", dev,
	       consumer, gen, d.blocks, d.bytes,
	       ack ? "flushed and acknowledged" : "flushed, not acknowledged",
	       ms_since(&t0));
	ret = 0;
out_fds:
	if (d.chan >= 0)
		close(d.chan);
	if (d.devfd >= 0)
		close(d.devfd);
out_nbd:
	if (d.nbd)
		nbd_close(d.nbd);
	free(d.buf);
	return ret;
}

static int cmd_end(const char *dev, const char *what, int consumer,
		   const char *id)
{
	struct su_status st;
	char msg[128], resp[128];
	uint64_t gen;
	int r = get_status(dev, &st, NULL);

	if (r)
		return status_exit(r);
	if (su_parse_u64(id, &gen) || !gen) {
		fprintf(stderr, "streamctl: invalid snapshot id '%s'\n", id);
		return EXIT_USAGE;
	}
	snprintf(msg, sizeof(msg), "%s %d %" PRIu64, what, consumer, gen);
	if (message(dev, msg, resp, sizeof(resp)))
		return 1;
	printf("%s: consumer %d snapshot %" PRIu64 ": %s blocks\n", dev,
	       consumer, gen, resp);
	return 0;
}

/*
 * Make blocks [@first_s, + @count_s) present now (DM_STREAM_IOC_FETCH, in
 * chunks of DM_STREAM_FETCH_MAX): the attached helper fetches them as
 * background requests.  Exit 1 if some are still absent afterwards.
 */
static int cmd_fetch(const char *dev, const char *first_s,
		     const char *count_s, bool wait)
{
	struct dm_stream_fetch a = {
		.magic = DM_STREAM_MAGIC,
		.version = DM_STREAM_VERSION,
		.size = sizeof(a),
		.flags = wait ? 0 : DM_STREAM_FETCH_NOWAIT,
	};
	uint64_t first, count, b, n, absent = 0;
	struct su_status st;
	int chan, ret = 0;

	if (su_parse_u64(first_s, &first) || su_parse_u64(count_s, &count) ||
	    !count) {
		fprintf(stderr, "streamctl: fetch: a first block and a count of at least 1, not '%s %s'\n",
			first_s, count_s);
		return EXIT_USAGE;
	}
	if (strlen(dev) >= sizeof(a.id)) {
		fprintf(stderr, "streamctl: %s: name too long\n", dev);
		return EXIT_USAGE;
	}
	snprintf(a.id, sizeof(a.id), "%s", dev);
	/* Quiet: the ioctl names a missing device itself. */
	if (wait && !su_dm_status(&(struct su_dev){ .id = dev, .quiet = true },
				  NULL, 0, &st, NULL) && !st.attached)
		fprintf(stderr, "streamctl: %s: no helper attached: waiting for one\n",
			dev);
	chan = open("/dev/" DM_STREAM_DEVNAME, O_RDWR | O_CLOEXEC);
	if (chan < 0) {
		fprintf(stderr, "streamctl: open /dev/%s: %m\n",
			DM_STREAM_DEVNAME);
		return 1;
	}
	for (b = first; b - first < count; b += n) {
		n = count - (b - first);
		if (n > DM_STREAM_FETCH_MAX)
			n = DM_STREAM_FETCH_MAX;
		a.block = b;
		a.nr_blocks = n;
		a.nr_absent = 0;
		if (ioctl(chan, DM_STREAM_IOC_FETCH, &a) < 0) {
			int e = errno;

			fprintf(stderr, "streamctl: fetch %s blocks %" PRIu64 "+%" PRIu64 ": %s%s\n",
				dev, b, n, strerror(e),
				e == ENOENT ? " (no such stream device)" :
				e == ERANGE ? " (beyond the device)" :
				e == EAGAIN ? " (the device is suspended)" :
				e == EROFS ? " (ro mode: the metadata cannot be written)" :
				e == ENOTTY ? " (the dm-stream module is too old)" :
				"");
			ret = e == ENOENT ? EXIT_NOT_STREAM : 1;
			goto out;
		}
		absent += a.nr_absent;
	}
	if (wait) {
		printf("absent %" PRIu64 "\n", absent);
		if (absent) {
			fprintf(stderr, "streamctl: %s: %" PRIu64 " of the %" PRIu64 " blocks are still absent (is a helper attached?)\n",
				dev, absent, count);
			ret = 1;
		}
	}
out:
	close(chan);
	return ret;
}

static int cmd_fill(const char *dev, const char *arg, const char *rate)
{
	struct su_status st;
	char msg[64];
	uint64_t v;
	int r = get_status(dev, &st, NULL);

	if (r)
		return status_exit(r);
	if (rate) {
		if (su_parse_size(rate, &v)) {
			fprintf(stderr, "streamctl: invalid rate '%s'\n", rate);
			return EXIT_USAGE;
		}
		snprintf(msg, sizeof(msg), "fill rate %" PRIu64, v);
		if (message(dev, msg, NULL, 0))
			return 1;
	}
	if (arg) {
		if (strcmp(arg, "on") && strcmp(arg, "off")) {
			fprintf(stderr, "streamctl: fill: on or off, not '%s'\n",
				arg);
			return EXIT_USAGE;
		}
		snprintf(msg, sizeof(msg), "fill %s", arg);
		if (message(dev, msg, NULL, 0))
			return 1;
	}
	return 0;
}

/*
 * Ranges file: one "<offset> <length>" per line, bytes, decimal or 0x
 * hex; '#' starts a comment; blank lines are ignored.  Every block a range
 * touches is invalidated.
 */
struct ranges {
	uint64_t (*r)[2];	/* first block, count */
	size_t n, max;
};

static int read_ranges(FILE *f, const char *name, uint64_t bs,
		       uint64_t total, struct ranges *rs)
{
	uint64_t off, len, first, last;
	unsigned int lineno = 0;
	char line[256];
	void *grow;
	int r;

	while (fgets(line, sizeof(line), f)) {
		lineno++;
		if (!strchr(line, '\n') && !feof(f)) {
			fprintf(stderr, "streamctl: %s:%u: line too long\n",
				name, lineno);
			return -EINVAL;
		}
		r = su_parse_range_line(line, &off, &len);
		if (!r)
			continue;
		if (r < 0) {
			fprintf(stderr, "streamctl: %s:%u: expected '<offset> <length>' in bytes (decimal or 0x hex)\n",
				name, lineno);
			return -EINVAL;
		}
		if (!len || off >= total * bs || len > total * bs - off) {
			fprintf(stderr, "streamctl: %s:%u: range %" PRIu64 "+%"
				PRIu64 " is empty or beyond the device (%"
				PRIu64 " bytes)\n", name, lineno, off, len,
				total * bs);
			return -ERANGE;
		}
		first = off / bs;
		last = (off + len - 1) / bs;
		if (rs->n == rs->max) {
			rs->max = rs->max ? rs->max * 2 : 64;
			grow = realloc(rs->r, rs->max * sizeof(*rs->r));
			if (!grow)
				return -ENOMEM;
			rs->r = grow;
		}
		rs->r[rs->n][0] = first;
		rs->r[rs->n][1] = last - first + 1;
		rs->n++;
	}
	if (ferror(f)) {
		fprintf(stderr, "streamctl: read %s: %m\n", name);
		return -EIO;
	}
	return 0;
}

static int cmd_invalidate(const char *dev, const char *file,
			  const char *image_id, bool keep, bool force)
{
	struct su_status st;
	struct ranges rs = { 0 };
	struct timespec t0;
	char *msg = NULL, resp[128];
	size_t i, j, len;
	FILE *f;
	int r, ret = 1;

	r = get_status(dev, &st, NULL);
	if (r)
		return status_exit(r);
	if (!force) {
		r = refuse_if_held(dev, "invalidate");
		if (r)
			return r;
	}
	f = strcmp(file, "-") ? fopen(file, "r") : stdin;
	if (!f) {
		fprintf(stderr, "streamctl: open %s: %m\n", file);
		return 1;
	}
	/* Parse everything before sending anything. */
	r = read_ranges(f, file, st.block_sectors * 512ULL, st.total, &rs);
	if (f != stdin)
		fclose(f);
	if (r)
		goto out;
	msg = malloc(64 + RANGES_PER_MSG * 48);
	if (!msg)
		goto out;
	if (message(dev, "invalidate clear", NULL, 0))
		goto out;
	for (i = 0; i < rs.n; i += RANGES_PER_MSG) {
		len = snprintf(msg, 64, "invalidate add");
		for (j = i; j < rs.n && j < i + RANGES_PER_MSG; j++)
			len += sprintf(msg + len, " %" PRIu64 "+%" PRIu64,
				       rs.r[j][0], rs.r[j][1]);
		if (message(dev, msg, NULL, 0))
			goto out;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	snprintf(msg, 64 + RANGES_PER_MSG * 48, "invalidate commit %s %s",
		 image_id, keep ? "keep" : "discard");
	if (suspended_message(dev, msg, resp, sizeof(resp), true))
		goto out;
	printf("%s: image %s: %s blocks (%zu ranges, %s locally changed blocks) in %.1f ms\n",
	       dev, image_id, resp, rs.n, keep ? "kept" : "discarded",
	       ms_since(&t0));
	ret = 0;
out:
	free(msg);
	free(rs.r);
	return ret;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "consumer", required_argument, NULL, 'c' },
		{ "to", required_argument, NULL, 't' },
		{ "no-ack", no_argument, NULL, 'n' },
		{ "image-id", required_argument, NULL, 'i' },
		{ "keep", no_argument, NULL, 'k' },
		{ "discard", no_argument, NULL, 'd' },
		{ "rate", required_argument, NULL, 'r' },
		{ "force", no_argument, NULL, 'F' },
		{ "tls-certificates", required_argument, NULL, 'C' },
		{ "tls-psk-file", required_argument, NULL, 'P' },
		{ "tls-username", required_argument, NULL, 'U' },
		{ "no-wait", no_argument, NULL, 'W' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	const char *cmd, *to = NULL, *image_id = NULL, *rate = NULL;
	bool json = false, ack = true, keep = true, force = false, wait = true;
	struct su_tls tls = { 0 };
	int c, consumer = -1, nargs;
	unsigned int v;

	if (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
		usage(stdout);
		return 0;
	}
	if (argc < 2 || argv[1][0] == '-') {
		usage(stderr);
		return EXIT_USAGE;
	}
	cmd = argv[1];
	optind = 2;
	while ((c = getopt_long(argc, argv, "jc:t:ni:kdr:FWh", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'c':
			if (su_parse_uint(optarg, NR_CONSUMERS - 1, &v)) {
				fprintf(stderr, "streamctl: --consumer: 0-%d\n",
					NR_CONSUMERS - 1);
				return EXIT_USAGE;
			}
			consumer = v;
			break;
		case 't':
			to = optarg;
			break;
		case 'n':
			ack = false;
			break;
		case 'i':
			image_id = optarg;
			break;
		case 'k':
			keep = true;
			break;
		case 'd':
			keep = false;
			break;
		case 'r':
			rate = optarg;
			break;
		case 'F':
			force = true;
			break;
		case 'W':
			wait = false;
			break;
		case 'C':
			tls.certificates = optarg;
			break;
		case 'P':
			tls.psk_file = optarg;
			break;
		case 'U':
			tls.username = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	nargs = argc - optind;
	if (!strcmp(cmd, "status") && nargs == 1)
		return cmd_status(argv[optind], json);
	if (!strcmp(cmd, "revert") && nargs == 1)
		return cmd_revert(argv[optind], force);
	if (!strcmp(cmd, "snapshot") && nargs == 1 && to && consumer >= 0)
		return cmd_snapshot(argv[optind], consumer, to, ack, &tls);
	if ((!strcmp(cmd, "ack") || !strcmp(cmd, "abort")) && nargs == 2 &&
	    consumer >= 0)
		return cmd_end(argv[optind], cmd, consumer, argv[optind + 1]);
	if (!strcmp(cmd, "invalidate") && nargs == 2 && image_id)
		return cmd_invalidate(argv[optind], argv[optind + 1], image_id,
				      keep, force);
	if (!strcmp(cmd, "fill") && (nargs == 2 || (nargs == 1 && rate)))
		return cmd_fill(argv[optind], nargs == 2 ? argv[optind + 1] :
				NULL, rate);
	if (!strcmp(cmd, "fetch") && nargs == 3)
		return cmd_fetch(argv[optind], argv[optind + 1],
				 argv[optind + 2], wait);
	if (!strcmp(cmd, "upgrade-metadata") && nargs == 1)
		return upgrade_metadata(argv[optind]) ? 1 : 0;
	fprintf(stderr, "streamctl: bad command line for '%s'\n", cmd);
	usage(stderr);
	return EXIT_USAGE;
}
