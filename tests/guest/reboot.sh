# shellcheck shell=sh
# shellcheck disable=SC2034 # read by persist.sh
SUITE_KIND=reboot
# shellcheck source=persist.sh
. /tests/persist.sh
