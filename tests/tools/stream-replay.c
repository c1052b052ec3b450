// SPDX-License-Identifier: GPL-2.0
/*
 * stream-replay: read a dm-log-writes log and replay it, for the crash-point
 * suite (tests/guest/replay.sh).
 *
 *   stream-replay list <log>
 *   stream-replay replay <log> <dev> --from A --to B
 *   stream-replay tear <log> <dev> --entry N --sectors K
 *   stream-replay sums <dev> --bs BYTES [--count N] [--skip N]
 *   stream-replay point <log> <ref> <copy> --from A --to B --meta SECTORS
 *                 --bs BYTES [--tear N --sectors K]
 *   stream-replay diff <dev> --bs BYTES --at SECTORS --image FILE
 *                 [<first>+<count> ...]
 *   stream-replay probe <name> <dev> --blocks N --bs BYTES --at SECTORS
 *                 --image FILE --diff FILE
 *   stream-replay klog [--after TEXT --grep TEXT] <&<fd on /dev/kmsg>
 *   stream-replay fsync <dev>
 *   stream-replay write <dev> --at BYTES --len BYTES --src FILE --src-at BYTES
 *                 [--dsync 1]
 *
 * The log format (Documentation/admin-guide/device-mapper/log-writes.rst,
 * drivers/md/dm-log-writes.c), all fields little endian:
 *
 *   sector 0        super: le64 magic 0x6a736677736872, le64 version (1),
 *                   le64 nr_entries, le32 sectorsize
 *   then, nr_entries times, starting at byte <sectorsize>:
 *     one sector    entry: le64 sector, le64 nr_sectors, le64 flags,
 *                   le64 data_len; a MARK's string (data_len bytes, no
 *                   terminator) follows in the same sector
 *     nr_sectors    the data written, unless the entry is a DISCARD
 *
 * "sector" and "nr_sectors" count <sectorsize> units of the logged device.
 * Flags: FLUSH 1, FUA 2, DISCARD 4, MARK 8, METADATA 16.  The log holds
 * writes in completion order, each write before the flush that followed
 * its completion; the super's nr_entries is only updated on FUA and MARK
 * entries (and when the target is removed, which adds a last mark).
 *
 * Entries are numbered from 0.  "replay --from A --to B" applies entries
 * [A, B), so a caller can move a device forward from one crash point to
 * the next.  "tear" applies the first K sectors of entry N only: a write
 * torn at a sector boundary by a power cut.
 *
 * DISCARD entries are replayed as zeroes over their range: the content the
 * stream target gives a discarded block.  (dm-log-writes does not pass
 * REQ_OP_WRITE_ZEROES down, so over it the target advertises no discard
 * support and the suite expects none to be logged; zeroing is the
 * conservative choice for any other discard.)
 *
 * "sums" prints one 64-bit hash per block of <dev> (from block --skip on),
 * one a line, as "h" and 16 hex digits: the oracle and the checks compare
 * blocks by it, in awk.  The "h" keeps a hash from looking like a number:
 * bare, a hash such as 1461933e95733710 is a decimal float to awk, which
 * compares such fields numerically; it overflows to inf, and busybox awk
 * finds inf != inf (inf - inf is NaN), so a block equal to the image
 * "differed" from it; all-digit hashes would compare with rounding.  The
 * hash is FNV-1a over 64-bit little-endian words (not bytes: eight times
 * fewer steps, which matters under TCG); blocks are multiples of 512.  It reads with
 * O_DIRECT when the device allows it, so that a dm device is really read.
 * "fsync" opens a device for writing and fsyncs it: a REQ_PREFLUSH.
 * "write" copies <len> bytes of <src> to <dev> in one O_DIRECT write
 * (O_DSYNC too with --dsync 1: a REQ_FUA write), the workload's writes.
 *
 * "point" prepares one crash point, in one pass: it applies entries
 * [A, B) to <ref> (a file: the replay moved forward, never loaded), reads
 * <ref> into memory, applies the first K sectors of entry N there when
 * --tear is given, then makes <copy> (the device the check loads, which the
 * previous check's target wrote to) equal to it by rewriting only the
 * <bs>-sized blocks that differ (O_DIRECT both ways).  Output: "zero 1" if
 * the first <meta> sectors (the metadata slice) are all zero, else
 * "zero 0", then "copied <n> <m>": <n> blocks rewritten, and <m> data
 * blocks of <copy> that differed from <ref> as it was before this call
 * outside the previous point's torn range (remembered in "<ref>.torn"):
 * m > 0 means the previous check wrote to the data slice, which the suite
 * relies on never happening.  <ref> is moved forward in place (mapped,
 * the old content of the blocks it changes saved), a loop device <copy> is
 * read from its file (the same bytes, without copying 17 MiB through the
 * device under TCG) and written through the device, and "<ref>.pos" keeps
 * where the log was left, for the next call's --from.
 *
 * "diff" reads the blocks of the given ranges (block numbers, <bs> blocks
 * from sector --at of <dev>) and prints "<block> <hash>" (the hash as
 * "sums" prints it) for each whose content differs from the same block of
 * <image>: the checks need no
 * other hash, every other block holding the image's content.
 *
 * "probe" runs the checks of one crash point on the loaded stream device
 * <name> over the copy <dev> (the data slice from sector --at), asking the
 * target with device-mapper ioctls as dmsetup would: its status; every
 * page of "absent"; "diff" of the present blocks (the complement) against
 * image --image, into file --diff; the last present block read through
 * /dev/mapper/<name>, which must equal the data slice's; suspend; for
 * consumers 0 and 1 "snapshot" (two words), every page of "ranges",
 * "abort"; if the status says rw, "revert" and every page of "absent";
 * resume; remove.  A page must start with a cursor that moves forward or
 * is --blocks.  It prints "status <start> <len> stream <status>",
 * "absent|d0|d1|abs2 <ranges>|x" (x: refused), "rev <why>" and, for each
 * step that failed, "fail <invariant> <message>"; the suite's oracle
 * judges the rest.
 *
 * "klog" prints the text of the kernel log records not read yet from the
 * /dev/kmsg open on its stdin (that open file remembers the position, so
 * the caller keeps it open across calls), one a line, from the first
 * ending with --after on, those containing --grep (as "sed -n
 * '/TEXT$/,$p' | grep -F TEXT" of dmesg).  Lost (overwritten) records
 * are an error.
 *
 * Exit status: 0, 1 on an error (with a message on stderr), 2 on usage.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/dm-ioctl.h>

#define LOG_MAGIC	0x6a736677736872ULL
#define LOG_VERSION	1

#define LOG_FLUSH	(1 << 0)
#define LOG_FUA		(1 << 1)
#define LOG_DISCARD	(1 << 2)
#define LOG_MARK	(1 << 3)
#define LOG_METADATA	(1 << 4)

#define ENTRY_HDR_LEN	32	/* four le64 */
#define MAX_SECTORSIZE	4096

/* A block hash, never numeric to awk (see "sums" above). */
#define HASH_FMT	"h%016llx"

