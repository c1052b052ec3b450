# shellcheck shell=sh
# shellcheck disable=SC2034 # read by fio.sh
# fio power-cut pair: see fio.sh.
FIO_KIND=crash
# shellcheck source=fio.sh
. /tests/fio.sh
