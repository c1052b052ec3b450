// SPDX-License-Identifier: GPL-2.0
/*
 * Unit tests of tls.c (cmocka): su_tls_keep() copies the PSK file and the
 * certificate directory's files into a private directory (0700, files
 * 0600) and works from there, refuses a missing key file or CA and a file
 * over its size limit, leaves nothing behind on any failure (including
 * every allocation failure, through the same --wrap shim as
 * test-reqpool.c), and su_tls_forget() removes the copy.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "test-alloc-shim.h"

#include "tls.h"

/* A scratch tree per test: src/ (the user's files) and run/ (rundir). */
struct scratch {
	char top[64], src[96], run[96];
	int cwd;			/* where the test started */
};

static void put(const char *dir, const char *name, const char *text)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	assert_int_equal(fclose(f), 0);
}

static int setup(void **state)
{
	struct scratch *s = calloc(1, sizeof(*s));

	if (!s)
		return -1;
	snprintf(s->top, sizeof(s->top), "/tmp/test-tls.XXXXXX");
	snprintf(s->src, sizeof(s->src), "%s/src", s->top);
	snprintf(s->run, sizeof(s->run), "%s/run", s->top);
	*state = s;
	s->cwd = open(".", O_RDONLY | O_DIRECTORY);
	if (s->cwd < 0 || !mkdtemp(s->top))
		return -1;
	/* mkdtemp filled in the X's: the paths again */
	snprintf(s->src, sizeof(s->src), "%s/src", s->top);
	snprintf(s->run, sizeof(s->run), "%s/run", s->top);
	return mkdir(s->src, 0700) || mkdir(s->run, 0700) ? -1 : 0;
}

static int teardown(void **state)
{
	struct scratch *s = *state;
	char cmd[128];

	fail_at = 0;
	if (fchdir(s->cwd))
		return -1;
	close(s->cwd);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", s->top);
	if (system(cmd))
		return -1;
	free(s);
	return 0;
}

/* Entries in @dir other than . and .. */
static int entries(const char *dir)
{
	char cmd[160], out[16];
	FILE *p;

	snprintf(cmd, sizeof(cmd), "ls -A %s | wc -l", dir);
	p = popen(cmd, "r");
	assert_non_null(p);
	assert_non_null(fgets(out, sizeof(out), p));
	pclose(p);
	return atoi(out);
}

static void test_keep_psk(void **state)
{
	struct scratch *s = *state;
	struct su_tls t = { 0 };
	char path[256], line[64];
	struct stat st;
	FILE *f;

	put(s->src, "keys", "alice:0123abcd\n");
	snprintf(path, sizeof(path), "%s/keys", s->src);
	t.psk_file = path;
	assert_true(su_tls_wanted(&t));
	assert_int_equal(su_tls_keep(&t, s->run), 0);
	assert_true(strncmp(t.kept, s->run, strlen(s->run)) == 0);
	/* the original can go: the copy is used, by a relative name */
	assert_int_equal(unlink(path), 0);
	assert_int_equal(stat(".", &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);
	assert_int_equal(stat("psk", &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	f = fopen("psk", "r");
	assert_non_null(f);
	assert_non_null(fgets(line, sizeof(line), f));
	fclose(f);
	assert_string_equal(line, "alice:0123abcd\n");
	su_tls_forget(&t);
	assert_string_equal(t.kept, "");
	assert_int_equal(entries(s->run), 0);
}

/* Only the CA is required; the client's files are copied when there. */
static void test_keep_certificates(void **state)
{
	struct scratch *s = *state;
	struct su_tls t = { 0 };
	struct stat st;

	put(s->src, "ca-cert.pem", "CA\n");
	put(s->src, "client-key.pem", "KEY\n");
	t.certificates = s->src;
	assert_int_equal(su_tls_keep(&t, s->run), 0);
	assert_int_equal(stat("ca-cert.pem", &st), 0);
	assert_int_equal(stat("client-key.pem", &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(stat("client-cert.pem", &st), -1);
	su_tls_forget(&t);
	assert_int_equal(entries(s->run), 0);
}

static void test_keep_missing(void **state)
{
	struct scratch *s = *state;
	struct su_tls t = { 0 };
	char path[256];

	/* a certificate directory without its CA */
	put(s->src, "client-cert.pem", "CERT\n");
	t.certificates = s->src;
	assert_int_equal(su_tls_keep(&t, s->run), -ENOENT);
	assert_string_equal(t.kept, "");
	assert_int_equal(entries(s->run), 0);
	/* a PSK file that is not there */
	t.certificates = NULL;
	snprintf(path, sizeof(path), "%s/nope", s->src);
	t.psk_file = path;
	assert_int_equal(su_tls_keep(&t, s->run), -ENOENT);
	assert_int_equal(entries(s->run), 0);
	/* a rundir that is not there */
	t.psk_file = NULL;
	put(s->src, "ca-cert.pem", "CA\n");
	t.certificates = s->src;
	snprintf(path, sizeof(path), "%s/nodir", s->top);
	assert_int_equal(su_tls_keep(&t, path), -ENOENT);
	assert_string_equal(t.kept, "");
}

static void test_keep_too_large(void **state)
{
	struct scratch *s = *state;
	struct su_tls t = { 0 };
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/keys", s->src);
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 1 << 20), 0);
	close(fd);
	t.psk_file = path;
	assert_int_equal(su_tls_keep(&t, s->run), -EFBIG);
	assert_int_equal(entries(s->run), 0);
}

/* Every allocation su_tls_keep makes fails in turn: -ENOMEM, no debris. */
static void test_keep_enomem(void **state)
{
	struct scratch *s = *state;
	struct su_tls t = { 0 };
	char path[256];
	int n, r, failed = 0;

	put(s->src, "keys", "alice:00\n");
	put(s->src, "ca-cert.pem", "CA\n");
	put(s->src, "client-cert.pem", "CERT\n");
	snprintf(path, sizeof(path), "%s/keys", s->src);
	t.psk_file = path;
	t.certificates = s->src;
	for (n = 1; n < 20; n++) {
		calls = 0;
		fail_at = n;
		r = su_tls_keep(&t, s->run);
		fail_at = 0;
		if (!r) {
			su_tls_forget(&t);
			break;
		}
		assert_int_equal(r, -ENOMEM);
		assert_string_equal(t.kept, "");
		assert_int_equal(entries(s->run), 0);
		failed++;
		assert_int_equal(fchdir(s->cwd), 0);
	}
	assert_true(failed >= 3);	/* the PSK file, the CA, the cert */
	assert_int_equal(entries(s->run), 0);
}

static void test_tls_error(void **state)
{
	(void)state;
	assert_true(su_tls_error("gnutls_handshake: Decryption has failed."));
	assert_true(su_tls_error("handshake: server does not support TLS"));
	assert_true(su_tls_error("the server certificate is not trusted"));
	assert_false(su_tls_error("connect: Connection refused"));
	assert_false(su_tls_error(NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_keep_psk, setup, teardown),
		cmocka_unit_test_setup_teardown(test_keep_certificates, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_keep_missing, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_keep_too_large, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_keep_enomem, setup,
						teardown),
		cmocka_unit_test(test_tls_error),
	};

	return cmocka_run_group_tests_name("tls", tests, NULL, NULL);
}
