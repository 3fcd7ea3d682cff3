# lab-needs: display
# lab-needs: lspci
# lab-needs: big-bar
# The machine a GPU expects (issue 14), in one L2: L1's devices behind L1's PCIe root ports
# (virtio-gpu at 01:00.0; bochs-display with its HD Audio function at 02:00.0/.1), a
# three-function pci-testdev passed without its function 0, VGA with its own ROM, ivshmem
# with an 8 GiB BAR, and edu with bus=root. L2 (l2-machine) reports its PCI tree, links,
# bandwidth, an unbound ROM, the big BAR, its drivers, and lights both displays; L1 asks the
# harness for a picture of each (LAB:SCREENSHOT) and tells L2 to go on. Before the guest
# starts, minivmm resets each device the way it can (bochs-display through its bus).
. /lab/lab.sh
status=0

virtio_gpu=0000:01:00.0
bochs=0000:02:00.0
audio=0000:02:00.1
vga=0000:00:02.0
big=0000:00:0c.0
edu=0000:00:01.0
testdev1=0000:00:0b.1
testdev2=0000:00:0b.2

# L1's view, to compare with L2's: the links of the ports above the displays and of the
# displays, and what pcie_bandwidth_available() says about each display.
speed() { cut -d' ' -f1 < "$1/$2"; }
for b in 0000:00:09.0 0000:00:0a.0 $virtio_gpu $bochs; do
  d=/sys/bus/pci/devices/$b
  echo "LAB:L1LINK $b max=$(speed "$d" max_link_speed)x$(cat "$d/max_link_width") current=$(speed "$d" current_link_speed)x$(cat "$d/current_link_width")"
done
for b in $virtio_gpu $bochs; do
  if insmod /lab/link_probe.ko bdf=$b; then
    p=/sys/module/link_probe/parameters
    echo "LAB:L1BW $b mbps=$(cat $p/mbps) speed=$(cat $p/speed) width=$(cat $p/width) limit=$(cat $p/limit)"
    rmmod link_probe
  fi
done
# VGA's own ROM, as L1 reads it: L2 must read the same bytes.
echo 1 > /sys/bus/pci/devices/$vga/enable
minivmm rom dump $vga -o /tmp/vga.rom
echo "LAB:L1ROM $vga size=$(wc -c < /tmp/vga.rom) md5=$(md5sum < /tmp/vga.rom | cut -d' ' -f1)"
echo 0 > /sys/bus/pci/devices/$vga/enable

for b in $virtio_gpu $bochs $audio $vga $big $edu $testdev1 $testdev2; do
  d=/sys/bus/pci/devices/$b
  [ -e "$d/driver" ] && echo "$b" > "$d/driver/unbind"
  echo vfio-pci > "$d/driver_override"
  echo "$b" > /sys/bus/pci/drivers_probe
  echo "LAB:BOUND $b driver=$(basename "$(readlink "$d/driver")") group=$(basename "$(readlink "$d/iommu_group")")"
done

# The reset each device gets (issue 16), as doctor names it: bochs-display shares its bus
# with the audio function and has neither FLR nor a PM reset, so only a bus reset through
# its root port resets it; edu on L1's bus 0 has no reset at all.
for b in $bochs $virtio_gpu $edu; do
  minivmm doctor "$b" 2>&1 | grep -E "^  [a-z]+ +reset " | sed "s/^/LAB:RESET-DOCTOR $b /"
done

# The control port: the harness answers each LAB:SCREENSHOT on ttyS1. Opened once, before
# the first request, so no answer arrives while nothing reads it.
stty -F /dev/ttyS1 -echo
exec 5< /dev/ttyS1

echo "LAB:BEGIN gpu-machine"
rm -f /tmp/in && mkfifo /tmp/in
: > /tmp/l2.log
# The resets minivmm does before the guest starts are logged at info level.
RUST_LOG=warn,minivmm::passthrough::reset=info timeout -s KILL "$VMM_TIMEOUT" minivmm \
  --gpu $bochs --gpu $audio --gpu $virtio_gpu --gpu $testdev1 --gpu $testdev2 \
  --gpu $vga --gpu $big --gpu $edu,bus=root \
  --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" \
  --cmdline "$L2_CMDLINE_MINIVMM l2.machine=1 fbcon=font:TER16x32" --memory 256M \
  --exit-stats < /tmp/in > /tmp/l2.log 2>/tmp/vmm.err &
pid=$!
exec 3> /tmp/in
# Serve L2's screens; its console goes to L1's afterwards (not interleaved with L1's lines).
served=0
while alive "$pid"; do
  ready=$(grep -c "L2:SCREEN-READY" /tmp/l2.log)
  if [ "$ready" -gt "$served" ]; then
    served=$((served + 1))
    line=$(grep "L2:SCREEN-READY" /tmp/l2.log | sed -n "${served}p")
    name=$(echo "$line" | sed -n 's/.*name=\([^ ]*\).*/\1/p')
    case $name in bochs) device=lit ;; virtio) device=vgpu ;; *) device=none ;; esac
    shot "$name" "$device"
    echo "$answer" >&3
  fi
  usleep 100000
done
end_vmm "$pid"
grep -q L2:POWEROFF /tmp/l2.log && l2=poweroff || l2=incomplete
echo "LAB:RESULT gpu-machine rc=$rc l2=$l2"
[ "$rc" = 0 ] && [ "$l2" = poweroff ] || status=1

# A 64-bit BAR that cannot fit below the address limit is refused before anything is
# opened: with 1 TiB of addresses (L1's 40 bits), 1020 GiB of RAM leaves no room for 8 GiB.
bad big-bar-no-room minivmm --gpu $big --kernel "$L2_KERNEL" --memory 1020G --serial none
exit $status
