# Preparing a host with minivmm's own tools: iommu-groups lists L1's devices with names;
# doctor fails on edu while edu is on a host driver (uio_pci_generic here) and passes after
# minivmm bind; unbind gives it back. Then --managed runs: the device moves to vfio-pci for
# the run and back to uio_pci_generic afterwards — after a normal end (edu), after SIGTERM
# (virtio-rng), and after a failed build (edu) — and --managed=group takes the other
# function of pci-testdev along; faults: a bad rom=, a panic, a seccomp kill and SIGTERM
# during the build, each still restoring the device; sandbox: the VM process's ids,
# capabilities and filters, and a sysfs write it cannot make.
# lab.part=tools|sigterm|group|faults|sandbox picks one part: each runs at
# most one guest, because L1's kernel has crashed (a stack overflow in a vCPU's KVM_RUN,
# at the start of the second guest) when one L1 ran several; see docs/ARCHITECTURE.md.
. /lab/lab.sh
status=0

# find_bdf VENDOR DEVICE: the first such function's address.
find_bdf() {
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = "$1" ] && [ "$(cat "$d/device")" = "$2" ] && { echo "${d##*/}"; return; }
  done
}

# show NAME COMMAND...: run it (bounded), print each output line as LAB:OUT NAME ... and
# then LAB:RC NAME rc=N.
show() {
  name=$1
  shift
  timeout -s KILL 120 "$@" </dev/null >/tmp/show.out 2>&1
  rc=$?
  sed "s/^/LAB:OUT $name /" /tmp/show.out
  echo "LAB:RC $name rc=$rc"
}

# driver NAME BDF: LAB:DRIVER NAME BDF=<driver or none>.
driver() {
  d=/sys/bus/pci/devices/$2/driver
  if [ -e "$d" ]; then drv=$(basename "$(readlink "$d")"); else drv=none; fi
  echo "LAB:DRIVER $1 $2=$drv"
}

edu=$(find_bdf 0x1234 0x11e8)
mf0=0000:00:05.0
mf1=0000:00:05.1
rng=0000:00:06.0
# Host drivers to take the devices from: uio_pci_generic by ID, as a native driver would.
echo "1234 11e8" > /sys/bus/pci/drivers/uio_pci_generic/new_id
echo "1b36 0005" > /sys/bus/pci/drivers/uio_pci_generic/new_id
echo "1af4 1044" > /sys/bus/pci/drivers/uio_pci_generic/new_id
driver start "$edu"
driver start "$mf1"
driver start "$rng"

# managed_run NAME BDF L2_ARGS [SIGNAL]: a --managed run with that device, L2 holding on
# its console; once L2 holds, report the device's driver (and send SIGNAL, if given), then
# the exit status and the driver after minivmm ended.
managed_run() {
  echo "LAB:BEGIN $1"
  : > /tmp/l2.log
  minivmm --managed --gpu "$2" --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" \
    --cmdline "$L2_CMDLINE $3" --memory 256M --serial file:/tmp/l2.log </dev/null 2>/tmp/vmm.err &
  pid=$!
  wait_for /tmp/l2.log L2:HOLD $pid $(( $(now_ms) + 100000 )) >/dev/null || echo "LAB:NO-HOLD $1"
  driver "during-$1" "$2"
  [ -n "$4" ] && kill "-$4" $pid
  wait $pid
  rc=$?
  grep "L2:EDU-ID" /tmp/l2.log | head -n 1
  sed 's/^/LAB:VMM /' /tmp/vmm.err
  echo "LAB:RESULT $1 rc=$rc"
  driver "after-$1" "$2"
}

part=$(lab_param part tools)
echo "LAB:PART $part"
case $part in
tools)
  show groups minivmm iommu-groups
  # JSON: count what scripts would look for, rather than print it all.
  minivmm iommu-groups --json > /tmp/groups.json
  echo "LAB:GROUPS-JSON addresses=$(grep -c '"address"' /tmp/groups.json) edu=$(grep -c "\"address\": \"$edu\"" /tmp/groups.json)"
  show doctor-before minivmm doctor "$edu"
  minivmm doctor --json "$edu" > /tmp/doctor.json
  echo "LAB:DOCTOR-JSON rc=$? ready=$(sed -n 's/.*"ready": \([a-z]*\).*/\1/p' /tmp/doctor.json) fails=$(grep -c '"status": "fail"' /tmp/doctor.json)"
  show doctor-vga minivmm doctor "$(find_bdf 0x1234 0x1111)" 0000:00:07.0
  show bind minivmm bind "$edu"
  driver bound "$edu"
  show doctor-after minivmm doctor "$edu"
  show unbind minivmm unbind "$edu"
  driver unbound "$edu"

  # A build that fails after the binding (more vCPUs than KVM allows): edu goes back.
  show managed-error minivmm --managed --gpu "$edu" --kernel "$L2_KERNEL" --cpus 9999
  driver after-error "$edu"
  # A kernel that does not exist is found before anything is bound.
  show managed-no-kernel minivmm --managed --gpu "$edu" --kernel /nonexistent
  driver after-no-kernel "$edu"

  # pci-testdev's two functions share a group and both sit on uio_pci_generic: --managed
  # moves only the one named, so VFIO refuses the group; --managed=group moves both.
  show doctor-group minivmm doctor "$mf0"
  show managed-not-viable minivmm --managed --gpu "$mf0" --kernel "$L2_KERNEL" \
    --initramfs "$L2_INITRD" --memory 256M --serial none
  driver after-not-viable "$mf0"
  driver after-not-viable "$mf1"
  # A normal run: edu is on vfio-pci while L2 uses it, and back on uio_pci_generic after.
  managed_run managed-run "$edu" "l2.devices=id l2.hold=3"