struct log {
	int fd;
	const char *path;
	uint32_t sectorsize;
	uint64_t nr_entries;
	/* cursor: the entry at byte offset "pos" has number "idx" */
	uint64_t idx;
	off_t pos;
};

struct entry {
	uint64_t sector;	/* in sectorsize units */
	uint64_t nr_sectors;
	uint64_t flags;
	uint64_t data_len;
	char mark[MAX_SECTORSIZE];
	off_t data_pos;		/* byte offset of the data in the log */
};

static int read_full(int fd, void *buf, size_t len, off_t off,
		     const char *what)
{
	ssize_t n;

	while (len) {
		n = pread(fd, buf, len, off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "stream-replay: read %s at %lld: %m\n",
				what, (long long)off);
			return -errno;
		}
		if (n == 0) {
			fprintf(stderr,
				"stream-replay: read %s at %lld: unexpected end\n",
				what, (long long)off);
			return -EIO;
		}
		buf = (char *)buf + n;
		len -= n;
		off += n;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t len, off_t off,
		      const char *what)
{
	ssize_t n;

	while (len) {
		n = pwrite(fd, buf, len, off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "stream-replay: write %s at %lld: %m\n",
				what, (long long)off);
			return -errno;
		}
		buf = (const char *)buf + n;
		len -= n;
		off += n;
	}
	return 0;
}

static uint64_t get_le64(const unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return le64toh(v);
}

static uint32_t get_le32(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return le32toh(v);
}

static int log_open(struct log *log, const char *path)
{
	unsigned char sb[MAX_SECTORSIZE];
	uint64_t magic, version;
	int r;

	log->path = path;
	log->fd = open(path, O_RDONLY);
	if (log->fd < 0) {
		fprintf(stderr, "stream-replay: open %s: %m\n", path);
		return -errno;
	}
	r = read_full(log->fd, sb, 512, 0, path);
	if (r)
		goto out_close;
	magic = get_le64(sb);
	version = get_le64(sb + 8);
	log->nr_entries = get_le64(sb + 16);
	log->sectorsize = get_le32(sb + 24);
	r = -EINVAL;
	if (magic != LOG_MAGIC) {
		fprintf(stderr,
			"stream-replay: %s: magic: expected %llx, found %llx\n",
			path, LOG_MAGIC, (unsigned long long)magic);
		goto out_close;
	}
	if (version != LOG_VERSION) {
		fprintf(stderr,
			"stream-replay: %s: version: expected %d, found %llu\n",
			path, LOG_VERSION, (unsigned long long)version);
		goto out_close;
	}
	if (log->sectorsize < 512 || log->sectorsize > MAX_SECTORSIZE ||
	    (log->sectorsize & (log->sectorsize - 1))) {
		fprintf(stderr, "stream-replay: %s: bad sector size %u\n",
			path, log->sectorsize);
		goto out_close;
	}
	log->idx = 0;
	log->pos = log->sectorsize;
	return 0;
out_close:
	close(log->fd);
	return r;
}

/* Read the entry at the cursor and move the cursor past it. */
static int log_next(struct log *log, struct entry *e)
{
	unsigned char hdr[MAX_SECTORSIZE];
	int r;

	if (log->idx >= log->nr_entries) {
		fprintf(stderr, "stream-replay: %s: no entry %llu (%llu in log)\n",
			log->path, (unsigned long long)log->idx,
			(unsigned long long)log->nr_entries);
		return -ERANGE;
	}
	r = read_full(log->fd, hdr, log->sectorsize, log->pos, log->path);
	if (r)
		return r;
	e->sector = get_le64(hdr);
	e->nr_sectors = get_le64(hdr + 8);
	e->flags = get_le64(hdr + 16);
	e->data_len = get_le64(hdr + 24);
	e->mark[0] = '\0';
	if (e->flags & LOG_MARK) {
		size_t n = e->data_len;

		if (n > log->sectorsize - ENTRY_HDR_LEN) {
			fprintf(stderr,
				"stream-replay: %s: entry %llu: mark of %zu bytes\n",
				log->path, (unsigned long long)log->idx, n);
			return -EINVAL;
		}
		memcpy(e->mark, hdr + ENTRY_HDR_LEN, n);
		e->mark[n] = '\0';
	}
	e->data_pos = log->pos + log->sectorsize;
	log->pos = e->data_pos;
	if (!(e->flags & LOG_DISCARD))
		log->pos += (off_t)e->nr_sectors * log->sectorsize;
	log->idx++;
	return 0;
}

static int log_seek(struct log *log, uint64_t idx)
{
	struct entry e;
	int r;

	if (idx < log->idx) {
		log->idx = 0;
		log->pos = log->sectorsize;
	}
	while (log->idx < idx) {
		r = log_next(log, &e);
		if (r)
			return r;
	}
	return 0;
}

static bool has_data(const struct entry *e)
{
	return e->nr_sectors && !(e->flags & (LOG_DISCARD | LOG_MARK));
}

/* Apply the first "limit" sectors of entry e (all of it if limit < 0). */
static int apply(struct log *log, const struct entry *e, int dev,
		 int64_t limit)
{
	static char buf[1 << 20];
	uint64_t left = e->nr_sectors, done = 0;
	size_t chunk;
	int r;

	if (!has_data(e) && !(e->flags & LOG_DISCARD))
		return 0;
	if (limit >= 0 && (uint64_t)limit < left)
		left = limit;
	if (e->flags & LOG_DISCARD)
		memset(buf, 0, sizeof(buf));
	while (left) {
		chunk = sizeof(buf) / log->sectorsize;
		if (chunk > left)
			chunk = left;
		if (!(e->flags & LOG_DISCARD)) {
			r = read_full(log->fd, buf, chunk * log->sectorsize,
				      e->data_pos + done * log->sectorsize,
				      log->path);
			if (r)
				return r;
		}
		r = write_full(dev, buf, chunk * log->sectorsize,
			       (e->sector + done) * log->sectorsize, "device");
		if (r)
			return r;
		done += chunk;
		left -= chunk;
	}
	return 0;
}

static const char *flag_names(uint64_t f, char *buf, size_t len)
{
	static const char *const names[] = {
		"FLUSH", "FUA", "DISCARD", "MARK", "METADATA"
	};
	size_t i, off = 0;

	buf[0] = '\0';
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (f & (1ULL << i))
			off += snprintf(buf + off, len - off, "%s%s",
					off ? "," : "", names[i]);
	if (!off)
		snprintf(buf, len, "WRITE");
	return buf;
}

/* One line per entry: index, flags (decimal), sector, sectors, names, mark */
static int cmd_list(const char *path)
{
	struct log log;
	struct entry e;
	char names[64];
	int r = 0;

	r = log_open(&log, path);
	if (r)
		return r;
	while (log.idx < log.nr_entries) {
		uint64_t idx = log.idx;

		r = log_next(&log, &e);
		if (r)
			break;
		printf("%llu %llu %llu %llu %s %s\n", (unsigned long long)idx,
		       (unsigned long long)e.flags,
		       (unsigned long long)e.sector,
		       (unsigned long long)e.nr_sectors,
		       flag_names(e.flags, names, sizeof(names)),
		       e.mark[0] ? e.mark : "-");
	}
	close(log.fd);
	return r;
}

