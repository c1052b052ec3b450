// SPDX-License-Identifier: GPL-2.0
/*
 * stream-meta: damage a dm-stream metadata device in one precise way, for
 * the loader's rejection tests.  Offsets follow struct stream_sb_disk in
 * kernel/dm-stream-metadata.c; "reseal" recomputes the checksum so that
 * only the named field is wrong.
 *
 *   stream-meta <dev> csum|magic|version|format1|blocknr|geometry|bitmap|
 *                     flags|reverting|torn|show
 *   stream-meta <dev> invalidating <block>
 *   stream-meta <dev> dirty <block>
 *
 * Every kind but "torn" and "show" also empties the journal (format 2): an
 * edit of a quiesced device, so that the loader sees exactly the edited
 * blocks instead of replaying the last batches over them.  "torn" zeroes
 * the second half of the in-place superblock and leaves the journal: the
 * loader must replay it (a write torn by a power cut).
 *
 * "reverting" is not damage: it sets the flag an interrupted revert leaves
 * behind, so that the test can check the revert is completed on load.
 * "invalidating" likewise leaves what an image update interrupted after
 * its first step leaves: <block> in the invalidate set (bitmap 2), the
 * INVALIDATING flag and the image id "interrupted".  "dirty" sets <block>
 * in every consumer's dirty map and leaves it absent: what a crash leaves
 * when a fill's dirty bits reached the disk and its present bit did not.
 * "intent" sets SB_F_INTENT with no region open (refused on load).
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BS 4096
#define SB_CSUM_XOR 0x5e7a11edU
#define BITMAP_CSUM_XOR 0x0b17c0deU
#define BITMAP_BITS_OFF 24	/* struct stream_bitmap_disk.bits */
#define SB_IMAGE_ID_OFF 112	/* struct stream_sb_disk.image_id */
#define FIRST_BITMAP 16
#define NR_BITMAPS 9
#define JNL_SLOT_BLOCKS 65

static uint32_t crc32c(uint32_t crc, const uint8_t *p, size_t n)
{
	while (n--) {
		int k;

		crc ^= *p++;
		for (k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82f63b78U & -(crc & 1));
	}
	return crc;
}

static void put32(uint8_t *b, unsigned int off, uint32_t v)
{
	memcpy(b + off, &v, 4);	/* little-endian host (x86) */
}

static void reseal(uint8_t *b)
{
	put32(b, 0, crc32c(~0U, b + 4, BS - 4) ^ SB_CSUM_XOR);
}

/* Set @block in bitmap @map (resealed); @block within its first block. */
static int set_bit_in(int fd, const uint8_t *sb, unsigned int map,
		      unsigned long block)
{
	uint32_t bitmap_blocks;
	uint8_t b[BS];
	off_t where;

	memcpy(&bitmap_blocks, sb + 72, 4);
	if (block >= 509 * 64) {
		fprintf(stderr, "block %lu not in the first bitmap block\n", block);
		return 2;
	}
	where = (off_t)(FIRST_BITMAP + map * bitmap_blocks) * BS;
	if (pread(fd, b, BS, where) != BS)
		return 1;
	b[BITMAP_BITS_OFF + block / 8] |= 1 << (block % 8);
	put32(b, 0, crc32c(~0U, b + 4, BS - 4) ^ BITMAP_CSUM_XOR);
	if (pwrite(fd, b, BS, where) != BS)
		return 1;
	return 0;
}

/* Bitmap 2 gets @block, the superblock the flag: an interrupted update. */
static int invalidating(int fd, uint8_t *sb, unsigned long block)
{
	int r = set_bit_in(fd, sb, 2, block);

	if (r)
		return r;
	put32(sb, 4, 2);
	memset(sb + SB_IMAGE_ID_OFF, 0, 64);
	strcpy((char *)sb + SB_IMAGE_ID_OFF, "interrupted");
	reseal(sb);
	return 0;
}

