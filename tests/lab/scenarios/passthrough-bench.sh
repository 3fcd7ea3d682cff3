# lab-needs: two-cpus
# lab-needs: qemu
# The passthrough benchmark against QEMU, one run in one L1: edu on vfio-pci, the same L2
# kernel and initramfs, at 256M and at 1G of guest RAM (lab.mem=...; a size with +huge,
# like 3G+huge, backs guest RAM with L1's 2 MiB huge pages under both VMMs: QEMU's
# memory-backend-memfd with hugetlb=on, minivmm's --memory SIZE,hugepages=on). For each VMM and size: the time
# from starting the VMM to L2 having used the device (the L2:EDU-ID marker: ID register
# read through BAR0, after turning bus mastering on, which minivmm holds until guest RAM is
# DMA-mapped: QEMU maps before its guest starts, minivmm beside the booting guest). Then each VMM once more under
# strace, only to time its VFIO_IOMMU_MAP_DMA ioctls (the same measure for both; the run is
# stopped once the guest starts).
. /lab/lab.sh
VMM_TIMEOUT=90
# Each VMM with its own serial console (QEMU's COM1, minivmm's MMIO console UART).
CMDLINE="$L2_CMDLINE l2.devices=id"
MINIVMM_CMDLINE="$L2_CMDLINE_MINIVMM l2.devices=id"

d=$(for d in /sys/bus/pci/devices/*; do
  [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ] && echo "$d"; done)
edu=${d##*/}
echo vfio-pci > "$d/driver_override"
echo "$edu" > /sys/bus/pci/drivers_probe
echo "LAB:BOUND $edu driver=$(basename "$(readlink "$d/driver")")"

# Set to a strace command line to trace the next VMM started.
TRACE=

# huge_pages SIZE: reserve L1's 2 MiB pages for SIZE (+huge) or give them back; sets MEM to
# the size and QEMU_RAM / MINIVMM_RAM to each VMM's memory options.
huge_pages() {
  MEM=${1%+huge}
  if [ "$MEM" = "$1" ]; then
    echo 0 > /proc/sys/vm/nr_hugepages
    QEMU_RAM="-m $MEM"
    MINIVMM_RAM="$MEM"
    return
  fi
  bytes=$(( ${MEM%G} << 30 ))
  echo $(( bytes >> 21 )) > /proc/sys/vm/nr_hugepages
  echo "LAB:HUGEPAGES size=$MEM reserved=$(cat /proc/sys/vm/nr_hugepages) wanted=$(( bytes >> 21 ))"
  QEMU_RAM="-m $MEM -object memory-backend-memfd,id=ram,size=$MEM,hugetlb=on,hugetlbsize=2M -machine memory-backend=ram"
  MINIVMM_RAM="$MEM,hugepages=on"
}

start_qemu() {
  # shellcheck disable=SC2086
  $TRACE qemu-system-x86_64 -accel kvm -cpu host -machine q35 $QEMU_RAM -smp 1 -nodefaults \
    -display none -monitor none -no-reboot -serial "file:$1" \
    -device vfio-pci,host="$edu" \
    -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$CMDLINE" </dev/null >"$1.err" 2>&1 &
}

start_minivmm() {
  $TRACE minivmm -v --gpu "$edu" --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" --cmdline "$MINIVMM_CMDLINE" \
    --memory "$MINIVMM_RAM" --serial stdio </dev/null >"$1" 2>"$1.err" &
}