static int open_dev(const char *dev)
{
	int fd = open(dev, O_WRONLY);

	if (fd < 0)
		fprintf(stderr, "stream-replay: open %s: %m\n", dev);
	return fd < 0 ? -errno : fd;
}

static int sync_dev(int fd, const char *dev)
{
	if (fsync(fd)) {
		fprintf(stderr, "stream-replay: fsync %s: %m\n", dev);
		return -errno;
	}
	return 0;
}

/* [@from, @to) must lie within the log's entries. */
static int log_check_range(const struct log *log, const char *path,
			   uint64_t from, uint64_t to)
{
	if (to <= log->nr_entries && from <= to)
		return 0;
	fprintf(stderr,
		"stream-replay: %s: range [%llu, %llu) outside the %llu entries\n",
		path, (unsigned long long)from, (unsigned long long)to,
		(unsigned long long)log->nr_entries);
	return -ERANGE;
}

static int cmd_replay(const char *path, const char *dev, uint64_t from,
		      uint64_t to, bool sync)
{
	struct log log;
	struct entry e;
	int fd, r;

	r = log_open(&log, path);
	if (r)
		return r;
	r = log_check_range(&log, path, from, to);
	if (r)
		goto out_log;
	fd = open_dev(dev);
	if (fd < 0) {
		r = fd;
		goto out_log;
	}
	r = log_seek(&log, from);
	while (!r && log.idx < to) {
		r = log_next(&log, &e);
		if (!r)
			r = apply(&log, &e, fd, -1);
	}
	if (!r && sync)
		r = sync_dev(fd, dev);
	close(fd);
out_log:
	close(log.fd);
	return r;
}

static int cmd_tear(const char *path, const char *dev, uint64_t idx,
		    uint64_t sectors)
{
	struct log log;
	struct entry e;
	int fd, r;

	r = log_open(&log, path);
	if (r)
		return r;
	r = log_seek(&log, idx);
	if (!r)
		r = log_next(&log, &e);
	if (r)
		goto out_log;
	if (!has_data(&e) || sectors >= e.nr_sectors) {
		fprintf(stderr,
			"stream-replay: %s: entry %llu (%llu sectors) cannot be torn after %llu\n",
			path, (unsigned long long)idx,
			(unsigned long long)e.nr_sectors,
			(unsigned long long)sectors);
		r = -EINVAL;
		goto out_log;
	}
	fd = open_dev(dev);
	if (fd < 0) {
		r = fd;
		goto out_log;
	}
	r = apply(&log, &e, fd, sectors);
	if (!r)
		r = sync_dev(fd, dev);
	close(fd);
out_log:
	close(log.fd);
	return r;
}

/* FNV-1a over 64-bit words; n is a multiple of 8. */
static uint64_t fnv1a(const unsigned char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (; n >= 8; n -= 8, p += 8) {
		h ^= get_le64(p);
		h *= 0x100000001b3ULL;
	}
	return h;
}

static int cmd_sums(const char *dev, size_t bs, uint64_t count,
		    uint64_t skip)
{
	unsigned char *buf;
	uint64_t b;
	int fd, r = 0;

	if (!bs || bs % 512) {
		fprintf(stderr, "stream-replay: sums: bad block size %zu\n", bs);
		return -EINVAL;
	}
	fd = open(dev, O_RDONLY | O_DIRECT);
	if (fd < 0 && errno == EINVAL)
		fd = open(dev, O_RDONLY);
	if (fd < 0) {
		fprintf(stderr, "stream-replay: open %s: %m\n", dev);
		return -errno;
	}
	r = posix_memalign((void **)&buf, 4096, bs);
	if (r) {
		fprintf(stderr, "stream-replay: sums: no memory for %zu bytes\n",
			bs);
		close(fd);
		return -r;
	}
	for (b = skip; !count || b < skip + count; b++) {
		ssize_t n = pread(fd, buf, bs, b * bs);

		if (n == 0 && !count)
			break;
		if (n != (ssize_t)bs) {
			if (n < 0)
				fprintf(stderr, "stream-replay: read %s block %llu: %m\n",
					dev, (unsigned long long)b);
			else
				fprintf(stderr, "stream-replay: read %s block %llu: short read\n",
					dev, (unsigned long long)b);
			r = n < 0 ? -errno : -EIO;
			break;
		}
		printf(HASH_FMT "\n", (unsigned long long)fnv1a(buf, bs));
	}
	free(buf);
	close(fd);
	return r;
}

static int read_file(const char *path, unsigned char **buf, size_t *len)
{
	off_t size;
	int fd, r;

	fd = open(path, O_RDONLY);
	if (fd < 0) {
		fprintf(stderr, "stream-replay: open %s: %m\n", path);
		return -errno;
	}
	size = lseek(fd, 0, SEEK_END);
	if (size <= 0 || size % 4096) {
		fprintf(stderr, "stream-replay: %s: size %lld not a multiple of 4096\n",
			path, (long long)size);
		close(fd);
		return -EINVAL;
	}
	r = posix_memalign((void **)buf, 4096, size);
	if (r) {
		fprintf(stderr, "stream-replay: no memory for %s\n", path);
		close(fd);
		return -r;
	}
	*len = size;
	r = read_full(fd, *buf, size, 0, path);
	close(fd);
	if (r)
		free(*buf);
	return r;
}

/*
 * Map file @path (whole, shared, populated); NULL with *len = 0 if it
 * cannot be.  Reading a mapping copies nothing: under TCG each copy of
 * the 17 MiB disk (read(), a loop device) costs tens of milliseconds.
 */
static unsigned char *map_file(const char *path, bool rw, size_t *len)
{
	struct stat st;
	void *p;
	int fd;

	*len = 0;
	fd = open(path, rw ? O_RDWR : O_RDONLY);
	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) || st.st_size <= 0) {
		close(fd);
		return NULL;
	}
	p = mmap(NULL, st.st_size, PROT_READ | (rw ? PROT_WRITE : 0),
		 MAP_SHARED | MAP_POPULATE, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return NULL;
	*len = st.st_size;
	return p;
}

/*
 * The file behind loop device @dev, mapped read-only (what the device
 * reads: the loop has no offset here and writes to the file as they
 * complete); NULL if @dev is no loop device.
 */
static unsigned char *map_loop(const char *dev, size_t *len)
{
	char side[300], file[4096];
	const char *base = strrchr(dev, '/');
	FILE *f;
	size_t n;

	*len = 0;
	snprintf(side, sizeof(side), "/sys/block/%s/loop/backing_file",
		 base ? base + 1 : dev);
	f = fopen(side, "r");
	if (!f)
		return NULL;
	n = fread(file, 1, sizeof(file) - 1, f);
	fclose(f);
	file[n] = '\0';
	file[strcspn(file, "\n")] = '\0';
	snprintf(side, sizeof(side), "/sys/block/%s/loop/offset",
		 base ? base + 1 : dev);
	f = fopen(side, "r");
	if (!f || fscanf(f, "%zu", &n) != 1 || n) {
		if (f)
			fclose(f);
		return NULL;
	}
	fclose(f);
	return map_file(file, false, len);
}

