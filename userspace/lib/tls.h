/* SPDX-License-Identifier: GPL-2.0 */
/*
 * TLS settings for libnbd handles, shared by streamd and streamctl.
 *
 * libnbd (gnutls) reads the certificate directory and the PSK file at
 * every handshake.  streamd reconnects long after start-up, possibly
 * after an initramfs switch_root removed those files, so su_tls_keep()
 * copies them at start-up into a private directory (mode 0700, files
 * 0600) on a tmpfs that survives switch_root (/run, moved to the new
 * root), makes it the working directory and refers to the copies by
 * relative names, which stay valid whatever the root is.
 */
#ifndef STREAM_LIB_TLS_H
#define STREAM_LIB_TLS_H

#include <stdbool.h>

#include <libnbd.h>

struct su_tls {
	const char *certificates;	/* directory (X.509), or NULL */
	const char *psk_file;		/* "user:hexkey" lines, or NULL */
	const char *username;		/* or NULL (libnbd: the login name) */
	char kept[256];			/* the copy, "" if none */
};

static inline bool su_tls_wanted(const struct su_tls *t)
{
	return t->certificates || t->psk_file;
}

/*
 * Copy the files into a new directory under @rundir and chdir there.
 * Returns 0 or -errno after saying which file failed.
 */
int su_tls_keep(struct su_tls *t, const char *rundir);
/* Remove the copy (at exit). */
void su_tls_forget(struct su_tls *t);
/* Apply to @h before connecting (TLS required).  0 or -1 (libnbd error). */
int su_tls_apply(const struct su_tls *t, struct nbd_handle *h);
/* Does libnbd's last error look like a TLS failure (not a network one)? */
bool su_tls_error(const char *msg);

#endif