/* Set @block in the dirty maps of consumers 0-3 (bitmaps 1, 3, 5, 7). */
static int dirty(int fd, const uint8_t *sb, unsigned long block)
{
	unsigned int c;
	int r = 0;

	for (c = 0; c < 4 && !r; c++)
		r = set_bit_in(fd, sb, 1 + 2 * c, block);
	return r;
}

/* Zero both journal slot headers (after the bitmaps). */
static int zap_journal(int fd, const uint8_t *sb)
{
	uint8_t z[BS] = { 0 };
	uint32_t bitmap_blocks;
	off_t jnl;
	int i;

	memcpy(&bitmap_blocks, sb + 72, 4);
	jnl = FIRST_BITMAP + (off_t)NR_BITMAPS * bitmap_blocks;
	for (i = 0; i < 2; i++)
		if (pwrite(fd, z, BS, (jnl + i * JNL_SLOT_BLOCKS) * BS) != BS)
			return 1;
	return 0;
}

int main(int argc, char **argv)
{
	uint8_t sb[BS];
	bool keep_journal = false;
	uint8_t b[BS];
	off_t where = 0;
	int fd;

	if (argc != 3 && !(argc == 4 && (!strcmp(argv[2], "invalidating") ||
					!strcmp(argv[2], "dirty")))) {
		fprintf(stderr, "usage: stream-meta <dev> <damage>\n");
		return 2;
	}
	fd = open(argv[1], O_RDWR);
	if (fd < 0 || pread(fd, b, BS, 0) != BS) {
		perror(argv[1]);
		return 1;
	}
	memcpy(sb, b, BS);
	if (!strcmp(argv[2], "show")) {
		uint64_t gen;

		memcpy(&gen, b + 56, 8);
		printf("generation=%llu\n", (unsigned long long)gen);
		return 0;
	} else if (!strcmp(argv[2], "csum")) {
		b[200] ^= 0x01;
	} else if (!strcmp(argv[2], "magic")) {
		b[32] ^= 0xff;
		reseal(b);
	} else if (!strcmp(argv[2], "version")) {
		put32(b, 40, 99);
		reseal(b);
	} else if (!strcmp(argv[2], "format1")) {
		put32(b, 40, 1);
		reseal(b);
	} else if (!strcmp(argv[2], "torn")) {
		memset(b + BS / 2, 0, BS / 2);
		keep_journal = true;
	} else if (!strcmp(argv[2], "blocknr")) {
		put32(b, 8, 7);
		reseal(b);
	} else if (!strcmp(argv[2], "flags")) {
		put32(b, 4, 0x80);
		reseal(b);
	} else if (!strcmp(argv[2], "invalidating")) {
		int r = invalidating(fd, b, strtoul(argv[3], NULL, 10));

		if (r)
			return r;
	} else if (!strcmp(argv[2], "dirty")) {
		int r = dirty(fd, b, strtoul(argv[3], NULL, 10));

		if (r)
			return r;
	} else if (!strcmp(argv[2], "intent")) {
		put32(b, 4, 0x8);
		reseal(b);
	} else if (!strcmp(argv[2], "reverting")) {
		put32(b, 4, 1);
		reseal(b);
	} else if (!strcmp(argv[2], "geometry")) {
		put32(b, 72, 12345);
		reseal(b);
	} else if (!strcmp(argv[2], "bitmap")) {
		where = (off_t)FIRST_BITMAP * BS;
		if (pread(fd, b, BS, where) != BS)
			return 1;
		b[BS - 1] ^= 0x40;
	} else {
		fprintf(stderr, "unknown damage %s\n", argv[2]);
		return 2;
	}
	if (pwrite(fd, b, BS, where) != BS ||
	    (!keep_journal && zap_journal(fd, sb)) || fsync(fd)) {
		perror("write");
		return 1;
	}
	return 0;
}