/*
 * The old content of the blocks "point" changes in <ref>, saved before
 * the change: copies of <bs> bytes, one pointer a block.
 */
static int save_old(unsigned char **saved, const unsigned char *ref,
		    size_t bs, uint64_t first, uint64_t end)
{
	uint64_t b;

	for (b = first / bs; b * bs < end; b++) {
		if (saved[b])
			continue;
		saved[b] = malloc(bs);
		if (!saved[b])
			return -ENOMEM;
		memcpy(saved[b], ref + b * bs, bs);
	}
	return 0;
}

/* "<ref>.pos": where the last call stopped in the log ("idx pos"). */
static void pos_load(struct log *log, const char *ref, uint64_t from)
{
	unsigned long long idx, pos;
	char side[4096];
	FILE *f;

	snprintf(side, sizeof(side), "%s.pos", ref);
	f = fopen(side, "r");
	if (!f)
		return;
	if (fscanf(f, "%llu %llu", &idx, &pos) == 2 && idx == from &&
	    idx <= log->nr_entries) {
		log->idx = idx;
		log->pos = pos;
	}
	fclose(f);
}

static int pos_save(const struct log *log, const char *ref)
{
	char side[4096];
	FILE *f;

	snprintf(side, sizeof(side), "%s.pos", ref);
	f = fopen(side, "w");
	if (!f || fprintf(f, "%llu %llu\n", (unsigned long long)log->idx,
			  (unsigned long long)log->pos) < 0 || fclose(f)) {
		fprintf(stderr, "stream-replay: write %s: %m\n", side);
		return -EIO;
	}
	return 0;
}

static int cmd_point(const char *path, const char *ref, const char *copy,
		     uint64_t from, uint64_t to, uint64_t meta, size_t bs,
		     bool tear, uint64_t tear_idx,
		     uint64_t tear_sectors)
{
	unsigned char *cur = NULL, *cmap = NULL, *cbuf = NULL, *tsave = NULL;
	unsigned char **saved = NULL, *cb, *ob;
	uint64_t torn_first = 0, torn_end = 0, copied = 0, outside = 0;
	unsigned long long prev_first = 0, prev_end = 0;
	uint64_t first, end, b;
	char side[4096];
	FILE *f;
	size_t len, clen, off, chunk = 1 << 20, i;
	struct log log;
	struct entry e;
	bool zero = true, torn_on = false;
	int fd, r;

	if (!bs || bs % 512 || chunk % bs || (meta * 512) % bs) {
		fprintf(stderr, "stream-replay: point: bad block size %zu\n", bs);
		return -EINVAL;
	}
	snprintf(side, sizeof(side), "%s.torn", ref);
	f = fopen(side, "r");
	if (f) {
		if (fscanf(f, "%llu %llu", &prev_first, &prev_end) != 2)
			prev_first = prev_end = 0;
		fclose(f);
		unlink(side);
	}
	/*
	 * <ref> moved forward in place (mapped), with the old content of
	 * every block it changes saved: the check below needs <ref> as it
	 * was before this call.
	 */
	cur = map_file(ref, true, &len);
	if (!cur) {
		fprintf(stderr, "stream-replay: map %s: %m\n", ref);
		return -EIO;
	}
	if (len <= meta * 512 || len % chunk) {
		fprintf(stderr, "stream-replay: %s: size %zu: no data slice or not in MiB\n",
			ref, len);
		r = -EINVAL;
		goto out;
	}
	saved = calloc(len / bs, sizeof(*saved));
	if (!saved) {
		r = -ENOMEM;
		goto out;
	}
	r = log_open(&log, path);
	if (r)
		goto out;
	r = log_check_range(&log, path, from, to);
	if (r)
		goto out_log;
	pos_load(&log, ref, from);
	r = log_seek(&log, from);
	while (!r && log.idx < to) {
		r = log_next(&log, &e);
		if (r || (!has_data(&e) && !(e.flags & LOG_DISCARD)))
			continue;
		first = e.sector * log.sectorsize;
		end = first + e.nr_sectors * log.sectorsize;
		if (end > len) {
			fprintf(stderr, "stream-replay: entry %llu beyond %s\n",
				(unsigned long long)log.idx - 1, ref);
			r = -ERANGE;
			break;
		}
		r = save_old(saved, cur, bs, first, end);
		if (r)
			break;
		if (e.flags & LOG_DISCARD)
			memset(cur + first, 0, end - first);
		else
			r = read_full(log.fd, cur + first, end - first,
				      e.data_pos, path);
	}
	if (!r)
		r = pos_save(&log, ref);
	if (r)
		goto out_log;
	if (tear) {
		r = log_seek(&log, tear_idx);
		if (!r)
			r = log_next(&log, &e);
		if (!r && (!has_data(&e) || tear_sectors >= e.nr_sectors)) {
			fprintf(stderr,
				"stream-replay: %s: entry %llu (%llu sectors) cannot be torn after %llu\n",
				path, (unsigned long long)tear_idx,
				(unsigned long long)e.nr_sectors,
				(unsigned long long)tear_sectors);
			r = -EINVAL;
		}
		torn_first = e.sector * log.sectorsize;
		torn_end = torn_first + tear_sectors * log.sectorsize;
		if (!r && torn_end > len) {
			fprintf(stderr, "stream-replay: entry %llu beyond %s\n",
				(unsigned long long)tear_idx, ref);
			r = -ERANGE;
		}
		/* <ref> never holds the tear: undone below */
		if (!r)
			r = save_old(saved, cur, bs, torn_first, torn_end);
		if (!r) {
			tsave = malloc(torn_end - torn_first);
			if (!tsave)
				r = -ENOMEM;
		}
		if (!r) {
			memcpy(tsave, cur + torn_first, torn_end - torn_first);
			torn_on = true;
			r = read_full(log.fd, cur + torn_first,
				      torn_end - torn_first, e.data_pos, path);
		}
		if (r)
			goto out_log;
		f = fopen(side, "w");
		if (!f || fprintf(f, "%llu %llu\n",
				  (unsigned long long)torn_first,
				  (unsigned long long)torn_end) < 0 || fclose(f)) {
			fprintf(stderr, "stream-replay: write %s: %m\n", side);
			r = -EIO;
			goto out_log;
		}
	}
	for (i = 0; i < meta * 512 && zero; i++)
		zero = !cur[i];
	/*
	 * The copy: read from the loop device's file when it is one (the
	 * same bytes, no copy), else with O_DIRECT; written through the
	 * device.
	 */
	fd = open(copy, O_RDWR | O_DIRECT);
	if (fd < 0) {
		fprintf(stderr, "stream-replay: open %s: %m\n", copy);
		r = -errno;
		goto out_log;
	}
	cmap = map_loop(copy, &clen);
	if (cmap && clen < len) {
		munmap(cmap, clen);
		cmap = NULL;
	}
	if (!cmap) {
		r = posix_memalign((void **)&cbuf, 4096, chunk);
		if (r) {
			r = -r;
			cbuf = NULL;
			goto out_fd;
		}
	}
	for (off = 0; off < len && !r; off += chunk) {
		if (cmap)
			cb = cmap + off;
		else
			r = read_full(fd, cb = cbuf, chunk, off, copy);
		for (i = 0; !r && i < chunk; i += bs) {
			if (!memcmp(cb + i, cur + off + i, bs))
				continue;
			b = (off + i) / bs;
			ob = saved[b] ? saved[b] : cur + off + i;
			if (off + i >= meta * 512 &&
			    (off + i + bs <= prev_first || off + i >= prev_end) &&
			    memcmp(cb + i, ob, bs) &&
			    outside++ < 8)
				fprintf(stderr,
					"stream-replay: %s: data block %zu changed since the last point\n",
					copy, (off + i - meta * 512) / bs);
			r = write_full(fd, cur + off + i, bs, off + i, copy);
			copied++;
		}
	}
	if (!r && fsync(fd)) {
		fprintf(stderr, "stream-replay: fsync %s: %m\n", copy);
		r = -errno;
	}
out_fd:
	close(fd);
	if (!r)
		printf("zero %d copied %llu %llu\n", zero,
		       (unsigned long long)copied, (unsigned long long)outside);
out_log:
	close(log.fd);
out:
	if (torn_on)
		memcpy(cur + torn_first, tsave, torn_end - torn_first);
	if (saved) {
		for (b = 0; b < len / bs; b++)
			free(saved[b]);
		free(saved);
	}
	if (cmap)
		munmap(cmap, clen);
	if (cur)
		munmap(cur, len);
	free(tsave);
	free(cbuf);
	return r;
}

