# Helpers sourced by the scenarios inside L1 (installed as /lab/lab.sh).
L2_KERNEL=/lab/l2/bzImage
L2_INITRD=/lab/l2/initrd.gz
# The console on COM1 (ttyS0): what QEMU's guests get, and minivmm's too when asked.
L2_CMDLINE="console=ttyS0 panic=-1"
# minivmm's default console: its MMIO console UART (vmm/src/config.rs, DEFAULT_CMDLINE).
L2_CMDLINE_MINIVMM="console=uart8250,mmio,0xfe000000 panic=-1"
# A guest that has not powered off by then is stuck: every VMM run is bounded, and below
# the harness's 150 s of console silence, so a stuck guest's console and its VMM's stderr
# still reach the log (a silent L1 is killed and says nothing about which run hung).
VMM_TIMEOUT=130

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

# alive PID: the process exists and is not a zombie.
alive() {
  { read -r _ _ state _ < "/proc/$1/stat"; } 2>/dev/null && [ "$state" != Z ]
}

# wait_for FILE PATTERN PID DEADLINE_MS: polls every 20 ms; prints when PATTERN appeared (ms).
wait_for() {
  until grep -q "$2" "$1" 2>/dev/null; do
    alive "$3" && [ "$(now_ms)" -lt "$4" ] || return 1
    usleep 20000
  done
  now_ms
}

# shot NAME DEVICE: ask the harness for a picture of L1's display DEVICE (QEMU's id) as
# NAME.png, and wait for its answer on fd 5 (the scenario opens ttyS1 there, once);
# prints LAB:SHOT name=NAME answer=... and leaves the answer in $answer.
shot() {
  echo "LAB:SCREENSHOT name=$1 device=$2"
  if read -r -t 60 answer <&5; then :; else answer=timeout; fi
  echo "LAB:SHOT name=$1 answer=$answer"
}

# end_vmm PID: wait for a minivmm run whose console went to /tmp/l2.log and stderr to
# /tmp/vmm.err, close its input (fd 3), then print both (stderr as LAB:VMM lines); its
# exit status is left in $rc.
end_vmm() {
  wait "$1"
  rc=$?
  exec 3>&-
  cat /tmp/l2.log
  echo
  sed 's/^/LAB:VMM /' /tmp/vmm.err
}

# ratio A B: A / B to three decimals, NA when either is missing.
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "NA" || b == "NA" || b == 0) print "NA"; else printf "%.3f\n", a / b }'
}

# bad NAME COMMAND...: runs a command that must fail cleanly (bounded, stdin empty) and
# prints LAB:BAD name=NAME rc=RC lines=<stderr lines> panic=<0|1>, then its first lines.
bad() {
  name=$1
  shift
  timeout -s KILL 60 "$@" </dev/null >/tmp/bad.out 2>/tmp/bad.err
  rc=$?
  lines=$(grep -c '' /tmp/bad.err)
  panic=0
  grep -q panicked /tmp/bad.err && panic=1
  echo "LAB:BAD name=$name rc=$rc lines=$lines panic=$panic"
  head -n 3 /tmp/bad.err | sed "s/^/LAB:STDERR $name: /"
}

# The radeon scenarios (radeon, laptop): each guest runs until L2 has said what radeon found
# (or 240 s), then 10 s more to power off (radeon's probe may hang the emulated chip, and
# the guest with it). A VMM still running then gets SIGTERM, as a user would stop it, and 5 s
# to end its guest and give the device back in order; SIGKILL only after that (a VMM
# killed while its guest drives the device left it mid-interrupt for the next VMM, and L1's
# nested KVM once crashed on that; an L1 also froze right after such a kill).
# run_until_bios NAME COMMAND...: run a VMM with its console in /tmp/l2.log, then print the
# console, its stderr (LAB:VMM) and LAB:RESULT NAME rc=N.
run_until_bios() {
  name=$1
  shift
  : > /tmp/l2.log
  "$@" </dev/null >/tmp/l2.log 2>/tmp/vmm.err &
  pid=$!
  wait_for /tmp/l2.log L2:RADEON-BIOS "$pid" $(( $(now_ms) + VMM_TIMEOUT * 1000 )) >/dev/null
  end=$(( $(now_ms) + 10000 ))
  while alive "$pid" && [ "$(now_ms)" -lt "$end" ]; do usleep 100000; done
  if alive "$pid"; then
    kill "$pid"
    end=$(( $(now_ms) + 5000 ))
    while alive "$pid" && [ "$(now_ms)" -lt "$end" ]; do usleep 100000; done
    alive "$pid" && kill -9 "$pid"
  fi
  wait "$pid"
  rc=$?
  cat /tmp/l2.log
  echo
  sed 's/^/LAB:VMM /' /tmp/vmm.err
  echo "LAB:RESULT $name rc=$rc"
}
