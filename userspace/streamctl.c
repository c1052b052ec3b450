// SPDX-License-Identifier: GPL-2.0
/*
 * streamctl - control a dm-stream device through libdevmapper.
 *
 *   streamctl status [--json] <device>
 *   streamctl revert <device>
 *
 * Every operation is a libdevmapper task (create, set name, run, read the
 * response, destroy); nothing shells out to dmsetup.
 *
 * Exit status: 0 success, 1 the operation failed, 2 usage error, 3 the
 * device is not a stream device.
 */
#include <errno.h>
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

#define EXIT_USAGE	2
#define EXIT_NOT_STREAM	3

struct stream_status {
	unsigned int block_sectors;
	uint64_t present, total, dirty;
	int parked;
	char helper[16], mode[8];
	uint64_t fetched, zero, errors, generation;
};

static void usage(FILE *f)
{
	fprintf(f,
"Usage: streamctl status [--json] <device>\n"
"       streamctl revert <device>\n"
"\n"
"status  print presence, dirty blocks, helper and mode of a stream device\n"
"revert  make every block written on this machine absent again (suspends\n"
"        the device for the duration; nothing may have it mounted)\n");
}

/* Returns 0, -ENOENT (no such device) or -EMEDIUMTYPE (not stream). */
static int get_status(const char *dev, struct stream_status *st)
{
	struct dm_task *dmt;
	uint64_t start, length;
	char *type = NULL, *params = NULL;
	struct dm_info info;
	int r = -EIO;

	dmt = dm_task_create(DM_DEVICE_STATUS);
	if (!dmt)
		return -ENOMEM;
	if (!dm_task_set_name(dmt, dev) || !dm_task_run(dmt)) {
		fprintf(stderr, "streamctl: status %s: device-mapper task failed\n",
			dev);
		goto out;
	}
	if (!dm_task_get_info(dmt, &info) || !info.exists) {
		fprintf(stderr, "streamctl: %s: no such device\n", dev);
		r = -ENOENT;
		goto out;
	}
	dm_get_next_target(dmt, NULL, &start, &length, &type, &params);
	if (!type || strcmp(type, "stream") || !params) {
		fprintf(stderr, "streamctl: %s: not a stream device (%s)\n", dev,
			type ? type : "no table");
		r = -EMEDIUMTYPE;
		goto out;
	}
	if (sscanf(params, "%u %" SCNu64 "/%" SCNu64 " %" SCNu64 " %d %15s %7s %"
		   SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64,
		   &st->block_sectors, &st->present, &st->total, &st->dirty,
		   &st->parked, st->helper, st->mode, &st->fetched, &st->zero,
		   &st->errors, &st->generation) != 11) {
		fprintf(stderr, "streamctl: %s: cannot parse status '%s'\n",
			dev, params);
		goto out;
	}
	r = 0;
out:
	dm_task_destroy(dmt);
	return r;
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
	struct dm_task *dmt = dm_task_create(DM_DEVICE_TARGET_MSG);
	const char *out;
	int r = 0;

	if (!dmt)
		return -ENOMEM;
	if (!dm_task_set_name(dmt, dev) || !dm_task_set_sector(dmt, 0) ||
	    !dm_task_set_message(dmt, msg) || !dm_task_run(dmt)) {
		fprintf(stderr, "streamctl: message '%s' to %s failed (see the kernel log)\n",
			msg, dev);
		r = -EIO;
		goto out;
	}
	out = dm_task_get_message_response(dmt);
	snprintf(resp, len, "%s", out ? out : "");
out:
	dm_task_destroy(dmt);
	return r;
}

static double ms_since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (t.tv_sec - t0->tv_sec) * 1e3 + (t.tv_nsec - t0->tv_nsec) / 1e6;
}

static int cmd_revert(const char *dev)
{
	struct stream_status st;
	struct timespec t0;
	char resp[128], path[PATH_MAX];
	int r, fd;

	r = get_status(dev, &st);
	if (r)
		return r == -EMEDIUMTYPE || r == -ENOENT ? EXIT_NOT_STREAM : 1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (simple_task(DM_DEVICE_SUSPEND, dev, "suspend"))
		return 1;
	r = message(dev, "revert", resp, sizeof(resp));
	if (simple_task(DM_DEVICE_RESUME, dev, "resume"))
		return 1;
	if (r)
		return 1;
	/* Drop any cached pages of the old content. */
	snprintf(path, sizeof(path), "%s/%s", dm_dir(), dev);
	fd = open(path, O_RDONLY);
	if (fd < 0 || ioctl(fd, BLKFLSBUF, 0) < 0)
		fprintf(stderr, "streamctl: flush page cache of %s: %m\n", path);
	if (fd >= 0)
		close(fd);
	printf("%s: %s blocks in %.1f ms\n", dev, resp, ms_since(&t0));
	return 0;
}

static int cmd_status(const char *dev, bool json)
{
	struct stream_status st;
	int r = get_status(dev, &st);

	if (r)
		return r == -EMEDIUMTYPE || r == -ENOENT ? EXIT_NOT_STREAM : 1;
	if (json) {
		printf("{\"device\": \"%s\", \"block_size\": %u, "
		       "\"present\": %" PRIu64 ", \"total\": %" PRIu64 ", "
		       "\"dirty\": %" PRIu64 ", \"parked\": %d, "
		       "\"helper\": \"%s\", \"mode\": \"%s\", "
		       "\"fetched\": %" PRIu64 ", \"fetch_errors\": %" PRIu64
		       ", \"generation\": %" PRIu64 "}\n",
		       dev, st.block_sectors * 512, st.present, st.total,
		       st.dirty, st.parked, st.helper, st.mode, st.fetched,
		       st.errors, st.generation);
		return 0;
	}
	printf("%s: %" PRIu64 "/%" PRIu64 " blocks present (%.1f%%), %"
	       PRIu64 " dirty, %d parked, helper %s, mode %s\n", dev,
	       st.present, st.total,
	       st.total ? 100.0 * st.present / st.total : 100.0, st.dirty,
	       st.parked, st.helper, st.mode);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	bool json = false;
	const char *cmd;
	int c;

	while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
		if (c == 'h') {
			usage(stdout);
			return 0;
		}
		usage(stderr);
		return EXIT_USAGE;
	}
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	cmd = argv[optind++];
	while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
		if (c == 'j' && !strcmp(cmd, "status")) {
			json = true;
			continue;
		}
		usage(stderr);
		return EXIT_USAGE;
	}
	if (argc - optind != 1) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(cmd, "status"))
		return cmd_status(argv[optind], json);
	if (!strcmp(cmd, "revert"))
		return cmd_revert(argv[optind]);
	fprintf(stderr, "streamctl: unknown command '%s'\n", cmd);
	usage(stderr);
	return EXIT_USAGE;
}