/*
 * Blocks [first, first + count) of @dev (<bs> blocks from sector @at) that
 * differ from @img: "<block> <hash>" lines to @out.  Read from @map (the
 * whole device, @mlen bytes) if given, else into @buf (@chunk bytes,
 * aligned for O_DIRECT) from @fd.
 */
static int diff_range(int fd, const char *dev, size_t bs, uint64_t at,
		      const unsigned char *img, size_t ilen, unsigned char *buf,
		      size_t chunk, uint64_t first, uint64_t count, FILE *out,
		      const unsigned char *map, size_t mlen)
{
	const unsigned char *data;
	uint64_t b, n, k;
	int r = 0;

	for (b = first; b < first + count && !r; b += n) {
		n = first + count - b;
		if (n > chunk / bs)
			n = chunk / bs;
		if (!map) {
			r = read_full(fd, buf, n * bs, at * 512 + b * bs, dev);
			data = buf;
		} else if (at * 512 + (b + n) * bs > mlen) {
			fprintf(stderr, "stream-replay: read %s at %llu: unexpected end\n",
				dev, (unsigned long long)(at * 512 + b * bs));
			r = -EIO;
		} else {
			data = map + at * 512 + b * bs;
		}
		for (k = 0; !r && k < n; k++) {
			const unsigned char *p = data + k * bs;

			if ((b + k + 1) * bs <= ilen &&
			    !memcmp(p, img + (b + k) * bs, bs))
				continue;
			fprintf(out, "%llu " HASH_FMT "\n",
				(unsigned long long)(b + k),
				(unsigned long long)fnv1a(p, bs));
		}
	}
	return r;
}

/* The blocks of @ranges ("<first>+<count>") differing from @image. */
static int cmd_diff(const char *dev, size_t bs, uint64_t at,
		    const char *image, int nr, char **ranges)
{
	unsigned char *img = NULL, *buf = NULL;
	unsigned long long first, count;
	size_t ilen = 0, chunk = 1 << 20;
	int fd, i, r;

	if (!bs || bs % 512 || chunk % bs) {
		fprintf(stderr, "stream-replay: diff: bad block size %zu\n", bs);
		return -EINVAL;
	}
	r = read_file(image, &img, &ilen);
	if (r)
		return r;
	r = posix_memalign((void **)&buf, 4096, chunk);
	if (r) {
		free(img);
		return -r;
	}
	fd = open(dev, O_RDONLY | O_DIRECT);
	if (fd < 0) {
		fprintf(stderr, "stream-replay: open %s: %m\n", dev);
		r = -errno;
		goto out;
	}
	for (i = 0; i < nr && !r; i++) {
		char end;

		if (sscanf(ranges[i], "%llu+%llu%c", &first, &count, &end) != 2) {
			fprintf(stderr, "stream-replay: diff: bad range '%s'\n",
				ranges[i]);
			r = -EINVAL;
			break;
		}
		r = diff_range(fd, dev, bs, at, img, ilen, buf, chunk, first,
			       count, stdout, NULL, 0);
	}
	close(fd);
out:
	free(buf);
	free(img);
	return r;
}

/*
 * Device-mapper ioctls, as dmsetup makes them but without libdevmapper,
 * whose start-up alone costs a check tens of milliseconds under TCG.
 */
#define DM_BUF_MIN	(16 << 10)	/* libdevmapper's smallest buffer */

/*
 * One ioctl on device @name, with message @msg (or none).  On success
 * *out is the answer buffer, for the caller to free.  A status that did
 * not fit is asked again with a larger buffer; a message is not (sending
 * it twice is not the same thing): its overflow is an error.
 */
static int dm_run(int ctl, unsigned long cmd, const char *name,
		  uint32_t flags, const char *msg, struct dm_ioctl **out)
{
	size_t size = DM_BUF_MIN, mlen = msg ? strlen(msg) + 1 : 0;
	struct dm_target_msg *tmsg;
	struct dm_ioctl *dmi;
	int r;

	for (;;) {
		if (msg && size < sizeof(*dmi) + sizeof(*tmsg) + mlen)
			return -E2BIG;
		dmi = calloc(1, size);
		if (!dmi)
			return -ENOMEM;
		dmi->version[0] = DM_VERSION_MAJOR;
		dmi->data_size = size;
		dmi->data_start = sizeof(*dmi);
		dmi->flags = flags;
		snprintf(dmi->name, sizeof(dmi->name), "%s", name);
		if (msg) {
			tmsg = (struct dm_target_msg *)((char *)dmi +
							dmi->data_start);
			memcpy(tmsg->message, msg, mlen);
		}
		if (ioctl(ctl, cmd, dmi)) {
			r = -errno;
			free(dmi);
			return r;
		}
		if (!(dmi->flags & DM_BUFFER_FULL_FLAG)) {
			*out = dmi;
			return 0;
		}
		free(dmi);
		if (msg)
			return -ENOSPC;
		size *= 2;
	}
}

