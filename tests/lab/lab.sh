# Helpers sourced by the scenarios inside L1 (installed as /lab/lab.sh).
L2_KERNEL=/lab/l2/bzImage
L2_INITRD=/lab/l2/initrd.gz
L2_CMDLINE="console=ttyS0 panic=-1"
# A guest that has not powered off by then is stuck: every VMM run is bounded.
VMM_TIMEOUT=180

# lab_param NAME DEFAULT: the value of lab.NAME=VALUE on L1's kernel command line.
lab_param() {
  v=$(sed -n "s/.*lab\\.$1=\\([^ ]*\\).*/\\1/p" /proc/cmdline)
  echo "${v:-$2}"
}

# now_ms: milliseconds since L1 booted (from /proc/uptime, 10 ms resolution).
now_ms() {
  read -r up _ < /proc/uptime
  cs=${up#*.}
  echo $(( ${up%.*} * 1000 + ${cs#0} * 10 ))
}
