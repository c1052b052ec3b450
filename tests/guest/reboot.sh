# shellcheck shell=sh
SUITE_KIND=persist
. /tests/persist.sh