/* "dmsetup message <name> 0 <msg>": the answer, "" if none, to free. */
static int dm_message(int ctl, const char *name, const char *msg,
		      char **ans)
{
	struct dm_ioctl *dmi;
	int r;

	r = dm_run(ctl, DM_TARGET_MSG, name, 0, msg, &dmi);
	if (r)
		return r;
	if (dmi->flags & DM_DATA_OUT_FLAG)
		*ans = strdup((char *)dmi + dmi->data_start);
	else
		*ans = strdup("");
	free(dmi);
	return *ans ? 0 : -ENOMEM;
}

/* "dmsetup status <name>" of a one-target table: "<start> <len> <type> ..." */
static int dm_status(int ctl, const char *name, char *line, size_t len)
{
	struct dm_target_spec *spec;
	struct dm_ioctl *dmi;
	int r;

	line[0] = '\0';
	r = dm_run(ctl, DM_TABLE_STATUS, name, 0, NULL, &dmi);
	if (r)
		return r;
	if (dmi->target_count) {
		spec = (struct dm_target_spec *)((char *)dmi + dmi->data_start);
		snprintf(line, len, "%llu %llu %s %s",
			 (unsigned long long)spec->sector_start,
			 (unsigned long long)spec->length, spec->target_type,
			 (char *)(spec + 1));
	}
	free(dmi);
	return 0;
}

static int dm_simple(int ctl, unsigned long cmd, const char *name,
		     uint32_t flags)
{
	struct dm_ioctl *dmi;
	int r;

	r = dm_run(ctl, cmd, name, flags, NULL, &dmi);
	if (!r)
		free(dmi);
	return r;
}

/* The n-th (from 1) blank-separated word of @s into @w, "" if none. */
static void word(const char *s, int n, char *w, size_t len)
{
	size_t l;

	for (;;) {
		s += strspn(s, " \t\n");
		l = strcspn(s, " \t\n");
		if (!l || --n == 0)
			break;
		s += l;
	}
	if (l >= len)
		l = len - 1;
	memcpy(w, s, l);
	w[l] = '\0';
}

static int nwords(const char *s)
{
	int n = 0;

	for (;;) {
		s += strspn(s, " \t\n");
		if (!*s)
			return n;
		s += strcspn(s, " \t\n");
		n++;
	}
}

struct str {
	char *s;
	size_t len, size;
};

static int str_add(struct str *x, const char *s, size_t n)
{
	char *p;

	if (x->len + n + 1 > x->size) {
		x->size = (x->len + n + 1) * 2;
		p = realloc(x->s, x->size);
		if (!p)
			return -ENOMEM;
		x->s = p;
	}
	memcpy(x->s + x->len, s, n);
	x->len += n;
	x->s[x->len] = '\0';
	return 0;
}

/*
 * Every page of a "ranges"-like answer of device @name to "<words>
 * <cursor>", from cursor 0 to @nb, as words " <first>+<count>..." in
 * @out.  As the shell's rp_ranges did: each answer must be given and
 * start with a cursor, which must move forward or be @nb.
 */
static int dm_pages(int ctl, const char *name, const char *words,
		    uint64_t nb, struct str *out)
{
	unsigned long long cur = 0, next;
	char msg[256], *ans, *p, *end;
	size_t l;
	int r;

	out->len = 0;
	r = str_add(out, "", 0);
	while (!r && cur < nb) {
		snprintf(msg, sizeof(msg), "%s %llu", words, cur);
		r = dm_message(ctl, name, msg, &ans);
		if (r)
			break;
		p = ans + strspn(ans, " \t\n");
		errno = 0;
		next = strtoull(p, &end, 10);
		if (*p < '0' || *p > '9' || errno ||
		    (*end && !strchr(" \t\n", *end)) ||
		    (next <= cur && next != nb)) {
			free(ans);
			r = -EINVAL;
			break;
		}
		cur = next;
		for (p = end; !r; p += l) {
			p += strspn(p, " \t\n");
			l = strcspn(p, " \t\n");
			if (!l)
				break;
			r = str_add(out, " ", 1);
			if (!r)
				r = str_add(out, p, l);
		}
		free(ans);
	}
	return r;
}

/* Nothing to do: the signal only interrupts the read. */
static void on_alarm(int sig)
{
}

/* Block @b of @dev (O_DIRECT when it allows), given up after 10 s. */
static int read_block_timed(const char *dev, size_t bs, uint64_t b,
			    unsigned char *buf)
{
	struct sigaction sa = { .sa_handler = on_alarm };
	ssize_t n;
	int fd, r = 0;

	fd = open(dev, O_RDONLY | O_DIRECT);
	if (fd < 0 && errno == EINVAL)
		fd = open(dev, O_RDONLY);
	if (fd < 0)
		return -errno;
	sigaction(SIGALRM, &sa, NULL);	/* no SA_RESTART: pread gives up */
	alarm(10);
	n = pread(fd, buf, bs, b * bs);
	if (n < 0)
		r = -errno;
	else if (n != (ssize_t)bs)
		r = -EIO;
	alarm(0);
	close(fd);
	return r;
}

/*
 * "probe": the checks of one crash point on the loaded stream device
 * @name, which needs no helper, in one process (see the top comment).
 * Lines out: "status <dmsetup status line>", "absent <ranges>|x",
 * "d0 ...", "d1 ...", "rev <why the revert failed>", "abs2 <ranges>|x"
 * and "fail <invariant> <message>" for each failed step; the present
 * blocks that differ from @image go to @dfile as "diff" prints them.
 */
