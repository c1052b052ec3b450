// SPDX-License-Identifier: GPL-2.0
/*
 * streamctl upgrade-metadata: convert a format 1 metadata device (bitmaps
 * updated in place) to format 2 (commits through a journal), offline.
 *
 * Format 2 keeps format 1's layout and adds two journal slots of 65 blocks
 * right after the bitmaps (see kernel/dm-stream-metadata.c).  The upgrade:
 *   1. checks the format 1 superblock (checksum, magic, version) and that
 *      the device holds the journal;
 *   2. zeroes the journal region and syncs;
 *   3. writes the new superblock (version 2) as journal batch 1 (slot 1:
 *      header + image) and syncs;
 *   4. writes it in place and syncs.
 * A crash before 3 completes leaves format 1 (run it again); after, the
 * module replays batch 1 if the in-place write was torn.  The device is
 * opened O_EXCL: a table using it makes the upgrade fail with EBUSY.
 *
 * Offsets follow struct stream_sb_disk and struct stream_jnl_disk; the
 * checksum is crc32c, written here (no Debian library exposes it to
 * userspace; the table is the standard reflected 0x82f63b78 one).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/fs.h>

#include "upgrade.h"

#define MB		4096		/* metadata block */
#define SB_MAGIC	0x6d61657274736d64ULL
#define SB_CSUM_XOR	0x5e7a11edU
#define JNL_MAGIC	0x6c6e726a6d727473ULL
#define JNL_CSUM_XOR	0x6a6f7572U
#define FIRST_BITMAP	16
#define NR_BITMAPS	9
#define JNL_SLOT_BLOCKS	65
#define JNL_BLOCKS	(2 * JNL_SLOT_BLOCKS)

static uint32_t crc32c(uint32_t crc, const uint8_t *p, size_t n)
{
	int k;

	while (n--) {
		crc ^= *p++;
		for (k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82f63b78U & -(crc & 1));
	}
	return crc;
}

static uint32_t get32(const uint8_t *b, size_t off)
{
	return b[off] | b[off + 1] << 8 | b[off + 2] << 16 |
		(uint32_t)b[off + 3] << 24;
}

static uint64_t get64(const uint8_t *b, size_t off)
{
	return get32(b, off) | (uint64_t)get32(b, off + 4) << 32;
}

static void put32(uint8_t *b, size_t off, uint32_t v)
{
	int i;

	for (i = 0; i < 4; i++)
		b[off + i] = v >> (8 * i);
}

static void put64(uint8_t *b, size_t off, uint64_t v)
{
	put32(b, off, (uint32_t)v);
	put32(b, off + 4, v >> 32);
}

static int pwrite_sync(int fd, const void *buf, size_t len, off_t off,
		       const char *path)
{
	if (pwrite(fd, buf, len, off) != (ssize_t)len || fsync(fd)) {
		fprintf(stderr, "streamctl: write %s at %lld: %m\n", path,
			(long long)off);
		return -EIO;
	}
	return 0;
}

int upgrade_metadata(const char *path)
{
	static uint8_t sb[MB], zero[MB], slot[2 * MB];
	uint64_t size, jnl, bitmap_blocks;
	int fd, r = -EINVAL;
	uint32_t version;
	unsigned int i;

	fd = open(path, O_RDWR | O_EXCL | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		fprintf(stderr, "streamctl: open %s: %m%s\n", path,
			errno == EBUSY ? " (in use by a table?)" : "");
		return r;
	}
	if (pread(fd, sb, MB, 0) != MB) {
		fprintf(stderr, "streamctl: read %s: %m\n", path);
		r = -EIO;
		goto out;
	}
	if ((crc32c(~0U, sb + 4, MB - 4) ^ SB_CSUM_XOR) != get32(sb, 0) ||
	    get64(sb, 32) != SB_MAGIC) {
		fprintf(stderr, "streamctl: %s: no valid dm-stream superblock (format 2 devices are upgraded already)\n",
			path);
		goto out;
	}
	version = get32(sb, 40);
	if (version == 2) {
		printf("%s: metadata format 2 already\n", path);
		r = 0;
		goto out;
	}
	if (version != 1) {
		fprintf(stderr, "streamctl: %s: unknown metadata format %u\n",
			path, version);
		goto out;
	}
	bitmap_blocks = get32(sb, 72);
	jnl = FIRST_BITMAP + NR_BITMAPS * bitmap_blocks;
	if (ioctl(fd, BLKGETSIZE64, &size)) {
		off_t end = lseek(fd, 0, SEEK_END);

		if (end < 0) {
			fprintf(stderr, "streamctl: size of %s: %m\n", path);
			r = -errno;
			goto out;
		}
		size = end;
	}
	if (size < (jnl + JNL_BLOCKS) * MB) {
		fprintf(stderr, "streamctl: %s: %llu bytes; format 2 needs %llu (grow the metadata device first)\n",
			path, (unsigned long long)size,
			(unsigned long long)(jnl + JNL_BLOCKS) * MB);
		r = -ENOSPC;
		goto out;
	}

	/* 2. an empty journal */
	for (i = 0; i < JNL_BLOCKS; i++)
		if (pwrite(fd, zero, MB, (off_t)(jnl + i) * MB) != MB) {
			fprintf(stderr, "streamctl: write %s: %m\n", path);
			r = -EIO;
			goto out;
		}

	/* 3. the new superblock as batch 1, in slot 1 */
	put32(sb, 40, 2);
	put64(sb, 56, get64(sb, 56) + 1);
	put32(sb, 0, crc32c(~0U, sb + 4, MB - 4) ^ SB_CSUM_XOR);
	memset(slot, 0, sizeof(slot));
	put32(slot, 4, 1);				/* nr */
	put64(slot, 8, jnl + JNL_SLOT_BLOCKS);		/* blocknr */
	memcpy(slot + 16, sb + 16, 16);			/* uuid */
	put64(slot, 32, JNL_MAGIC);
	put32(slot, 40, 2);				/* version */
	put64(slot, 48, 1);				/* seq */
	put64(slot, 56, 0);				/* e[0].location */
	put32(slot, 64, crc32c(~0U, sb, MB));		/* e[0].csum */
	put32(slot, 0, crc32c(~0U, slot + 4, MB - 4) ^ JNL_CSUM_XOR);
	memcpy(slot + MB, sb, MB);
	r = pwrite_sync(fd, slot, sizeof(slot),
			(off_t)(jnl + JNL_SLOT_BLOCKS) * MB, path);
	/* 4. in place */
	if (!r)
		r = pwrite_sync(fd, sb, MB, 0, path);
	if (!r)
		printf("%s: upgraded to metadata format 2\n", path);
out:
	close(fd);
	return r;
}
