// SPDX-License-Identifier: GPL-2.0
/* TLS settings for libnbd handles: see tls.h. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "tls.h"

#define TLS_FILE_MAX	(1 << 20)

/* The X.509 files libnbd looks for in a certificate directory. */
static const char *const cert_files[] = {
	"ca-cert.pem", "ca-crl.pem", "client-cert.pem", "client-key.pem",
};

/* Copy @from to @to (0600); -ENOENT quietly if @optional and missing. */
static int copy_file(const char *from, const char *to, bool optional)
{
	char *buf = NULL;
	ssize_t n = 0, w;
	int in, out, r = 0;

	in = open(from, O_RDONLY | O_CLOEXEC);
	if (in < 0) {
		r = -errno;
		if (!(optional && r == -ENOENT))
			fprintf(stderr, "open %s: %s\n", from, strerror(-r));
		return r;
	}
	buf = malloc(TLS_FILE_MAX);
	if (!buf) {
		r = -ENOMEM;
		goto out_in;
	}
	for (;;) {
		w = read(in, buf + n, TLS_FILE_MAX - n);	/* n < max */
		if (w < 0) {
			r = -errno;
			fprintf(stderr, "read %s: %s\n", from, strerror(-r));
			goto out_buf;
		}
		if (!w)
			break;
		n += w;
		if (n == TLS_FILE_MAX) {
			fprintf(stderr, "%s: larger than %d bytes\n", from,
				TLS_FILE_MAX);
			r = -EFBIG;
			goto out_buf;
		}
	}
	out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (out < 0) {
		r = -errno;
		fprintf(stderr, "create %s: %s\n", to, strerror(-r));
		goto out_buf;
	}
	w = write(out, buf, n);
	if (w != n) {
		r = w < 0 ? -errno : -EIO;
		fprintf(stderr, "write %s: %s\n", to, strerror(-r));
	}
	if (close(out) && !r)
		r = -errno;
out_buf:
	free(buf);
out_in:
	close(in);
	return r;
}

int su_tls_keep(struct su_tls *t, const char *rundir)
{
	char from[4096], to[512];
	size_t i;
	int r;

	if (!su_tls_wanted(t))
		return 0;
	snprintf(t->kept, sizeof(t->kept), "%s/streamd-tls.XXXXXX", rundir);
	if (!mkdtemp(t->kept)) {
		r = -errno;
		fprintf(stderr, "mkdtemp %s: %s\n", t->kept, strerror(-r));
		t->kept[0] = '\0';
		return r;
	}
	if (t->psk_file) {
		snprintf(to, sizeof(to), "%s/psk", t->kept);
		r = copy_file(t->psk_file, to, false);
		if (r)
			goto out_forget;
	}
	for (i = 0; t->certificates &&
	     i < sizeof(cert_files) / sizeof(cert_files[0]); i++) {
		snprintf(from, sizeof(from), "%s/%s", t->certificates,
			 cert_files[i]);
		snprintf(to, sizeof(to), "%s/%s", t->kept, cert_files[i]);
		/* only the CA is required: the rest depends on the server */
		r = copy_file(from, to, i > 0);
		if (r && r != -ENOENT)
			goto out_forget;
		if (r && !i)
			goto out_forget;
	}
	if (chdir(t->kept)) {
		r = -errno;
		fprintf(stderr, "chdir %s: %s\n", t->kept, strerror(-r));
		goto out_forget;
	}
	return 0;
out_forget:
	su_tls_forget(t);
	return r;
}

void su_tls_forget(struct su_tls *t)
{
	char path[512];
	size_t i;

	if (!t->kept[0])
		return;
	snprintf(path, sizeof(path), "%s/psk", t->kept);
	unlink(path);
	for (i = 0; i < sizeof(cert_files) / sizeof(cert_files[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", t->kept, cert_files[i]);
		unlink(path);
	}
	rmdir(t->kept);
	t->kept[0] = '\0';
}

int su_tls_apply(const struct su_tls *t, struct nbd_handle *h)
{
	bool kept = t->kept[0];

	if (!su_tls_wanted(t))
		return 0;
	if (nbd_set_tls(h, LIBNBD_TLS_REQUIRE) == -1)
		return -1;
	if (t->certificates &&
	    nbd_set_tls_certificates(h, kept ? "." : t->certificates) == -1)
		return -1;
	if (t->psk_file &&
	    nbd_set_tls_psk_file(h, kept ? "psk" : t->psk_file) == -1)
		return -1;
	if (t->username && nbd_set_tls_username(h, t->username) == -1)
		return -1;
	return 0;
}

bool su_tls_error(const char *msg)
{
	return msg && (strstr(msg, "TLS") || strstr(msg, "tls") ||
		       strstr(msg, "gnutls") || strstr(msg, "certificate") ||
		       strstr(msg, "PSK") || strstr(msg, "psk"));
}