static int cmd_probe(const char *name, const char *dev, uint64_t nb,
		     size_t bs, uint64_t at, const char *image,
		     const char *dfile)
{
	unsigned char *img, *buf = NULL, *map;
	struct str abs = { 0 }, tmp = { 0 };
	char status[4096], mode[64], id[64], msg[128], path[300], *ans, *p;
	unsigned long long want = 0, got = 0, c, lb = 0, k;
	size_t ilen, mlen, chunk = 1 << 20;
	bool have_lb = false, want_set = false;
	FILE *d;
	int ctl, fd, r;

	if (!bs || bs % 512 || chunk % bs) {
		fprintf(stderr, "stream-replay: probe: bad block size %zu\n", bs);
		return -EINVAL;
	}
	img = map_file(image, false, &ilen);
	if (!img) {
		fprintf(stderr, "stream-replay: map %s: %m\n", image);
		return -EIO;
	}
	r = posix_memalign((void **)&buf, 4096, chunk);
	if (r) {
		r = -r;
		buf = NULL;
		goto out;
	}
	ctl = open("/dev/mapper/control", O_RDWR);
	if (ctl < 0) {
		fprintf(stderr, "stream-replay: open /dev/mapper/control: %m\n");
		r = -errno;
		goto out;
	}
	d = fopen(dfile, "w");
	if (!d) {
		fprintf(stderr, "stream-replay: open %s: %m\n", dfile);
		r = -errno;
		goto out_ctl;
	}

	dm_status(ctl, name, status, sizeof(status));
	printf("status %s\n", status);
	word(status, 9, mode, sizeof(mode));

	snprintf(path, sizeof(path), "/dev/mapper/%s", name);
	if (!dm_pages(ctl, name, "absent", nb, &abs)) {
		printf("absent%s\n", abs.s);
	} else {
		printf("fail ops absent refused\nabsent x\n");
		/* as the shell did: "x" is no range, all present */
		abs.len = 0;
		if (abs.s)
			abs.s[0] = '\0';
	}

	/*
	 * present = the complement of absent: the blocks that differ from
	 * the image, read from the data slice, then the last present block
	 * read through the target (needs no helper).
	 */
	r = 0;
	fd = open(dev, O_RDONLY | O_DIRECT);
	if (fd < 0) {
		fprintf(stderr, "stream-replay: open %s: %m\n", dev);
		r = -errno;
	}
	/* a loop device's file: the same bytes, no copy (see map_loop) */
	map = map_loop(dev, &mlen);
	c = 0;
	p = abs.s ? abs.s : "";
	for (;;) {
		unsigned long long a0, an;
		int n = 0;

		p += strspn(p, " ");
		if (!*p)
			break;
		if (sscanf(p, "%llu+%llu%n", &a0, &an, &n) != 2 ||
		    (p[n] && p[n] != ' ')) {
			printf("fail ops bad absent range '%.*s'\n",
			       (int)strcspn(p, " "), p);
			p += strcspn(p, " ");
			continue;
		}
		p += n;
		if (a0 > c) {
			if (!r)
				r = diff_range(fd, dev, bs, at, img, ilen, buf,
					       chunk, c, a0 - c, d, map, mlen);
			lb = a0 - 1;
			have_lb = true;
		}
		c = a0 + an;
	}
	if (c < nb) {
		if (!r)
			r = diff_range(fd, dev, bs, at, img, ilen, buf, chunk,
				       c, nb - c, d, map, mlen);
		lb = nb - 1;
		have_lb = true;
	}
	if (fd >= 0)
		close(fd);
	if (map)
		munmap(map, mlen);
	if (fflush(d) || ferror(d)) {
		fprintf(stderr, "stream-replay: write %s: %m\n", dfile);
		r = -EIO;
	}
	if (r)
		printf("fail ops reading the data slice failed\n");
	r = 0;
	if (have_lb) {
		FILE *in = fopen(dfile, "r");
		unsigned long long blk, h;

		while (in && fscanf(in, "%llu h%llx", &blk, &h) == 2)
			if (blk == lb) {
				want = h;
				want_set = true;
			}
		if (in)
			fclose(in);
		if (!want_set && (lb + 1) * bs <= ilen)
			want = fnv1a(img + lb * bs, bs);
		if (!read_block_timed(path, bs, lb, buf)) {
			got = fnv1a(buf, bs);
			if (got != want)
				printf("fail ops block %llu read through the target: '" HASH_FMT "', data slice: " HASH_FMT "\n",
				       (unsigned long long)lb, got, want);
		} else {
			printf("fail ops block %llu read through the target: '', data slice: " HASH_FMT "\n",
			       (unsigned long long)lb, want);
		}
	}

	if (dm_simple(ctl, DM_DEV_SUSPEND, name, DM_SUSPEND_FLAG))
		printf("fail ops suspend failed\n");
	for (k = 0; k < 2; k++) {
		bool ok = false;

		snprintf(msg, sizeof(msg), "snapshot %llu", (unsigned long long)k);
		if (!dm_message(ctl, name, msg, &ans)) {
			/* "<id> <blocks>" */
			ok = nwords(ans) == 2;
			word(ans, 1, id, sizeof(id));
			ok = ok && strlen(id) < sizeof(id) - 1;
			free(ans);
		}
		if (!ok) {
			printf("fail ops snapshot %llu refused\nd%llu x\n",
			       (unsigned long long)k, (unsigned long long)k);
			continue;
		}
		snprintf(msg, sizeof(msg), "ranges %llu %s",
			 (unsigned long long)k, id);
		if (!dm_pages(ctl, name, msg, nb, &tmp)) {
			printf("d%llu%s\n", (unsigned long long)k, tmp.s);
		} else {
			printf("fail ops ranges %llu %s refused\nd%llu x\n",
			       (unsigned long long)k, id, (unsigned long long)k);
		}
		snprintf(msg, sizeof(msg), "abort %llu %s",
			 (unsigned long long)k, id);
		if (dm_message(ctl, name, msg, &ans))
			printf("fail ops abort %llu %s refused\n",
			       (unsigned long long)k, id);
		else
			free(ans);
	}
	if (!strcmp(mode, "rw")) {
		if (dm_message(ctl, name, "revert", &ans))
			printf("rev revert refused\n");
		else
			free(ans);
		if (!dm_pages(ctl, name, "absent", nb, &tmp))
			printf("abs2%s\n", tmp.s);
		else	/* as the shell did: no range */
			printf("fail ops absent refused\nabs2\n");
	}
	if (dm_simple(ctl, DM_DEV_SUSPEND, name, 0))
		printf("fail ops resume failed\n");
	if (dm_simple(ctl, DM_DEV_REMOVE, name, 0)) {
		printf("fail ops remove failed\n");
	} else if (unlink(path) && errno != ENOENT) {
		/* libdevmapper (no udev) removes the node itself */
		fprintf(stderr, "stream-replay: unlink %s: %m\n", path);
		r = -errno;
	}
	if (fclose(d) && !r)
		r = -EIO;
out_ctl:
	close(ctl);
out:
	free(tmp.s);
	free(abs.s);
	free(buf);
	munmap(img, ilen);
	return r;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && !strcmp(s + n - m, suffix);
}

/*
 * "klog": the text of the kernel log records not read yet from the
 * /dev/kmsg the caller keeps open on stdin (its file position is the
 * next record), one a line, from the first that ends with @after on,
 * those that contain @grep.
 * Records lost to the ring buffer wrapping are an error.
 */
static int cmd_klog(const char *after, const char *grep)
{
	char rec[8192], *text;
	bool on = !after;
	int fl, r = 0;
	ssize_t n;

	fl = fcntl(0, F_GETFL);
	if (fl < 0 || fcntl(0, F_SETFL, fl | O_NONBLOCK)) {
		fprintf(stderr, "stream-replay: klog: stdin: %m\n");
		return -errno;
	}
	for (;;) {
		n = read(0, rec, sizeof(rec) - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EPIPE) {
			fprintf(stderr, "stream-replay: klog: records lost\n");
			r = -EPIPE;
			continue;
		}
		if (n < 0 && errno == EAGAIN)
			break;
		if (n < 0) {
			fprintf(stderr, "stream-replay: klog: read: %m\n");
			r = -errno;
			break;
		}
		if (!n)
			break;
		rec[n] = '\0';
		/* "<prio>,<seq>,<usec>,<flags>;<text>\n" (then " KEY=value") */
		text = strchr(rec, ';');
		if (!text)
			continue;
		text++;
		text[strcspn(text, "\n")] = '\0';
		if (!on && ends_with(text, after))
			on = true;
		if (on && (!grep || strstr(text, grep)))
			puts(text);
	}
	fcntl(0, F_SETFL, fl);
	return r;
}

