# shellcheck shell=sh
# Scratch suite for interactive debugging (not run by make check).
prepare_image
fresh
server_start nbdkit
create
ls -l /dev/mapper/
helper_start
dev_sum $DEV
teardown
ls -l /dev/mapper/
fresh
server_start qemu-nbd
create
ls -l /dev/mapper/ /dev/dm*
helper_start
dd if=$DEV bs=1M iflag=direct count=1 | md5sum
dmsetup status s
