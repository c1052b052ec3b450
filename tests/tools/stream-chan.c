// SPDX-License-Identifier: GPL-2.0
/*
 * stream-chan: a confused and a hostile helper, for the channel tests.
 *
 *   stream-chan <dm name> <image> <block>
 *
 * Expects exactly one read of <block> to be parked on <dm name> (the test
 * starts it) and no helper attached.  Checks that the kernel refuses, with
 * the documented errno and without side effects, every malformed attach
 * and reply, then answers the request correctly from <image> and checks
 * that a duplicate answer is refused too.  Exits 0 when every check held.
 *
 *   stream-chan --siblings <dm name> <image> <block>
 *
 * Expects reads of <block> and <block> + 1 to be parked, queued in that
 * order, the first to expire (fetch_timeout) well before the second, and
 * no helper attached.  Takes the request for both, waits for the kernel
 * to send <block> + 1 again on its own once <block> has expired (its
 * request cannot be answered any more), checks that the old request is
 * refused, and answers the new one from <image>.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/capability.h>

#include "uapi/dm-stream.h"

static int failures;

static void expect(const char *what, long r, int want)
{
	int got = r < 0 ? errno : 0;

	if (got == want) {
		printf("ok: %s -> %s\n", what, want ? strerror(want) : "success");
		return;
	}
	printf("FAIL: %s: expected %s, got %s\n", what,
	       want ? strerror(want) : "success", got ? strerror(got) : "success");
	failures++;
}

static void init_attach(struct dm_stream_attach *a, const char *name)
{
	memset(a, 0, sizeof(*a));
	a->magic = DM_STREAM_MAGIC;
	a->version = DM_STREAM_VERSION;
	a->size = sizeof(*a);
	a->max_blocks = 4;
	snprintf(a->id, sizeof(a->id), "%s", name);
}

static void init_reply(struct dm_stream_reply *h, uint64_t tag,
		       uint64_t block, uint32_t nr_blocks, uint64_t len)
{
	memset(h, 0, sizeof(*h));
	h->magic = DM_STREAM_MAGIC;
	h->version = DM_STREAM_VERSION;
	h->size = sizeof(*h);
	h->tag = tag;
	h->block = block;
	h->nr_blocks = nr_blocks;
	h->len = len;
}

static long send_reply(int fd, const struct dm_stream_reply *h,
		       const void *data, size_t len)
{
	char *buf = malloc(sizeof(*h) + len);
	long r;

	memcpy(buf, h, sizeof(*h));
	if (len)
		memcpy(buf + sizeof(*h), data, len);
	r = write(fd, buf, sizeof(*h) + len);
	free(buf);
	return r;
}

/*
 * send_reply() from a mapping of our own.  With @aligned the payload
 * starts a page, as streamd lays it out: the kernel writes it from our
 * pages in place (pinned) and returns once it is written; otherwise it
 * starts 8 bytes before a page and the kernel copies it.  With
 * @unreadable, everything from that page on is PROT_NONE.
 */
