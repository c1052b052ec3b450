# dm-stream top-level Makefile.
#
#   make                 module (against KDIR) and programs
#   make modules KDIR=/lib/modules/<kver>/build
#   make install DESTDIR=... PREFIX=/usr [KDIR=...]
#   make check           set up, build, run every suite (unit, KUnit, VM)
#   make unit            host-side unit tests of userspace/lib
#   make lint            checkpatch --strict, sparse, shellcheck
#   make bench           benchmark ratios in one VM run
#   make profile         perf profile of the miss path in one VM run
#   make demo            stream a filesystem image into a VM and read it
#   make deb [DEB_OUT=]  Debian packages (dm-stream-dkms, dm-stream-tools)
#                        in build/deb, checked with lintian

KDIR ?= $(firstword $(wildcard /lib/modules/$(shell uname -r)/build) \
	  $(wildcard /usr/src/linux-headers-*-amd64))
PREFIX ?= /usr/local
DESTDIR ?=
CC ?= gcc
CFLAGS ?= -O2 -g
WARN := -Wall -Wextra -Wno-unused-parameter -Wshadow -Wformat=2
KVER = $(shell $(MAKE) -s -C $(KDIR) kernelrelease 2>/dev/null)

PROGS := userspace/streamd userspace/streamctl
# make check builds with WERROR=1 (tests/lib.sh); a distribution build
# need not.
USER_CFLAGS = $(CFLAGS) $(WARN) $(if $(WERROR),-Werror) -std=gnu11 \
	      -D_GNU_SOURCE -Ikernel -Iuserspace/lib

# The internal library shared by streamd and streamctl (userspace/lib).
LIB_SRCS := $(wildcard userspace/lib/[a-z]*.c)
LIB_SRCS := $(filter-out userspace/lib/test-%.c userspace/lib/fuzz-%.c,$(LIB_SRCS))
LIB_HDRS := $(wildcard userspace/lib/*.h)
LIB := userspace/lib/libstream.a

.PHONY: all modules programs install clean check lint bench profile demo setup unit deb

all: modules programs

modules:
	$(MAKE) -C $(KDIR) M=$(CURDIR) modules

programs: $(PROGS)

$(LIB): $(LIB_SRCS) $(LIB_HDRS)
	rm -f $@
	for f in $(LIB_SRCS); do \
		$(CC) $(USER_CFLAGS) -c -o $${f%.c}.o $$f || exit 1; \
	done
	ar rcs $@ $(LIB_SRCS:.c=.o)

userspace/streamd: userspace/streamd.c $(LIB) kernel/uapi/dm-stream.h
	$(CC) $(USER_CFLAGS) -o $@ $< $(LIB) $(shell pkg-config --cflags --libs libnbd devmapper libsystemd) -lpthread

userspace/streamctl: userspace/streamctl.c userspace/upgrade.c userspace/upgrade.h \
		$(LIB) kernel/uapi/dm-stream.h
	$(CC) $(USER_CFLAGS) -o $@ userspace/streamctl.c userspace/upgrade.c \
		$(LIB) $(shell pkg-config --cflags --libs devmapper libnbd json-c)

# Host-side unit tests of userspace/lib (cmocka), plain and under ASan and
# UBSan; make check runs them first (tests/unit.sh).
unit:
	tests/unit.sh

install: all
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/share/man/man8
	install -m 0755 $(PROGS) $(DESTDIR)$(PREFIX)/sbin/
	install -m 0644 doc/streamd.8 doc/streamctl.8 $(DESTDIR)$(PREFIX)/share/man/man8/
	install -d $(DESTDIR)/lib/modules/$(KVER)/extra
	install -m 0644 dm-stream.ko $(DESTDIR)/lib/modules/$(KVER)/extra/

clean:
	-$(MAKE) -C $(KDIR) M=$(CURDIR) clean
	rm -f $(PROGS) $(LIB) userspace/lib/*.o

setup:
	scripts/setup.sh

check: setup
	tests/run-all.sh

lint: setup
	scripts/lint.sh

bench: setup
	tests/bench.sh

profile: setup
	tests/profile.sh

demo: setup
	scripts/demo.sh

# Not after setup: dpkg-buildpackage names any missing build dependency.
deb:
	scripts/build-deb.sh
