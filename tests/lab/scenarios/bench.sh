# lab-needs: two-cpus
# lab-needs: qemu
# The peer benchmark, one run in one L1: the same L2 kernel, initramfs, 256M and 1 vCPU under
# QEMU (-accel kvm) and under minivmm. For each VMM it reports the time from starting the VMM
# to L2's `L2:INIT` marker, and the VMM's own memory while L2 holds (l2.hold).
#
# Order: QEMU, minivmm, minivmm, QEMU, and each VMM's time is the mean of its two boots. In
# this lab a guest booted later in the same L1 is slower, 1.2-1.5x for the same VMM (most
# likely because L1 hands it pages that held an earlier guest's code, whose translations the
# TCG running L1 drops on the first write to each). Each VMM gets one early and one late
# place, so neither carries the order.
#
# Own memory rule: the sum of Rss over /proc/PID/smaps, except anonymous mappings (no file
# name) whose size is >= the guest RAM size: those are the guest's RAM, not the VMM's.
. /lab/lab.sh
# A VMM normally reaches L2:INIT within 25 s here; give up on a stuck one sooner.
VMM_TIMEOUT=90
RAM_MB=256
HOLD=3
# Each VMM with its own serial console: QEMU's COM1, minivmm's MMIO console UART. The
# guests print the same boot log.
CMDLINE="$L2_CMDLINE l2.hold=$HOLD"
MINIVMM_CMDLINE="$L2_CMDLINE_MINIVMM l2.hold=$HOLD"

start_qemu() {
  qemu-system-x86_64 -accel kvm -cpu host -machine q35 -m "${RAM_MB}M" -smp 1 -nodefaults \
    -display none -monitor none -no-reboot -serial "file:$1" \
    -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$CMDLINE" </dev/null >"$1.err" 2>&1 &
}

start_minivmm() {
  minivmm --exit-stats --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" --cmdline "$MINIVMM_CMDLINE" \
    --memory "${RAM_MB}M" --cpus 1 --serial stdio </dev/null >"$1" 2>"$1.err" &
}

# own_mem PID: prints "OWN_KIB GUEST_KIB GUEST_MAPPINGS" by the rule above.
own_mem() {
  awk -v ram=$((RAM_MB * 1024)) '
    function flush() {
      if (!seen) return
      if (path == "" && size >= ram) { guest += rss; n++ } else own += rss
    }
    /^[0-9a-f]+-[0-9a-f]+ / { flush(); seen = 1; path = $6; size = 0; rss = 0; next }
    $1 == "Size:" { size = $2 }
    $1 == "Rss:" { rss = $2 }
    END { flush(); print own + 0, guest + 0, n + 0 }' "/proc/$1/smaps"
}

# measure NAME: runs start_NAME, prints LAB:BENCH vmm=NAME ...; sets INIT_MS and OWN_KIB.
measure() {
  log=/tmp/$1.console
  : > "$log"
  t0=$(now_ms)
  "start_$1" "$log"
  pid=$!
  deadline=$((t0 + VMM_TIMEOUT * 1000))
  INIT_MS=NA OWN_KIB=NA guest=NA maps=NA
  if t1=$(wait_for "$log" L2:INIT "$pid" "$deadline"); then INIT_MS=$((t1 - t0)); fi
  if wait_for "$log" L2:HOLD "$pid" "$deadline" >/dev/null; then
    # What of the VMM's own memory is in transparent huge pages (L1 has THP always).
    awk '/^[0-9a-f]+-[0-9a-f]+ /{m=$0} $1=="AnonHugePages:" && $2>0 {print "LAB:OWN-THP " $2 " kB " m}' "/proc/$pid/smaps"
    set -- "$1" $(own_mem "$pid")
    OWN_KIB=$2 guest=$3 maps=$4
  fi
  while alive "$pid"; do
    [ "$(now_ms)" -lt "$deadline" ] || kill -9 "$pid"
    usleep 100000
  done
  wait "$pid"
  rc=$?
  sed "s/^/[$1] /" "$log" "$log.err"
  echo
  RESULT="vmm=$1 init_ms=$INIT_MS own_kib=$OWN_KIB guest_kib=$guest guest_maps=$maps rc=$rc"
  echo "LAB:TRY $RESULT"
}

# measure_settled NAME: measure; when the guest never reached L2:INIT say so (LAB:FLAKE) and
# measure once more. The test accepts that of the peer; a minivmm flake fails the attempt.
measure_settled() {
  measure "$1"
  if [ "$INIT_MS" = NA ]; then
    echo "LAB:FLAKE vmm=$1 reached no L2:INIT; measuring it once more"
    measure "$1"
  fi
  echo "LAB:RUN $RESULT"
}

# report NAME INIT1 INIT2 OWN1 OWN2 MAPS1 MAPS2: prints LAB:BENCH vmm=NAME with the mean
# time of the two boots, the larger own memory and the fewer guest-RAM mappings found (NA
# when either boot has none); sets MEAN_MS and MAX_OWN.
report() {
  set -- $(awk -v a="$2" -v b="$3" -v c="$4" -v d="$5" -v e="$6" -v f="$7" 'BEGIN {
    na = "NA"
    print (a == na || b == na) ? na : int((a + b) / 2 + 0.5)
    print (c == na || d == na) ? na : (c + 0 > d + 0 ? c : d)
    print (e == na || f == na) ? na : (e + 0 < f + 0 ? e : f)
  }') "$1" "$2" "$3"
  MEAN_MS=$1 MAX_OWN=$2
  echo "LAB:BENCH vmm=$4 init_ms=$1 own_kib=$2 guest_maps=$3 runs_ms=$5,$6"
}

measure_settled qemu
q1=$INIT_MS q1_own=$OWN_KIB q1_maps=$maps
measure_settled minivmm
m1=$INIT_MS m1_own=$OWN_KIB m1_maps=$maps
measure_settled minivmm
m2=$INIT_MS m2_own=$OWN_KIB m2_maps=$maps
measure_settled qemu
report qemu "$q1" "$INIT_MS" "$q1_own" "$OWN_KIB" "$q1_maps" "$maps"
q_init=$MEAN_MS q_own=$MAX_OWN
report minivmm "$m1" "$m2" "$m1_own" "$m2_own" "$m1_maps" "$m2_maps"
echo "LAB:BENCH ratio_time=$(ratio "$MEAN_MS" "$q_init") ratio_mem=$(ratio "$MAX_OWN" "$q_own")"
[ "$q_init" != NA ] && [ "$MEAN_MS" != NA ]
