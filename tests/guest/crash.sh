# shellcheck shell=sh
# shellcheck disable=SC2034 # read by persist.sh
SUITE_KIND=crash
# shellcheck source=persist.sh
. /tests/persist.sh
