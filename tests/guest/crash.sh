# shellcheck shell=sh
SUITE_KIND=crash
. /tests/persist.sh