static int cmd_fsync(const char *dev)
{
	int fd = open_dev(dev), r;

	if (fd < 0)
		return fd;
	r = sync_dev(fd, dev);
	close(fd);
	return r;
}

static int cmd_write(const char *dev, uint64_t at, uint64_t len,
		     const char *src, uint64_t src_at, bool dsync)
{
	void *buf;
	int in, out, r;

	if (!len || len % 512 || at % 512 || len > (64 << 20)) {
		fprintf(stderr, "stream-replay: write: bad range %llu+%llu\n",
			(unsigned long long)at, (unsigned long long)len);
		return -EINVAL;
	}
	r = posix_memalign(&buf, 4096, len);
	if (r) {
		fprintf(stderr, "stream-replay: write: no memory for %llu bytes\n",
			(unsigned long long)len);
		return -r;
	}
	in = open(src, O_RDONLY);
	if (in < 0) {
		fprintf(stderr, "stream-replay: open %s: %m\n", src);
		r = -errno;
		goto out_buf;
	}
	r = read_full(in, buf, len, src_at, src);
	if (r)
		goto out_in;
	out = open(dev, O_WRONLY | O_DIRECT | (dsync ? O_DSYNC : 0));
	if (out < 0) {
		fprintf(stderr, "stream-replay: open %s: %m\n", dev);
		r = -errno;
		goto out_in;
	}
	r = write_full(out, buf, len, at, dev);
	close(out);
out_in:
	close(in);
out_buf:
	free(buf);
	return r;
}

static void usage(void)
{
	fprintf(stderr,
"Usage: stream-replay list <log>\n"
"       stream-replay replay <log> <dev> --from A --to B\n"
"       stream-replay tear <log> <dev> --entry N --sectors K\n"
"       stream-replay sums <dev> --bs BYTES [--count N] [--skip N]\n"
"       stream-replay point <log> <ref> <copy> --from A --to B --meta SECTORS\n"
"                     --bs BYTES [--tear N --sectors K]\n"
"       stream-replay diff <dev> --bs BYTES --at SECTORS --image FILE\n"
"                     [<first>+<count> ...]\n"
"       stream-replay probe <name> <dev> --blocks N --bs BYTES --at SECTORS\n"
"                     --image FILE --diff FILE\n"
"       stream-replay klog [--after TEXT --grep TEXT] <&<fd on /dev/kmsg>\n"
"       stream-replay fsync <dev>\n"
"       stream-replay write <dev> --at BYTES --len BYTES --src FILE\n"
"                     --src-at BYTES [--dsync 1]\n");
	exit(2);
}

/* The value of option "name" in argv[first..argc), or "def". */
static uint64_t opt(int argc, char **argv, int first, const char *name,
		    bool required, uint64_t def)
{
	char *end;
	uint64_t v;
	int i;

	for (i = first; i + 1 < argc; i++) {
		if (strcmp(argv[i], name))
			continue;
		errno = 0;
		v = strtoull(argv[i + 1], &end, 0);
		if (errno || *end || end == argv[i + 1]) {
			fprintf(stderr, "stream-replay: %s: bad number '%s'\n",
				name, argv[i + 1]);
			exit(2);
		}
		return v;
	}
	if (required) {
		fprintf(stderr, "stream-replay: %s is required\n", name);
		usage();
	}
	return def;
}

int main(int argc, char **argv)
{
	int r;

	if (argc < 2 || (argc < 3 && strcmp(argv[1], "klog")))
		usage();
	if (!strcmp(argv[1], "list") && argc == 3)
		r = cmd_list(argv[2]);
	else if (!strcmp(argv[1], "replay") && argc == 8)
		r = cmd_replay(argv[2], argv[3],
			       opt(argc, argv, 4, "--from", true, 0),
			       opt(argc, argv, 4, "--to", true, 0), true);
	else if (!strcmp(argv[1], "tear") && argc == 8)
		r = cmd_tear(argv[2], argv[3],
			     opt(argc, argv, 4, "--entry", true, 0),
			     opt(argc, argv, 4, "--sectors", true, 0));
	else if (!strcmp(argv[1], "sums") && argc >= 5 && argc <= 9 &&
		 argc % 2)
		r = cmd_sums(argv[2], opt(argc, argv, 3, "--bs", true, 0),
			     opt(argc, argv, 3, "--count", false, 0),
			     opt(argc, argv, 3, "--skip", false, 0));
	else if (!strcmp(argv[1], "point") && (argc == 13 || argc == 17))
		r = cmd_point(argv[2], argv[3], argv[4],
			      opt(argc, argv, 5, "--from", true, 0),
			      opt(argc, argv, 5, "--to", true, 0),
			      opt(argc, argv, 5, "--meta", true, 0),
			      opt(argc, argv, 5, "--bs", true, 0),
			      argc == 17,
			      opt(argc, argv, 5, "--tear", argc == 17, 0),
			      opt(argc, argv, 5, "--sectors", argc == 17, 0));
	else if (!strcmp(argv[1], "diff") && argc >= 9 &&
		 !strcmp(argv[7], "--image"))
		r = cmd_diff(argv[2], opt(9, argv, 3, "--bs", true, 0),
			     opt(9, argv, 3, "--at", true, 0), argv[8],
			     argc - 9, argv + 9);
	else if (!strcmp(argv[1], "probe") && argc == 14 &&
		 !strcmp(argv[10], "--image") && !strcmp(argv[12], "--diff"))
		r = cmd_probe(argv[2], argv[3],
			      opt(10, argv, 4, "--blocks", true, 0),
			      opt(10, argv, 4, "--bs", true, 0),
			      opt(10, argv, 4, "--at", true, 0),
			      argv[11], argv[13]);
	else if (!strcmp(argv[1], "klog") && argc == 2)
		r = cmd_klog(NULL, NULL);
	else if (!strcmp(argv[1], "klog") && argc == 6 &&
		 !strcmp(argv[2], "--after") && !strcmp(argv[4], "--grep"))
		r = cmd_klog(argv[3], argv[5]);
	else if (!strcmp(argv[1], "fsync") && argc == 3)
		r = cmd_fsync(argv[2]);
	else if (!strcmp(argv[1], "write") && (argc == 11 || argc == 13)) {
		const char *src = NULL;
		int i;

		for (i = 3; i + 1 < argc; i++)
			if (!strcmp(argv[i], "--src"))
				src = argv[i + 1];
		if (!src)
			usage();
		r = cmd_write(argv[2], opt(argc, argv, 3, "--at", true, 0),
			      opt(argc, argv, 3, "--len", true, 0), src,
			      opt(argc, argv, 3, "--src-at", true, 0),
			      opt(argc, argv, 3, "--dsync", false, 0));
	}
	else
		usage();
	return r ? 1 : 0;
}
