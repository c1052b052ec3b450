// SPDX-License-Identifier: GPL-2.0
/* libdevmapper calls on a stream device: see dm.h. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libdevmapper.h>

#include "dm.h"

static struct dm_task *task(const struct su_dev *d, int type)
{
	struct dm_task *dmt = dm_task_create(type);

	if (!dmt)
		return NULL;
	if (!(d->by_uuid ? dm_task_set_uuid(dmt, d->id) :
	      dm_task_set_name(dmt, d->id))) {
		dm_task_destroy(dmt);
		return NULL;
	}
	return dmt;
}

int su_dm_message(const struct su_dev *d, const char *msg, char **resp)
{
	struct dm_task *dmt = task(d, DM_DEVICE_TARGET_MSG);
	const char *out;
	int r = 0;

	if (!dmt)
		return -ENOMEM;
	if (!dm_task_set_sector(dmt, 0) || !dm_task_set_message(dmt, msg) ||
	    !dm_task_run(dmt)) {
		if (!d->quiet)
			fprintf(stderr, "message '%.60s' to %s failed (see the kernel log)\n",
				msg, d->id);
		r = -EIO;
		goto out;
	}
	if (resp) {
		out = dm_task_get_message_response(dmt);
		*resp = strdup(out ? out : "");
		if (!*resp)
			r = -ENOMEM;
	}
out:
	dm_task_destroy(dmt);
	return r;
}

int su_dm_status(const struct su_dev *d, char *name, size_t len,
		 struct su_status *st, int *open_count)
{
	struct dm_task *dmt = task(d, DM_DEVICE_STATUS);
	char *type = NULL, *params = NULL;
	uint64_t start, length;
	struct dm_info info;
	int r = -EIO;

	if (!dmt)
		return -ENOMEM;
	if (!dm_task_run(dmt) || !dm_task_get_info(dmt, &info)) {
		if (!d->quiet)
			fprintf(stderr, "status of %s: device-mapper task failed\n",
				d->id);
		goto out;
	}
	if (!info.exists) {
		if (!d->quiet)
			fprintf(stderr, "%s: no such device\n", d->id);
		r = -ENOENT;
		goto out;
	}
	dm_get_next_target(dmt, NULL, &start, &length, &type, &params);
	if (!type || strcmp(type, "stream") || !params) {
		if (!d->quiet)
			fprintf(stderr, "%s: not a stream device (%s)\n", d->id,
				type ? type : "no table");
		r = -EMEDIUMTYPE;
		goto out;
	}
	r = su_parse_status(params, st);
	if (r) {
		if (!d->quiet)
			fprintf(stderr, "%s: cannot parse status '%.200s' (module version?)\n",
				d->id, params);
		goto out;
	}
	if (name)
		snprintf(name, len, "%s", dm_task_get_name(dmt));
	if (open_count)
		*open_count = info.open_count;
out:
	dm_task_destroy(dmt);
	return r;
}

int su_dm_for_each_range(const struct su_dev *d, const char *query,
			 uint64_t total,
			 int (*fn)(void *ctx, uint64_t first, uint64_t count),
			 void *ctx)
{
	uint64_t cursor = 0, next;
	char msg[128], *resp;
	int r = 0;

	while (cursor < total) {
		snprintf(msg, sizeof(msg), "%s %" PRIu64, query, cursor);
		r = su_dm_message(d, msg, &resp);
		if (r)
			break;
		r = su_parse_range_page(resp, cursor, total, &next, fn, ctx);
		if (r == -EPROTO && !d->quiet)
			fprintf(stderr, "%s: bad answer to '%s': '%.60s'\n",
				d->id, msg, resp);
		free(resp);
		if (r)
			break;
		cursor = next;
	}
	return r;
}