# measure NAME SIZE: LAB:PTBENCH vmm=NAME mem=SIZE usable_ms=N dma_ms=N prefault_ms=N
# (minivmm's own log of its DMA map and its prefault before it; NA for QEMU)
measure() {
  log=/tmp/$1-$2.console
  : > "$log"
  t0=$(now_ms)
  "start_$1" "$log" "$2"
  pid=$!
  usable=NA
  if t1=$(wait_for "$log" L2:EDU-ID "$pid" $((t0 + VMM_TIMEOUT * 1000))); then
    usable=$((t1 - t0))
  fi
  # L2 powers off right after the read; a VMM killed while its guest drives the device
  # leaves the device mid-interrupt for the next one (and L1's nested KVM has crashed on
  # that), so each run ends by itself unless it is stuck.
  deadline=$(( $(now_ms) + 30000 ))
  # A guest that never got there is stuck already: waiting longer would leave L1's console
  # silent past the harness's 150 s, and L1 killed with nothing said.
  [ "$usable" = NA ] && deadline=$(now_ms)
  while alive "$pid" && [ "$(now_ms)" -lt "$deadline" ]; do usleep 100000; done
  # SIGTERM first: a stuck minivmm then logs where its vCPU was (-v).
  alive "$pid" && { kill "$pid"; usleep 500000; }
  kill -9 "$pid" 2>/dev/null
  wait "$pid"
  grep -a "L2:EDU-ID" "$log" | head -n 1 | sed "s/^/[$1 $2] /"
  # A guest that never got there: how far it came, and what the VMM said.
  [ "$usable" = NA ] && tail -n 5 "$log" "$log.err" | sed "s/^/LAB:FLAKE-LOG [$1 $2] /"
  dma=$(sed -n 's/.*DMA-mapped [0-9]* MiB of guest RAM in \([0-9.]*\) ms.*/\1/p' "$log.err")
  prefault=$(sed -n 's/.*prefaulted guest RAM on [0-9]* thread(s) in \([0-9.]*\) ms.*/\1/p' "$log.err")
  echo "LAB:PTBENCH vmm=$1 mem=$2 usable_ms=$usable dma_ms=${dma:-NA} prefault_ms=${prefault:-NA}"
  USABLE=$usable
}

# dma_time NAME SIZE: LAB:PTDMA vmm=NAME mem=SIZE map_ms=N calls=N, from strace -T.
dma_time() {
  log=/tmp/$1-$2.traced
  : > "$log"
  TRACE="strace -f -T -e trace=ioctl -o /tmp/$1-$2.strace"
  "start_$1" "$log" "$2"
  tracer=$!
  TRACE=
  # QEMU maps all of guest RAM before its guest runs: the first console byte means done.
  # minivmm maps beside the booting guest and logs when it is done (-v).
  if [ "$1" = minivmm ]; then
    wait_for "$log.err" "DMA-mapped" "$tracer" $(( $(now_ms) + VMM_TIMEOUT * 1000 )) >/dev/null
  else
    wait_for "$log" . "$tracer" $(( $(now_ms) + VMM_TIMEOUT * 1000 )) >/dev/null
  fi
  for child in $(cat /proc/$tracer/task/*/children 2>/dev/null); do kill -9 "$child"; done
  wait "$tracer"
  # With several threads strace splits a call that another thread interrupts into
  # "PID ioctl(..., VFIO_IOMMU_MAP_DMA, ... <unfinished ...>" and a later
  # "PID <... ioctl resumed>) = 0 <SECONDS>": the time is on the second line.
  set -- "$1" "$2" $(awk '
    function add(t) { gsub(/[<>]/, "", t); s += t }
    /VFIO_IOMMU_MAP_DMA|_IOC\(_IOC_NONE, 0x3b, 0x71/ {
      n++
      if ($0 ~ /<unfinished \.\.\.>$/) pending[$1] = 1; else add($NF)
      next
    }
    /<\.\.\. ioctl resumed>/ && ($1 in pending) { delete pending[$1]; add($NF) }
    END { printf "%.1f %d\n", s * 1000, n }' "/tmp/$1-$2.strace")
  echo "LAB:PTDMA vmm=$1 mem=$2 map_ms=$3 calls=$4"
}

status=0
# lab.mem picks the sizes (the test runs one size per L1: fewer VMM starts per L1).
for mem in $(lab_param mem 256M,1G | tr , ' '); do
  huge_pages "$mem"
  measure qemu $mem
  q=$USABLE
  [ "$q" = NA ] && { echo "LAB:FLAKE qemu $mem; once more"; measure qemu $mem; q=$USABLE; }
  measure minivmm $mem
  m=$USABLE
  [ "$m" = NA ] && { echo "LAB:FLAKE minivmm $mem; once more"; measure minivmm $mem; m=$USABLE; }
  echo "LAB:PTBENCH mem=$mem ratio_usable=$(ratio "$m" "$q")"
  # Once each (every VMM start in this lab risks its nested-paging failure; the two maps
  # differ twentyfold or more, far beyond the order's effect on L1's allocator).
  dma_time qemu $mem
  dma_time minivmm $mem
  [ "$q" != NA ] && [ "$m" != NA ] || status=1
done
exit $status
