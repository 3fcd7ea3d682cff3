# lab-needs: two-cpus
# lab-needs: qemu
# The failure-rate count of issue 15: n pairs of 2-vCPU boots of the same L2 kernel and
# initramfs (256M), QEMU (-accel kvm) and minivmm alternating (QEMU first in odd pairs,
# minivmm first in even ones), each VMM with its default console (QEMU's COM1, minivmm's
# console UART). A boot is good when L2 reports 2 CPUs and powers off, and the VMM exits 0,
# within the time limit. Every bad boot prints the end of its console and the VMM's stderr.
# lab.n=PAIRS (default 10); lab.mflags=... adds minivmm options (for bisecting); lab.trace=1
# records L1's KVM trace events during each boot and prints the last of them for a bad boot
# (what KVM did just before a guest shut down or hung: exits, injected interrupts and
# exceptions, with the vCPU's address at each exit).
. /lab/lab.sh
n=$(lab_param n 10)
mflags=$(lab_param mflags "" | tr '+' ' ')
trace=$(lab_param trace 0)
# lab.only=minivmm boots minivmm alone (more boots per L1); lab.huge=1 backs minivmm's
# guest RAM with L1's 2 MiB huge pages (--memory 256M,hugepages=on).
only=$(lab_param only both)
# lab.cpus=N gives each guest N vCPUs (default 2).
cpus=$(lab_param cpus 2)
# lab.pin=CPU runs each VMM (every thread of it) on that one L1 CPU.
pin=$(lab_param pin "")
pinned() { if [ -n "$pin" ]; then taskset -c "$pin" "$@"; else "$@"; fi; }
mem=256M
if [ "$(lab_param huge 0)" = 1 ]; then
  echo 128 > /proc/sys/vm/nr_hugepages
  echo "LAB:HUGEPAGES reserved=$(cat /proc/sys/vm/nr_hugepages)"
  mem=256M,hugepages=on
fi
VMM_TIMEOUT=90
tracing=/sys/kernel/tracing
if [ "$trace" = 1 ]; then
  mount -t tracefs nodev "$tracing" 2>/dev/null
  echo 512 > "$tracing/buffer_size_kb"
  echo 1 > "$tracing/events/kvm/enable"
fi

boot() {
  log=/tmp/ab.console
  : > "$log"
  [ "$trace" = 1 ] && : > "$tracing/trace"
  t0=$(now_ms)
  case $1 in
  qemu)
    pinned qemu-system-x86_64 -accel kvm -cpu host -machine q35 -m 256M -smp "$cpus" -nodefaults \
      -display none -monitor none -no-reboot -serial "file:$log" \
      -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$L2_CMDLINE" </dev/null >"$log.err" 2>&1 &
    ;;
  minivmm)
    # shellcheck disable=SC2086
    # --no-reboot, as QEMU's -no-reboot: a guest that triple-faults ends its run.
    pinned minivmm --no-reboot $mflags --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" \
      --cmdline "$L2_CMDLINE_MINIVMM" --memory "$mem" --cpus "$cpus" --serial stdio \
      </dev/null >"$log" 2>"$log.err" &
    ;;
  esac
  pid=$!
  deadline=$((t0 + VMM_TIMEOUT * 1000))
  t1=$(wait_for "$log" L2:POWEROFF "$pid" "$deadline") || t1=NA
  while alive "$pid"; do
    [ "$(now_ms)" -lt "$deadline" ] || kill -9 "$pid"
    usleep 50000
  done
  wait "$pid"
  rc=$?
  nproc=$(sed -n 's/.*L2:NPROC=\([0-9]*\).*/\1/p' "$log" | head -n 1)
  ok=1
  [ "$t1" != NA ] && [ "$rc" = 0 ] && [ "$nproc" = "$cpus" ] || ok=0
  echo "LAB:AB vmm=$1 pair=$2 ok=$ok rc=$rc nproc=${nproc:-NA} ms=$(( ${t1/NA/$(now_ms)} - t0 ))"
  [ "$trace" = 1 ] && echo "LAB:TRACED vmm=$1 pair=$2 events=$(grep -vc '^#' "$tracing/trace")"
  if [ "$ok" = 0 ]; then
    tail -n 25 "$log" | sed "s/^/LAB:FAILC $1 $2: /"
    tail -n 5 "$log.err" | sed "s/^/LAB:FAILE $1 $2: /"
    [ "$trace" = 1 ] && tail -n 80 "$tracing/trace" | sed "s/^/LAB:FAILT $1 $2: /"
  fi
}

# What L1's KVM runs with (probes set these through LAB_L1_ARGS, see the lab's README).
for f in /sys/module/kvm_amd/parameters/*; do
  printf '%s=%s ' "${f##*/}" "$(cat "$f" 2>/dev/null)"
done | sed 's/^/LAB:KVM_AMD /'
echo

for i in $(seq 1 "$n"); do
  if [ "$only" = minivmm ]; then
    boot minivmm "$i"
  elif [ $((i % 2)) = 1 ]; then
    boot qemu "$i"
    boot minivmm "$i"
  else
    boot minivmm "$i"
    boot qemu "$i"
  fi
done
echo "LAB:AB-DONE pairs=$n"