static long send_reply_mapped(int fd, const struct dm_stream_reply *h,
			      const void *data, size_t len, bool aligned,
			      bool unreadable)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t size = 2 * page + (len + page - 1) / page * page;
	char *map, *payload;
	long r;
	int e;

	map = mmap(NULL, size, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (map == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	payload = map + page - (aligned ? 0 : 8);
	memcpy(payload - sizeof(*h), h, sizeof(*h));
	if (len)
		memcpy(payload, data, len);
	if (unreadable && mprotect(map + page, size - page, PROT_NONE)) {
		perror("mprotect");
		exit(1);
	}
	r = write(fd, payload - sizeof(*h), sizeof(*h) + len);
	e = errno;
	munmap(map, size);
	errno = e;
	return r;
}

/* Wait up to @ms for a request on @fd and read it into @req. */
static int next_request(int fd, struct dm_stream_request *req, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	if (poll(&p, 1, ms) != 1 || !(p.revents & POLLIN))
		return -1;
	return read(fd, req, sizeof(*req)) == sizeof(*req) ? 0 : -1;
}

static int siblings(const char *name, const char *image, uint64_t block)
{
	struct dm_stream_request first, again;
	struct dm_stream_reply h;
	struct dm_stream_attach a;
	size_t bs;
	char *data;
	int fd, img;

	fd = open("/dev/" DM_STREAM_DEVNAME, O_RDWR);
	img = open(image, O_RDONLY);
	if (fd < 0 || img < 0) {
		perror("open");
		return 1;
	}
	init_attach(&a, name);
	if (ioctl(fd, DM_STREAM_IOC_ATTACH, &a)) {
		perror("attach");
		return 1;
	}
	bs = a.block_size;
	if (next_request(fd, &first, 10000)) {
		printf("FAIL: no request\n");
		return 1;
	}
	printf("%s: request block %llu+%u\n",
	       first.block == block && first.nr_blocks == 2 ? "ok" : "FAIL",
	       (unsigned long long)first.block, first.nr_blocks);
	if (first.block != block || first.nr_blocks != 2)
		failures++;
	/* The first block expires; the second comes back on its own. */
	if (next_request(fd, &again, 20000)) {
		printf("FAIL: block %llu was not sent again after block %llu expired\n",
		       (unsigned long long)block + 1, (unsigned long long)block);
		return 1;
	}
	printf("%s: request again block %llu+%u\n",
	       again.block == block + 1 && again.nr_blocks == 1 &&
	       again.tag != first.tag ? "ok" : "FAIL",
	       (unsigned long long)again.block, again.nr_blocks);
	if (again.block != block + 1 || again.nr_blocks != 1 ||
	    again.tag == first.tag)
		failures++;

	data = malloc(2 * bs);
	if (!data || pread(img, data, 2 * bs, block * bs) != (ssize_t)(2 * bs)) {
		perror("read image");
		return 1;
	}
	init_reply(&h, first.tag, block, 2, 2 * bs);
	expect("answer to the expired request", send_reply(fd, &h, data, 2 * bs),
	       ENOENT);
	init_reply(&h, again.tag, block + 1, 1, bs);
	expect("answer to the request sent again",
	       send_reply(fd, &h, data + bs, bs) < 0 ? -1 : 0, 0);
	free(data);
	close(img);
	close(fd);
	return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
	struct dm_stream_attach a;
	struct dm_stream_request req;
	struct dm_stream_reply h, good;
	struct pollfd p;
	char *data;
	int fd, fd2, img;
	size_t bs;
	unsigned int maxb;
	pid_t pid;
	int st;

	if (argc == 5 && !strcmp(argv[1], "--siblings"))
		return siblings(argv[2], argv[3], strtoull(argv[4], NULL, 0));
	if (argc != 4) {
		fprintf(stderr, "usage: stream-chan [--siblings] <dm name> <image> <block>\n");
		return 2;
	}

	/*
	 * A helper without CAP_SYS_ADMIN is refused at open, even as root
	 * (so file permissions are not what refuses it).
	 */
	pid = fork();
	if (!pid) {
		struct __user_cap_header_struct hdr = {
			_LINUX_CAPABILITY_VERSION_3, 0 };
		struct __user_cap_data_struct cap[2];

		if (syscall(SYS_capget, &hdr, cap))
			_exit(3);
		cap[CAP_SYS_ADMIN / 32].effective &= ~(1U << (CAP_SYS_ADMIN % 32));
		cap[CAP_SYS_ADMIN / 32].permitted &= ~(1U << (CAP_SYS_ADMIN % 32));
		if (syscall(SYS_capset, &hdr, cap))
			_exit(3);
		_exit(open("/dev/" DM_STREAM_DEVNAME, O_RDWR) < 0 &&
		      errno == EPERM ? 0 : 1);
	}
	waitpid(pid, &st, 0);
	if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
		printf("ok: open without CAP_SYS_ADMIN -> %s\n", strerror(EPERM));
	} else {
		printf("FAIL: open without CAP_SYS_ADMIN was not refused with EPERM\n");
		failures++;
	}

	fd = open("/dev/" DM_STREAM_DEVNAME, O_RDWR);
	if (fd < 0) {
		perror("open");
		return 1;
	}
	init_attach(&a, argv[1]);
	a.magic ^= 1;
	expect("attach with bad magic", ioctl(fd, DM_STREAM_IOC_ATTACH, &a), EPROTO);
	init_attach(&a, argv[1]);
	a.version = 99;
	expect("attach with unknown version", ioctl(fd, DM_STREAM_IOC_ATTACH, &a), EPROTO);
	init_attach(&a, argv[1]);
	a.version = DM_STREAM_VERSION - 1;
	expect("attach with the previous ABI version", ioctl(fd, DM_STREAM_IOC_ATTACH, &a), EPROTO);
	init_attach(&a, argv[1]);
	a.reserved3 = 1;
	expect("attach with reserved3 set", ioctl(fd, DM_STREAM_IOC_ATTACH, &a), EINVAL);
	init_attach(&a, argv[1]);
	a.size = 16;
	expect("attach with a size below version 1's", ioctl(fd, DM_STREAM_IOC_ATTACH, &a), EPROTO);
	{
		/* A larger (future) structure whose extra bytes are set. */
		struct { struct dm_stream_attach a; uint64_t more; } big;

		init_attach(&big.a, argv[1]);
		big.a.size = sizeof(big);
		big.more = 1;
		expect("attach with unknown non-zero fields", ioctl(fd, DM_STREAM_IOC_ATTACH, &big), E2BIG);
	}
	init_attach(&a, argv[1]);
	a.reserved[2] = 1;
	expect("attach with a reserved field set", ioctl(fd, DM_STREAM_IOC_ATTACH, &a), EINVAL);
	init_attach(&a, argv[1]);
	a.image_size = 4096;
	expect("attach with another image's size", ioctl(fd, DM_STREAM_IOC_ATTACH, &a), EMEDIUMTYPE);
	init_attach(&a, argv[1]);
	memset(a.image_id, 'x', sizeof(a.image_id));
	expect("attach with an unterminated image id", ioctl(fd, DM_STREAM_IOC_ATTACH, &a), EINVAL);
	init_attach(&a, argv[1]);
	a.flags = 0x80;
	expect("attach with unknown flag", ioctl(fd, DM_STREAM_IOC_ATTACH, &a), EINVAL);
	init_attach(&a, "no-such-device");
	expect("attach to unknown device", ioctl(fd, DM_STREAM_IOC_ATTACH, &a), ENOENT);
	expect("read before attach", read(fd, &req, sizeof(req)), ENODEV);
	init_attach(&a, argv[1]);
	expect("attach", ioctl(fd, DM_STREAM_IOC_ATTACH, &a), 0);
	bs = a.block_size;
	maxb = a.max_blocks;
	if (a.max_blocks != 4 && a.max_blocks != (1u << 20) / bs) {
		printf("FAIL: attach agreed on %u blocks a request, asked 4\n",
		       a.max_blocks);
		failures++;
	}
	expect("attach twice on one file", ioctl(fd, DM_STREAM_IOC_ATTACH, &a), EISCONN);
	fd2 = open("/dev/" DM_STREAM_DEVNAME, O_RDWR);
	init_attach(&a, argv[1]);
	expect("second helper", ioctl(fd2, DM_STREAM_IOC_ATTACH, &a), EBUSY);
	close(fd2);

	expect("read into a buffer too small", read(fd, &req, 4), EINVAL);
	p.fd = fd;
	p.events = POLLIN;
	if (poll(&p, 1, 20000) != 1) {
		printf("FAIL: no request within 20 s\n");
		return 1;
	}
	expect("read request", read(fd, &req, sizeof(req)) == sizeof(req) ? 0 : -1, 0);
	if (req.block != strtoull(argv[3], NULL, 0) || req.nr_blocks != 1 ||
	    req.reserved) {
		printf("FAIL: request for block %llu+%u, expected %s+1\n",
		       (unsigned long long)req.block, req.nr_blocks, argv[3]);
		return 1;
	}

	data = calloc(1, bs + 1);
	img = open(argv[2], O_RDONLY);
	if (img < 0 || pread(img, data, bs, req.block * bs) != (ssize_t)bs) {
		perror(argv[2]);
		return 1;
	}
	init_reply(&good, req.tag, req.block, 1, bs);

	h = good;
	h.magic = 0;
	expect("reply with bad magic", send_reply(fd, &h, data, bs), EPROTO);
	h = good;
	h.version = 99;
	expect("reply with unknown version", send_reply(fd, &h, data, bs), EPROTO);
	h = good;
	h.tag += 1000;
	expect("reply with unknown tag", send_reply(fd, &h, data, bs), ENOENT);
	h = good;
	h.block += 1;
	expect("reply for another block", send_reply(fd, &h, data, bs), ENOENT);
	h = good;
	h.block = ~0ULL;
	expect("reply beyond the device", send_reply(fd, &h, data, bs), ENOENT);
	h = good;
	h.nr_blocks = 0;
	expect("reply for no block", send_reply(fd, &h, data, bs), EINVAL);
	h = good;
	h.reserved = 1;
	expect("reply with reserved set", send_reply(fd, &h, data, bs), EINVAL);
	{
		/* Two blocks: the request's and one never asked for. */
		char *two = calloc(2, bs);

		h = good;
		h.nr_blocks = 2;
		h.len = 2 * bs;
		expect("reply past the request", send_reply(fd, &h, two, 2 * bs), ENOENT);
		h.block = good.block ? good.block - 1 : 0;
		expect("reply before the request", good.block ? send_reply(fd, &h, two, 2 * bs) : (errno = ENOENT, -1), ENOENT);
		h = good;
		h.nr_blocks = maxb + 1;
		h.len = 0;
		h.flags = DM_STREAM_REPLY_ZERO;
		expect("reply over max_blocks", send_reply(fd, &h, NULL, 0), EINVAL);
		h = good;
		h.nr_blocks = 2;
		expect("reply whose len is not nr_blocks blocks", send_reply(fd, &h, data, bs), EINVAL);
		free(two);
	}
	h = good;
	h.len = bs / 2;
	expect("reply with a short payload", send_reply(fd, &h, data, bs / 2), EINVAL);
	expect("payload longer than len", send_reply(fd, &good, data, bs + 1),
	       EINVAL);
	h = good;
	h.flags = 0x40;
	expect("reply with unknown flag", send_reply(fd, &h, data, bs), EINVAL);
	h = good;
	h.error = 5;
	h.len = 0;
	expect("reply with positive error", send_reply(fd, &h, NULL, 0), EINVAL);
	h = good;
	h.flags = DM_STREAM_REPLY_ZERO;
	expect("zero reply with payload", send_reply(fd, &h, data, bs), EINVAL);
	expect("truncated header", write(fd, &good, sizeof(good) - 1), EINVAL);

	expect("payload in unreadable memory",
	       send_reply_mapped(fd, &good, data, bs, false, true), EFAULT);
	expect("page-aligned payload in unreadable memory",
	       send_reply_mapped(fd, &good, data, bs, true, true), EFAULT);

	/* Written from our pages in place; the parked read gets them too. */
	expect("correct reply",
	       send_reply_mapped(fd, &good, data, bs, true, false), 0);
	expect("duplicate reply", send_reply(fd, &good, data, bs), ENOENT);
	expect("duplicate page-aligned reply",
	       send_reply_mapped(fd, &good, data, bs, true, false), ENOENT);
	close(fd);
	close(img);
	free(data);
	printf("%d failures\n", failures);
	return failures ? 1 : 0;
}
