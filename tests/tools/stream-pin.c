// SPDX-License-Identifier: GPL-2.0
/*
 * stream-pin: a hostile helper for the in-place (pinned) reply path.
 *
 *   stream-pin <dm name> <image> <first block> <delay ms> [remove]
 *
 * Expects no helper attached, nothing present from <first block> on for
 * a dozen blocks, and the data device's writes delayed by <delay ms>
 * (dm-delay).  For each scenario it parks a read of a fresh block (a
 * child doing an O_DIRECT read of the dm device), takes the request and
 * answers it in some hostile way, then checks that the parked read got
 * the image's data and that the block reads back as the image's (it is
 * present then: from the data device).  Pins are counted with
 * nr_foll_pin_acquired/released of /proc/vmstat.  Prints ok/FAIL lines
 * and "# measured:" lines; exits 0 when every check held.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/ioctl.h>

#include "uapi/dm-stream.h"

static int failures, fd, img;
static size_t bs, page;
static const char *name;
static char devpath[256];
static long delay_ms;

#define CHECK(cond, ...) do { \
	if (cond) { printf("ok: "); printf(__VA_ARGS__); printf("\n"); } \
	else { printf("FAIL: "); printf(__VA_ARGS__); printf("\n"); failures++; } \
	fflush(stdout); } while (0)

static long long vmstat(const char *key)
{
	char line[256];
	long long v = -1;
	size_t n = strlen(key);
	FILE *f = fopen("/proc/vmstat", "r");

	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, key, n) && line[n] == ' ')
			v = atoll(line + n + 1);
	if (f)
		fclose(f);
	return v;
}

static void refresh(void)
{
	int f = open("/proc/sys/vm/stat_refresh", O_WRONLY);

	if (f >= 0) {
		if (write(f, "1", 1) < 0)
			perror("stat_refresh");
		close(f);
	}
}

static long long pins(void)
{
	refresh();
	return vmstat("nr_foll_pin_acquired") - vmstat("nr_foll_pin_released");
}

static long long acquired(void)
{
	refresh();
	return vmstat("nr_foll_pin_acquired");
}

static double now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* A child reading @block through the device, O_DIRECT; checks the data. */
static pid_t park(uint64_t block)
{
	pid_t pid = fork();

	if (!pid) {
		void *b, *want = malloc(bs);
		int d = open(devpath, O_RDONLY | O_DIRECT);

		if (d < 0 || posix_memalign(&b, page, bs) ||
		    pread(img, want, bs, block * bs) != (ssize_t)bs)
			_exit(3);
		if (pread(d, b, bs, block * bs) != (ssize_t)bs)
			_exit(2);
		_exit(memcmp(b, want, bs) ? 1 : 0);
	}
	return pid;
}

static void reaped(pid_t pid, const char *what)
{
	int st;

	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
	      "%s: the parked read got the image's data (status %d)", what,
	      WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

/* Block @block of the device (present by now) against the image. */
static void device_block(uint64_t block, const char *what)
{
	void *b = NULL, *want = malloc(bs);
	int d = open(devpath, O_RDONLY | O_DIRECT);

	if (d < 0 || posix_memalign(&b, page, bs) ||
	    pread(img, want, bs, block * bs) != (ssize_t)bs ||
	    pread(d, b, bs, block * bs) != (ssize_t)bs) {
		CHECK(0, "%s: read back block %llu: %m", what,
		      (unsigned long long)block);
	} else {
		CHECK(!memcmp(b, want, bs),
		      "%s: block %llu reads back as the image's", what,
		      (unsigned long long)block);
	}
	close(d);
	free(b);
	free(want);
}

static int next_request(struct dm_stream_request *req, uint64_t block)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	for (;;) {
		if (poll(&p, 1, 10000) != 1 ||
		    read(fd, req, sizeof(*req)) != sizeof(*req)) {
			CHECK(0, "request for block %llu",
			      (unsigned long long)block);
			return -1;
		}
		if (req->block <= block && block < req->block + req->nr_blocks)
			return 0;
		printf("# ignoring request %llu+%u\n",
		       (unsigned long long)req->block, req->nr_blocks);
	}
}

