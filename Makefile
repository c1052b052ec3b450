# dm-stream top-level Makefile.
#
#   make                 module (against KDIR) and programs
#   make modules KDIR=/lib/modules/<kver>/build
#   make install DESTDIR=... PREFIX=/usr [KDIR=...]
#   make check           set up, build, run every suite (KUnit, VM tests)
#   make lint            checkpatch --strict, sparse, shellcheck
#   make bench           benchmark ratios in one VM run
#   make demo            stream a filesystem image into a VM and read it

KDIR ?= $(firstword $(wildcard /lib/modules/$(shell uname -r)/build) \
	  $(wildcard /usr/src/linux-headers-*-amd64))
PREFIX ?= /usr/local
DESTDIR ?=
CC ?= gcc
CFLAGS ?= -O2 -g
WARN := -Wall -Wextra -Wno-unused-parameter -Wshadow -Wformat=2
KVER = $(shell $(MAKE) -s -C $(KDIR) kernelrelease 2>/dev/null)

PROGS := userspace/streamd userspace/streamctl
USER_CFLAGS = $(CFLAGS) $(WARN) -std=gnu11 -D_GNU_SOURCE -Ikernel

.PHONY: all modules programs install clean check lint bench demo setup

all: modules programs

modules:
	$(MAKE) -C $(KDIR) M=$(CURDIR) modules

programs: $(PROGS)

userspace/streamd: userspace/streamd.c userspace/size.h kernel/uapi/dm-stream.h
	$(CC) $(USER_CFLAGS) -o $@ $< $(shell pkg-config --cflags --libs libnbd devmapper) -lpthread

userspace/streamctl: userspace/streamctl.c userspace/upgrade.c userspace/upgrade.h \
		userspace/size.h kernel/uapi/dm-stream.h
	$(CC) $(USER_CFLAGS) -o $@ userspace/streamctl.c userspace/upgrade.c \
		$(shell pkg-config --cflags --libs devmapper libnbd)

install: all
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/share/man/man8
	install -m 0755 $(PROGS) $(DESTDIR)$(PREFIX)/sbin/
	install -m 0644 doc/streamd.8 doc/streamctl.8 $(DESTDIR)$(PREFIX)/share/man/man8/
	install -d $(DESTDIR)/lib/modules/$(KVER)/extra
	install -m 0644 dm-stream.ko $(DESTDIR)/lib/modules/$(KVER)/extra/

clean:
	-$(MAKE) -C $(KDIR) M=$(CURDIR) clean
	rm -f $(PROGS)

setup:
	scripts/setup.sh

check: setup
	tests/run-all.sh

lint: setup
	scripts/lint.sh

bench: setup
	tests/bench.sh

demo: setup
	scripts/demo.sh
