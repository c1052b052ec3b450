/* SPDX-License-Identifier: GPL-2.0 */
#ifndef STREAM_UPGRADE_H
#define STREAM_UPGRADE_H

/*
 * Convert the format 1 metadata device @path to format 2, offline.
 * Returns 0 (also when it is format 2 already) or -errno after printing
 * why.
 */
int upgrade_metadata(const char *path);

#endif