static void header(void *at, const struct dm_stream_request *req,
		   uint64_t block)
{
	struct dm_stream_reply *h = at;

	memset(h, 0, sizeof(*h));
	h->magic = DM_STREAM_MAGIC;
	h->version = DM_STREAM_VERSION;
	h->size = sizeof(*h);
	h->tag = req->tag;
	h->block = block;
	h->nr_blocks = 1;
	h->len = bs;
	(void)req;
}

/* A mapping of @size bytes plus a page before it; returns the payload. */
static char *aligned_buf(size_t size)
{
	char *m = mmap(NULL, size + page, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (m == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	return m + page;
}

static void fill(char *payload, uint64_t block)
{
	if (pread(img, payload, bs, block * bs) != (ssize_t)bs) {
		perror("image");
		exit(1);
	}
}

static ssize_t reply(char *payload)
{
	return write(fd, payload - sizeof(struct dm_stream_reply),
		     sizeof(struct dm_stream_reply) + bs);
}

/* --- scenarios --------------------------------------------------------- */

static void s_wait(uint64_t b)
{
	struct dm_stream_request req;
	struct dm_stream_reply *h;
	long long base = pins(), p0, a0, p1, a1;
	pid_t r = park(b);
	char *payload = aligned_buf(bs);
	double t0, t;
	ssize_t n;

	if (next_request(&req, b))
		return;
	fill(payload, b);
	h = (void *)(payload - sizeof(*h));
	/* error paths after a successful pin: the pins go back */
	p0 = pins();
	header(h, &req, b);
	h->tag += 1000;
	errno = 0;
	n = reply(payload);
	CHECK(n < 0 && errno == ENOENT, "aligned reply, unknown tag -> ENOENT (%s)",
	      strerror(errno));
	header(h, &req, b);
	h->nr_blocks = 2;
	errno = 0;
	n = reply(payload);
	CHECK(n < 0 && errno == EINVAL, "aligned reply, len != 2 blocks -> EINVAL (%s)",
	      strerror(errno));
	CHECK(pins() == p0, "no pin left by refused aligned replies (%lld)",
	      pins() - p0);

	header(h, &req, b);
	a0 = acquired();
	t0 = now_ms();
	n = reply(payload);
	t = now_ms() - t0;
	/* Right away: the kernel said it is done with our pages. */
	memset(payload, 0xee, bs);
	p1 = pins();
	a1 = acquired();
	CHECK(n == (ssize_t)(sizeof(*h) + bs), "aligned reply accepted");
	printf("# measured: aligned reply write(2) took %.0f ms (data write delay %ld ms), %lld pages pinned\n",
	       t, delay_ms, a1 - a0);
	CHECK(a1 - a0 >= (long long)(bs / page),
	      "aligned reply was written in place (%lld pins taken)", a1 - a0);
	CHECK(t >= delay_ms * 0.8,
	      "aligned write(2) returned after the data write (%.0f ms)", t);
	/* the parked read's own O_DIRECT pins went when it was served */
	CHECK(p1 == base, "pins released when write(2) returns (%lld left)",
	      p1 - base);
	reaped(r, "aligned");
	device_block(b, "aligned, buffer scribbled after write(2)");
	munmap(payload - page, bs + page);
}

static void s_copy(uint64_t b)
{
	struct dm_stream_request req;
	pid_t r = park(b);
	char *m, *payload;
	long long a0;
	double t0, t;
	ssize_t n;

	if (next_request(&req, b))
		return;
	m = aligned_buf(bs + page);
	payload = m + 8;	/* unaligned: copied */
	fill(payload, b);
	header(payload - sizeof(struct dm_stream_reply), &req, b);
	a0 = acquired();
	t0 = now_ms();
	n = reply(payload);
	t = now_ms() - t0;
	memset(payload, 0xee, bs);
	CHECK(n > 0, "unaligned reply accepted");
	printf("# measured: unaligned reply write(2) took %.0f ms\n", t);
	CHECK(acquired() == a0, "unaligned reply copied (no pin)");
	reaped(r, "unaligned");
	device_block(b, "unaligned");
}

/* A helper SIGKILLed while its aligned reply's data write is under way. */
static void s_kill(uint64_t b)
{
	struct dm_stream_request req;
	long long p0 = pins();
	pid_t r = park(b), w;
	char *payload = aligned_buf(bs);
	double t0, t;
	int st;

	if (next_request(&req, b))
		return;
	fill(payload, b);
	header(payload - sizeof(struct dm_stream_reply), &req, b);
	w = fork();
	if (!w)
		_exit(reply(payload) > 0 ? 0 : 1);
	usleep(100000);
	t0 = now_ms();
	kill(w, SIGKILL);
	waitpid(w, &st, 0);
	t = now_ms() - t0;
	printf("# measured: a helper SIGKILLed in an aligned write(2) took %.0f ms to die (delay %ld ms)\n",
	       t, delay_ms);
	reaped(r, "killed writer");
	device_block(b, "killed writer");
	CHECK(pins() == p0, "no pin left after the killed writer (%lld)",
	      pins() - p0);
}

struct racer {
	char *payload;
	int memfd;
	int how;
};

static void *race(void *arg)
{
	struct racer *x = arg;
	char *junk;

	usleep(100000);		/* the data write is under way */
	switch (x->how) {
	case 0:	/* munmap, then junk at the same address */
		munmap(x->payload, bs);
		junk = mmap(x->payload, bs, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		if (junk != MAP_FAILED)
			memset(junk, 0xee, bs);
		break;
	case 1:	/* mprotect none */
		mprotect(x->payload, bs, PROT_NONE);
		break;
	case 2:	/* truncate the memfd, then junk in it */
		if (ftruncate(x->memfd, 0) || ftruncate(x->memfd, 2 * bs + page))
			perror("ftruncate");
		memset(x->payload, 0xee, bs);
		break;
	}
	return NULL;
}

static void s_race(uint64_t b, int how)
{
	static const char *names[] = { "munmap during the write",
		"mprotect during the write", "memfd truncated during the write" };
	struct dm_stream_request req;
	struct racer x = { .how = how, .memfd = -1 };
	long long p0 = pins();
	pid_t r = park(b);
	pthread_t th;
	char *m;
	ssize_t n;

	if (next_request(&req, b))
		return;
	if (how == 2) {
		x.memfd = memfd_create("payload", 0);
		if (x.memfd < 0 || ftruncate(x.memfd, 2 * bs + page)) {
			perror("memfd");
			exit(1);
		}
		m = mmap(NULL, bs + page, PROT_READ | PROT_WRITE, MAP_SHARED,
			 x.memfd, 0);
		if (m == MAP_FAILED) {
			perror("mmap memfd");
			exit(1);
		}
		x.payload = m + page;
	} else {
		x.payload = aligned_buf(bs);
	}
	fill(x.payload, b);
	header(x.payload - sizeof(struct dm_stream_reply), &req, b);
	pthread_create(&th, NULL, race, &x);
	n = reply(x.payload);
	CHECK(n > 0, "%s: reply accepted (%s)", names[how],
	      n < 0 ? strerror(errno) : "ok");
	pthread_join(th, NULL);
	reaped(r, names[how]);
	device_block(b, names[how]);
	CHECK(pins() == p0, "%s: no pin left (%lld)", names[how], pins() - p0);
}

/* The payload in a transparent huge page. */
static void s_thp(uint64_t b)
{
	struct dm_stream_request req;
	size_t huge = 2 << 20;
	long long p0 = pins();
	pid_t r = park(b);
	char *m, *base, *payload;
	ssize_t n;

	if (next_request(&req, b))
		return;
	m = mmap(NULL, 2 * huge, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	base = (char *)(((uintptr_t)m + huge - 1) & ~(uintptr_t)(huge - 1));
	if (madvise(base, huge, MADV_HUGEPAGE))
		printf("# madvise(MADV_HUGEPAGE): %m\n");
	memset(base, 1, huge);
	payload = base + huge - bs - page;	/* inside the huge page */
	fill(payload, b);
	header(payload - sizeof(struct dm_stream_reply), &req, b);
	n = reply(payload);
	CHECK(n > 0, "THP payload accepted (%s)", n < 0 ? strerror(errno) : "ok");
	reaped(r, "THP");
	device_block(b, "THP");
	CHECK(pins() == p0, "THP: no pin left (%lld)", pins() - p0);
	munmap(m, 2 * huge);
}

/* The payload in memfd_secret(2) memory: readable by us, not by GUP. */
static void s_secret(uint64_t b)
{
	struct dm_stream_request req;
	char *m, *payload;
	int sfd;
	ssize_t n;
	pid_t r;

#ifndef SYS_memfd_secret
#define SYS_memfd_secret 447
#endif
	sfd = syscall(SYS_memfd_secret, 0);
	if (sfd < 0 || ftruncate(sfd, bs + 2 * page)) {
		printf("# memfd_secret: %m: skipped\n");
		return;
	}
	m = mmap(NULL, bs + 2 * page, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
	if (m == MAP_FAILED) {
		printf("# mmap memfd_secret: %m: skipped\n");
		return;
	}
	r = park(b);
	if (next_request(&req, b))
		return;
	payload = m + page;
	fill(payload, b);
	header(payload - sizeof(struct dm_stream_reply), &req, b);
	errno = 0;
	n = reply(payload);
	printf("# measured: aligned payload in memfd_secret memory: %s\n",
	       n > 0 ? "accepted" : strerror(errno));
	CHECK(n > 0, "aligned payload in readable (memfd_secret) memory accepted (%s)",
	      n > 0 ? "ok" : strerror(errno));
	if (n < 0) {
		/* the same bytes, unaligned: copied, and accepted */
		memmove(payload + 8, payload, bs);
		header(payload + 8 - sizeof(struct dm_stream_reply), &req, b);
		n = reply(payload + 8);
		printf("# measured: the same payload 8 bytes further (copied): %s\n",
		       n > 0 ? "accepted" : strerror(errno));
	}
	if (n > 0) {
		reaped(r, "memfd_secret");
		device_block(b, "memfd_secret");
	}
}

/* The payload a mapping of the dm device at the very block asked for. */
static void s_self(uint64_t b, bool aligned)
{
	struct dm_stream_request req;
	pid_t r = park(b);
	int d = open(devpath, O_RDONLY);
	char *m, *hbuf, *payload;
	double t0;
	ssize_t n;

	if (next_request(&req, b))
		return;
	/* header just before a mapping of block b of the device */
	hbuf = mmap(NULL, 2 * page + bs, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	m = mmap(hbuf + page, bs, PROT_READ, MAP_SHARED | MAP_FIXED, d,
		 b * bs);
	if (m == MAP_FAILED) {
		perror("mmap device");
		exit(1);
	}
	payload = aligned ? m : m - 8;	/* unaligned: 8 bytes of anon */
	header(payload - sizeof(struct dm_stream_reply), &req, b);
	t0 = now_ms();
	errno = 0;
	n = reply(payload);
	printf("# measured: %s payload mapping the block being fetched: %s after %.0f ms\n",
	       aligned ? "aligned" : "unaligned",
	       n > 0 ? "accepted" : strerror(errno), now_ms() - t0);
	waitpid(r, NULL, 0);
	close(d);
}

int main(int argc, char **argv)
{
	struct dm_stream_attach a;
	uint64_t b;
	bool remove = argc > 5 && !strcmp(argv[5], "remove");
	bool self = argc > 5 && !strcmp(argv[5], "self");
	bool susp = argc > 5 && !strcmp(argv[5], "suspend");

	if (argc < 5) {
		fprintf(stderr, "usage: stream-pin <dm name> <image> <first block> <delay ms> [remove|self]\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	name = argv[1];
	snprintf(devpath, sizeof(devpath), "/dev/mapper/%s", name);
	b = strtoull(argv[3], NULL, 0);
	delay_ms = atol(argv[4]);
	page = sysconf(_SC_PAGESIZE);
	fd = open("/dev/" DM_STREAM_DEVNAME, O_RDWR);
	img = open(argv[2], O_RDONLY);
	if (fd < 0 || img < 0) {
		perror("open");
		return 1;
	}
	memset(&a, 0, sizeof(a));
	a.magic = DM_STREAM_MAGIC;
	a.version = DM_STREAM_VERSION;
	a.size = sizeof(a);
	a.max_blocks = 1;
	snprintf(a.id, sizeof(a.id), "%s", name);
	if (ioctl(fd, DM_STREAM_IOC_ATTACH, &a)) {
		perror("attach");
		return 1;
	}
	bs = a.block_size;
	printf("# block size %zu, pins outstanding %lld\n", bs, pins());

	if (self) {
		s_self(b, true);
		s_self(b + 2, false);
		printf("%d failures\n", failures);
		return failures ? 1 : 0;
	}
	if (susp) {
		/* argv[6]: the data device (dm name), suspended meanwhile */
		struct dm_stream_request req;
		long long p0 = pins();
		pid_t r = park(b), w;
		char *payload = aligned_buf(bs);
		char cmd[128];
		double t0;
		int st, i;

		if (argc < 7 || next_request(&req, b))
			return 1;
		fill(payload, b);
		header(payload - sizeof(struct dm_stream_reply), &req, b);
		snprintf(cmd, sizeof(cmd), "dmsetup suspend %s", argv[6]);
		if (system(cmd))
			return 1;
		w = fork();
		if (!w)
			_exit(reply(payload) > 0 ? 0 : 1);
		reaped(r, "suspended data device");
		usleep(200000);
		t0 = now_ms();
		kill(w, SIGKILL);
		for (i = 0; i < 30 && waitpid(w, &st, WNOHANG) != w; i++)
			usleep(100000);
		CHECK(i < 30, "a helper SIGKILLed while its aligned reply waits for a suspended data device dies (%.0f ms)",
		      now_ms() - t0);
		snprintf(cmd, sizeof(cmd), "dmsetup resume %s", argv[6]);
		if (system(cmd))
			return 1;
		if (i == 30) {
			waitpid(w, &st, 0);
			printf("# measured: the killed helper died only %.0f ms after the kill, once the data device resumed\n",
			       now_ms() - t0);
		}
		device_block(b, "suspended data device");
		CHECK(pins() == p0, "no pin left (%lld)", pins() - p0);
		printf("%d failures\n", failures);
		return failures ? 1 : 0;
	}
	if (remove) {
		/* remove the device while an aligned reply's write waits */
		struct dm_stream_request req;
		pid_t r = park(b);
		char *payload = aligned_buf(bs);
		pid_t rm;
		ssize_t n;
		int st;

		if (next_request(&req, b))
			return 1;
		fill(payload, b);
		header(payload - sizeof(struct dm_stream_reply), &req, b);
		rm = fork();
		if (!rm) {
			usleep(300000);
			execlp("dmsetup", "dmsetup", "remove", "--retry", name,
			       NULL);
			_exit(127);
		}
		/* the reader completes from the reply, before the write */
		n = reply(payload);
		CHECK(n > 0, "aligned reply while the device is removed (%s)",
		      n > 0 ? "ok" : strerror(errno));
		reaped(r, "remove");
		waitpid(rm, &st, 0);
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "dmsetup remove during the write");
		printf("%d failures\n", failures);
		return failures ? 1 : 0;
	}

	s_wait(b++);
	s_copy(b++);
	s_kill(b++);
	s_race(b++, 0);
	s_race(b++, 1);
	s_race(b++, 2);
	s_thp(b++);
	s_secret(b++);
	printf("# pins outstanding at the end %lld\n", pins());
	printf("%d failures\n", failures);
	return failures ? 1 : 0;
}
