// SPDX-License-Identifier: GPL-2.0
/*
 * stream-io: test and bench I/O against a block device.
 *
 *   stream-io verify <dev> <reference> <threads> <reads> <max bytes> <seed>
 *       concurrent random O_DIRECT reads of <dev>, each compared byte for
 *       byte with the same range of <reference>; exit 1 on any mismatch or
 *       I/O error.
 *   stream-io rand <dev> <r|w> <block bytes> <count> <seed>
 *       random aligned O_DIRECT reads or writes, for the benchmark.
 *   stream-io tail <dev> <stride bytes> <count>
 *       one 4 KiB O_DIRECT read at the start of each of the last <count>
 *       strides of <dev>, from the end backwards: demand misses far from
 *       a background fill, which works upwards from block 0.
 *   stream-io nbdrand <uri> <block bytes> <count> <seed>
 *       the same random reads (same seed, same offsets) straight from an
 *       NBD server through libnbd: the physical limit for cold reads.
 *   stream-io pread <dev> <offset> <length>
 *       one O_DIRECT read of <length> bytes at byte <offset>: one bio
 *       over several blocks, at any aligned offset.
 *   stream-io copy <src> <src offset> <dev> <dev offset> <length> <fail>
 *       read <length> bytes of <src> in full, then (with <fail> 1) set
 *       this task's make-it-fail (fault injection), then one O_DIRECT
 *       pwrite of them to <dev> and fsync.  Unlike dd, a short read of
 *       the source is never written: injected allocation failures hit
 *       the write alone.  Exit 0: written and fsync'd; 3: the pwrite
 *       was short (its byte count on stdout); 1: an error.
 *   stream-io now
 *       CLOCK_MONOTONIC in microseconds, for the benchmark's timings
 *       (/proc/uptime counts 10 ms, too coarse for runs of 100 ms).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
#include <libnbd.h>

struct job {
	const char *dev, *ref;
	unsigned int reads, max;
	uint64_t seed, size;
	int failed;
};

static uint64_t next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static uint64_t dev_size(int fd)
{
	uint64_t size;

	if (ioctl(fd, BLKGETSIZE64, &size) < 0) {
		off_t e = lseek(fd, 0, SEEK_END);

		return e < 0 ? 0 : (uint64_t)e;
	}
	return size;
}

static void *verify(void *arg)
{
	struct job *j = arg;
	int fd = open(j->dev, O_RDONLY | O_DIRECT);
	int rfd = open(j->ref, O_RDONLY);
	void *a = NULL, *b = malloc(j->max);
	unsigned int i;

	if (fd < 0 || rfd < 0 || !b || posix_memalign(&a, 4096, j->max)) {
		perror("verify setup");
		j->failed = 1;
		return NULL;
	}
	for (i = 0; i < j->reads; i++) {
		uint64_t len = (next(&j->seed) % (j->max / 512) + 1) * 512;
		uint64_t off = next(&j->seed) % ((j->size - len) / 512 + 1) * 512;
		ssize_t n = pread(fd, a, len, off);

		if (n != (ssize_t)len || pread(rfd, b, len, off) != (ssize_t)len) {
			fprintf(stderr, "read %llu+%llu: %s\n",
				(unsigned long long)off,
				(unsigned long long)len,
				n < 0 ? strerror(errno) : "short");
			j->failed = 1;
			break;
		}
		if (memcmp(a, b, len)) {
			fprintf(stderr, "mismatch at %llu+%llu\n",
				(unsigned long long)off,
				(unsigned long long)len);
			j->failed = 1;
			break;
		}
	}
	close(fd);
	close(rfd);
	free(a);
	free(b);
	return NULL;
}

static int cmd_verify(char **argv)
{
	unsigned int t, threads = atoi(argv[2]);
	struct job *jobs = calloc(threads, sizeof(*jobs));
	pthread_t *tids = calloc(threads, sizeof(*tids));
	int fd = open(argv[0], O_RDONLY), failed = 0;
	uint64_t size;

	if (fd < 0 || !jobs || !tids) {
		perror(argv[0]);
		return 2;
	}
	size = dev_size(fd);
	close(fd);
	for (t = 0; t < threads; t++) {
		jobs[t] = (struct job){ argv[0], argv[1], atoi(argv[3]),
			atoi(argv[4]), strtoull(argv[5], NULL, 0) + t * 7919 + 1,
			size, 0 };
		pthread_create(&tids[t], NULL, verify, &jobs[t]);
	}
	for (t = 0; t < threads; t++) {
		pthread_join(tids[t], NULL);
		failed |= jobs[t].failed;
	}
	printf("verify: %u threads x %s reads: %s\n", threads, argv[3],
	       failed ? "FAILED" : "ok");
	return failed;
}

static int cmd_rand(char **argv)
{
	int wr = argv[1][0] == 'w';
	int fd = open(argv[0], (wr ? O_WRONLY : O_RDONLY) | O_DIRECT);
	unsigned int bs = atoi(argv[2]), count = atoi(argv[3]), i;
	uint64_t seed = strtoull(argv[4], NULL, 0) | 1, size, blocks;
	void *buf;

	if (fd < 0 || posix_memalign(&buf, 4096, bs)) {
		perror(argv[0]);
		return 2;
	}
	memset(buf, 0xa5, bs);
	size = dev_size(fd);
	blocks = size / bs;
	for (i = 0; i < count; i++) {
		off_t off = (off_t)(next(&seed) % blocks) * bs;
		ssize_t n = wr ? pwrite(fd, buf, bs, off) :
				 pread(fd, buf, bs, off);

		if (n != (ssize_t)bs) {
			perror("rand io");
			return 1;
		}
	}
	close(fd);
	return 0;
}

static int cmd_tail(char **argv)
{
	int fd = open(argv[0], O_RDONLY | O_DIRECT);
	unsigned int stride = atoi(argv[1]), count = atoi(argv[2]), i;
	uint64_t size;
	void *buf;

	if (fd < 0 || posix_memalign(&buf, 4096, 4096)) {
		perror(argv[0]);
		return 2;
	}
	size = dev_size(fd);
	if (!stride || (uint64_t)count * stride > size) {
		fprintf(stderr, "tail: %u strides of %u exceed the device\n",
			count, stride);
		return 2;
	}
	for (i = 0; i < count; i++) {
		off_t off = (off_t)(size / stride - 1 - i) * stride;

		if (pread(fd, buf, 4096, off) != 4096) {
			perror("tail read");
			return 1;
		}
	}
	close(fd);
	return 0;
}

static int cmd_pread(char **argv)
{
	int fd = open(argv[0], O_RDONLY | O_DIRECT);
	uint64_t off = strtoull(argv[1], NULL, 0);
	size_t len = strtoull(argv[2], NULL, 0);
	void *buf;

	if (fd < 0 || !len || posix_memalign(&buf, 4096, len)) {
		perror(argv[0]);
		return 2;
	}
	if (pread(fd, buf, len, off) != (ssize_t)len) {
		perror("pread");
		return 1;
	}
	free(buf);
	close(fd);
	return 0;
}

static int read_full(int fd, char *buf, size_t len, off_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, buf + done, len - done, off + done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -ENODATA;
		done += n;
	}
	return 0;
}

static int cmd_copy(char **argv)
{
	size_t len = strtoull(argv[4], NULL, 0);
	off_t soff = strtoull(argv[1], NULL, 0);
	off_t doff = strtoull(argv[3], NULL, 0);
	int src, dev, r;
	ssize_t n;
	void *buf;

	if (!len || posix_memalign(&buf, 4096, len)) {
		fprintf(stderr, "copy: bad length %s\n", argv[4]);
		return 2;
	}
	src = open(argv[0], O_RDONLY);
	dev = open(argv[2], O_WRONLY | O_DIRECT);
	if (src < 0 || dev < 0) {
		perror("open");
		return 2;
	}
	r = read_full(src, buf, len, soff);
	if (r) {
		fprintf(stderr, "read %s: %s\n", argv[0], strerror(-r));
		return 2;
	}
	if (atoi(argv[5])) {
		int f = open("/proc/self/make-it-fail", O_WRONLY);

		if (f < 0 || write(f, "1", 1) != 1) {
			perror("make-it-fail");
			return 2;
		}
		close(f);
	}
	n = pwrite(dev, buf, len, doff);
	if (n < 0) {
		perror("pwrite");
		return 1;
	}
	if (fsync(dev)) {
		perror("fsync");
		return 1;
	}
	if ((size_t)n != len) {
		printf("%zd\n", n);
		return 3;
	}
	free(buf);
	close(src);
	close(dev);
	return 0;
}

static int cmd_nbdrand(char **argv)
{
	struct nbd_handle *h = nbd_create();
	unsigned int bs = atoi(argv[1]), count = atoi(argv[2]), i;
	uint64_t seed = strtoull(argv[3], NULL, 0) | 1, blocks;
	int64_t size;
	void *buf = malloc(bs);

	if (!h || !buf || nbd_connect_uri(h, argv[0]) == -1) {
		fprintf(stderr, "connect %s: %s\n", argv[0], nbd_get_error());
		return 2;
	}
	size = nbd_get_size(h);
	blocks = size / bs;
	for (i = 0; i < count; i++) {
		uint64_t off = (next(&seed) % blocks) * bs;

		if (nbd_pread(h, buf, bs, off, 0) == -1) {
			fprintf(stderr, "pread: %s\n", nbd_get_error());
			return 1;
		}
	}
	nbd_close(h);
	free(buf);
	return 0;
}

static int cmd_now(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts)) {
		perror("clock_gettime");
		return 1;
	}
	printf("%lld\n", (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "now"))
		return cmd_now();
	if (argc == 6 && !strcmp(argv[1], "nbdrand"))
		return cmd_nbdrand(argv + 2);
	if (argc == 8 && !strcmp(argv[1], "verify"))
		return cmd_verify(argv + 2);
	if (argc == 7 && !strcmp(argv[1], "rand"))
		return cmd_rand(argv + 2);
	if (argc == 5 && !strcmp(argv[1], "tail"))
		return cmd_tail(argv + 2);
	if (argc == 8 && !strcmp(argv[1], "copy"))
		return cmd_copy(argv + 2);
	if (argc == 5 && !strcmp(argv[1], "pread"))
		return cmd_pread(argv + 2);
	fprintf(stderr, "usage: see the comment at the top of stream-io.c\n");
	return 2;
}