;;
sigterm)
  # SIGTERM while L2 holds: minivmm stops the guest and still gives the device back.
  managed_run managed-sigterm "$rng" "l2.hold=120" TERM
;;
group)
  show managed-group minivmm --managed=group --gpu "$mf0" --kernel "$L2_KERNEL" \
    --initramfs "$L2_INITRD" --memory 256M --serial none
  driver after-group "$mf0"
  driver after-group "$mf1"
;;
faults)
  # Every way the VM process can end badly still ends with edu back on uio_pci_generic:
  # the supervising process gives it back. No guest boots here (each fault comes before
  # the guest's first instruction, and the SIGTERM during the build).
  echo "not a ROM" > /tmp/bad.rom
  show managed-bad-rom minivmm --managed --gpu "$edu,rom=/tmp/bad.rom" --kernel "$L2_KERNEL" \
    --initramfs "$L2_INITRD" --memory 256M --serial none
  driver after-bad-rom "$edu"
  show managed-panic env MINIVMM_TEST_FAULT=vcpu-panic minivmm --managed --gpu "$edu" \
    --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" --memory 256M --serial none
  driver after-panic "$edu"
  show managed-seccomp env MINIVMM_TEST_FAULT=vcpu-syscall minivmm --managed --gpu "$edu" \
    --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" --memory 256M --serial none
  driver after-seccomp "$edu"
  # SIGTERM while the kernel is still loading.
  minivmm --managed --gpu "$edu" --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" \
    --memory 256M --serial none </dev/null 2>/tmp/vmm.err &
  pid=$!
  usleep 300000
  driver during-build "$edu"
  kill -TERM $pid
  wait $pid
  echo "LAB:RESULT managed-sigterm-build rc=$?"
  sed 's/^/LAB:OUT managed-sigterm-build /' /tmp/vmm.err
  driver after-sigterm-build "$edu"
;;
sandbox)
  # The VM process of a --managed run: not root, no capabilities, seccomp filters; it
  # cannot write sysfs (MINIVMM_TEST_FAULT=write-sysfs tries, once the sandbox is up).
  echo "LAB:BEGIN managed-sandbox"
  : > /tmp/l2.log
  env MINIVMM_TEST_FAULT=write-sysfs minivmm --managed --gpu "$edu" --kernel "$L2_KERNEL" \
    --initramfs "$L2_INITRD" --cmdline "$L2_CMDLINE l2.devices=id l2.hold=5" --memory 256M \
    --serial file:/tmp/l2.log </dev/null 2>/tmp/vmm.err &
  pid=$!
  wait_for /tmp/l2.log L2:HOLD $pid $(( $(now_ms) + 100000 )) >/dev/null || echo "LAB:NO-HOLD managed-sandbox"
  # The VM process: the child of minivmm's (field 4 of /proc/PID/stat is the parent).
  vm=$(for st in /proc/[0-9]*/stat; do
    read -r p _ _ parent _ < "$st" 2>/dev/null && [ "$parent" = "$pid" ] && echo "$p"
  done | head -n 1)
  for who in supervisor:$pid vm:$vm; do
    grep -E '^(Uid|CapEff|NoNewPrivs|Seccomp):' "/proc/${who#*:}/status" | tr -s ' \t' ' ' |
      sed "s/^/LAB:STATUS ${who%%:*} /"
  done
  driver during-sandbox "$edu"
  wait $pid
  rc=$?
  grep "L2:EDU-ID" /tmp/l2.log | head -n 1
  sed 's/^/LAB:VMM /' /tmp/vmm.err
  echo "LAB:RESULT managed-sandbox rc=$rc"
  driver after-sandbox "$edu"
;;
esac
exit $status
