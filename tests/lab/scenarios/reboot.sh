# Guest reboots (issue 16): one minivmm run in which L2 reboots twice and powers off the
# third time, with edu (on L1's bus 0: no reset at all) and bochs-display with its HD Audio
# function (behind L1's root port 0a.0, one group, no function reset: reset through the
# bus). Each boot drives edu again (ID, factorial, DMA, MSI, INTx). L2 asks on its console
# whether to reboot (L2:REBOOT-ASK); this script answers through minivmm's stdin.
. /lab/lab.sh
status=0
edu=0000:00:01.0
bochs=0000:02:00.0
audio=0000:02:00.1
for b in $edu $bochs $audio; do
  d=/sys/bus/pci/devices/$b
  [ -e "$d/driver" ] && echo "$b" > "$d/driver/unbind"
  echo vfio-pci > "$d/driver_override"
  echo "$b" > /sys/bus/pci/drivers_probe
  echo "LAB:BOUND $b driver=$(basename "$(readlink "$d/driver")")"
done
for b in $edu $bochs; do
  minivmm doctor "$b" 2>&1 | grep -E "^  [a-z]+ +reset " | sed "s/^/LAB:RESET-DOCTOR $b /"
done

# lab.trace=1: L1's KVM trace events, their tail printed if a boot gets stuck.
tracing=/sys/kernel/tracing
if [ "$(lab_param trace 0)" = 1 ]; then
  mount -t tracefs nodev "$tracing" 2>/dev/null
  echo 2048 > "$tracing/buffer_size_kb"
  echo 1 > "$tracing/events/kvm/enable"
fi
echo "LAB:BEGIN reboot"
rm -f /tmp/in && mkfifo /tmp/in
: > /tmp/l2.log
# rom=none: bochs-display has no VBIOS anywhere, and the warning that says so is not
# what this test is about.
gpus="--gpu $edu --gpu $bochs,rom=none --gpu $audio"
[ "$(lab_param gpus on)" = off ] && gpus=
# lab.huge=2M|1G (a probe; the test runs without): guest RAM from L1's huge pages of that
# size, reserved here (1G: by L1's kernel command line, see tests/src/lab/mod.rs), so a
# reboot must punch them out of their memfd and start clean.
mem=256M
huge=$(lab_param huge "")
if [ -n "$huge" ]; then
  case $huge in
  1G) pool=hugepages-1048576kB pages=1 mem=1G ;;
  *) pool=hugepages-2048kB pages=128 ;;
  esac
  echo "$pages" > "/sys/kernel/mm/hugepages/$pool/nr_hugepages"
  echo "LAB:HUGEPAGES size=$huge reserved=$(cat "/sys/kernel/mm/hugepages/$pool/nr_hugepages") wanted=$pages"
  mem="$mem,hugepages=on,hugepage-size=$huge"
fi
# shellcheck disable=SC2086
RUST_LOG=warn,minivmm::passthrough::reset=info,minivmm::reboot=debug,minivmm::vcpu=info \
  timeout -s KILL 800 minivmm $gpus --exit-stats \
  --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" \
  --cmdline "$L2_CMDLINE_MINIVMM l2.devices=1 l2.reboot=1 memmap=1M\$0x8000000" --memory "$mem" \
  < /tmp/in > /tmp/l2.log 2>/tmp/vmm.err &
pid=$!
exec 3> /tmp/in
answered=0
shown=0
# L2's console goes to L1's as it comes (a slow L1 must not look silent to the watchdog).
show_new() {
  total=$(wc -l < /tmp/l2.log)
  [ "$total" -gt "$shown" ] && sed -n "$((shown + 1)),${total}p" /tmp/l2.log
  shown=$total
}
# A boot that does not ask within 240 s is stuck (a boot takes 10-30 s in a usual L1, and
# slow L1s have been seen at a fifth of that speed): say where it was and end the run.
stuck_after=240000
deadline=$(( $(now_ms) + stuck_after ))
while alive "$pid"; do
  show_new
  asked=$(grep -c "L2:REBOOT-ASK" /tmp/l2.log)
  if [ "$asked" -gt "$answered" ]; then
    answered=$((answered + 1))
    if [ "$answered" -lt 3 ]; then answer=reboot; else answer=poweroff; fi
    echo "LAB:ANSWER $answered $answer"
    echo "$answer" >&3
    deadline=$(( $(now_ms) + stuck_after ))
  fi
  # With lab.trace=1, what KVM saw in the 2 s after each "Restarting system".
  restarts=$(grep -c "Restarting system" /tmp/l2.log)
  if [ "$restarts" -gt "${traced:-0}" ] && [ -e "$tracing/events/kvm/enable" ]; then
    traced=$restarts
    usleep 2000000
    echo 0 > "$tracing/events/kvm/enable"
    grep -v "kvm_write_tsc_offset\|kvm_pvclock_update\|kvm_fpu\|kvm_pv_tlb\|kvm_entry" "$tracing/trace" > /tmp/trace
    last=$(grep -n "gpa 0xfe000000\|0xfe000000 " /tmp/trace | tail -n 1 | cut -d: -f1)
    tail -n +"${last:-1}" /tmp/trace |
      grep "kvm_pio\|reason shutdown\|reason hlt\|kvm_inj_exception\|kvm_msr\|kvm_userspace_exit\|reason io\|reason intr\|kvm_apic_ipi\|reason invalid\|reason cr\|reason exception\|ERR" |
      head -n 100 | sed 's/^/LAB:TRACE /'
    echo 1 > "$tracing/events/kvm/enable"
  fi
  if [ "$(now_ms)" -gt "$deadline" ]; then
    # SIGTERM first: minivmm then says where each vCPU was and what exited most.
    echo "LAB:STUCK after answer $answered"
    kill -TERM "$pid"
    usleep 10000000
    alive "$pid" && kill -9 "$pid"
  fi
  usleep 100000
done
wait "$pid"
rc=$?
exec 3>&-
show_new
# The rest, an unfinished last line included.
sed -n "$((shown + 1)),\$p" /tmp/l2.log
echo
sed 's/^/LAB:VMM /' /tmp/vmm.err
echo "LAB:RESULT reboot rc=$rc boots=$(grep -c L2:INIT /tmp/l2.log)"
[ "$rc" = 0 ] || status=1
exit $status
