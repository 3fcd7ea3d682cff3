# lab-needs: disk
# Passes L1's edu and VGA devices through to L2 with minivmm: binds them to vfio-pci, boots
# L2 from its root disk (virtio-blk, root=/dev/vda; its l2-devices script drives the
# devices), and records minivmm's exit code, its exit statistics and its --trace bar,irq
# lines. Then the clean-error cases: a device not on
# vfio-pci, an address with no device, no permission on /dev/vfio/N, a device in use.
. /lab/lab.sh
set -o pipefail
status=0

# bind_vfio VENDOR DEVICE: move the first such function to vfio-pci; print its address.
bind_vfio() {
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = "$1" ] && [ "$(cat "$d/device")" = "$2" ] || continue
    bdf=${d##*/}
    [ -e "$d/driver" ] && echo "$bdf" > "$d/driver/unbind"
    echo vfio-pci > "$d/driver_override"
    echo "$bdf" > /sys/bus/pci/drivers_probe
    echo "$bdf"
    return
  done
}

# bind_bdf BDF: move that function to vfio-pci.
bind_bdf() {
  d=/sys/bus/pci/devices/$1
  [ -e "$d/driver" ] && echo "$1" > "$d/driver/unbind"
  echo vfio-pci > "$d/driver_override"
  echo "$1" > /sys/bus/pci/drivers_probe
}

edu=$(bind_vfio 0x1234 0x11e8)
vga=$(bind_vfio 0x1234 0x1111)
# The two functions of pci-testdev share an IOMMU group: both go, and stay one device.
mf0=0000:00:05.0
mf1=0000:00:05.1
bind_bdf $mf0
bind_bdf $mf1
# virtio-rng: MSI-X (its table page traps) and a 64-bit prefetchable BAR.
rng=0000:00:06.0
bind_bdf $rng
for d in $edu $vga $mf0 $mf1 $rng; do
  echo "LAB:BOUND $d driver=$(basename "$(readlink /sys/bus/pci/devices/$d/driver)") group=$(basename "$(readlink /sys/bus/pci/devices/$d/iommu_group)")"
done

echo "LAB:BEGIN passthrough"
start=$(now_ms)
cp /lab/l2/root.img /tmp/root.img
timeout -s KILL "$VMM_TIMEOUT" minivmm --gpu "$edu" --gpu "$vga" --gpu $mf0 --gpu 00:05.1 --gpu $rng \
  --disk /tmp/root.img --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" \
  --cmdline "$L2_CMDLINE root=/dev/vda l2.devices=1 memmap=1M\$0x8000000" --memory 256M \
  --exit-stats --trace bar,irq </dev/null 2>/tmp/vmm.err | tee /tmp/l2.log
rc=$?
echo
sed 's/^/LAB:VMM /' /tmp/vmm.err
grep -q L2:POWEROFF /tmp/l2.log && l2=poweroff || l2=incomplete
echo "LAB:RESULT passthrough rc=$rc l2=$l2 ms=$(( $(now_ms) - start ))"
[ "$rc" = 0 ] && [ "$l2" = poweroff ] || status=1

# A mediated device, by its sysfs path: mbochs (the kernel's sample display device) needs
# no IOMMU; L2 finds it as a bochs display and writes its framebuffer.
echo "LAB:BEGIN mdev"
modprobe mdev && insmod /lab/mbochs.ko
uuid=83b8f4f2-509f-382f-3c1e-e6bfe0fa1001
type=$(ls -d /sys/class/mdev_bus/*/mdev_supported_types/*medium 2>/dev/null | head -n 1)
echo "$uuid" > "$type/create"
echo "LAB:MDEV type=${type##*/} group=$(basename "$(readlink /sys/bus/mdev/devices/$uuid/iommu_group)")"
timeout -s KILL "$VMM_TIMEOUT" minivmm --gpu "/sys/bus/mdev/devices/$uuid" \
  --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" --cmdline "$L2_CMDLINE l2.devices=1" \
  --memory 256M --exit-stats --trace pci,bar </dev/null 2>/tmp/vmm.err | tee /tmp/l2.log
rc=$?
echo
# --trace pci writes a line per configuration access: count them, show a few.
grep -v '^pci ' /tmp/vmm.err | sed 's/^/LAB:VMM /'
echo "LAB:TRACE-PCI lines=$(grep -c '^pci ' /tmp/vmm.err)"
grep '^pci 01:00.0 write .*reg=COMMAND' /tmp/vmm.err | head -n 2 | sed 's/^/LAB:TRACE /'
echo "LAB:RESULT mdev rc=$rc"
[ "$rc" = 0 ] || status=1
echo 1 > "/sys/bus/mdev/devices/$uuid/remove"

# Released: the devices are still on vfio-pci and their groups can be opened again.
for d in $edu $vga; do
  echo "LAB:AFTER $d driver=$(basename "$(readlink /sys/bus/pci/devices/$d/driver)")"
done

run="minivmm --kernel $L2_KERNEL --initramfs $L2_INITRD --memory 128M --serial none"

# A device on its host driver: give VGA back to bochs-drm if the kernel has it, otherwise
# use it unbound.
echo "$vga" > "/sys/bus/pci/devices/$vga/driver/unbind"
echo > "/sys/bus/pci/devices/$vga/driver_override"
bad not-bound $run --gpu "$vga"
bad no-such-device $run --gpu 0000:00:1e.7
bad bad-address $run --gpu 00:99.0
# No permission on /dev/vfio/N: an ordinary user who may use /dev/kvm.
chmod 666 /dev/kvm
bad no-permission run-as 1000 1000 $run --gpu "$edu"
# In use: a second minivmm while the first holds the group.
timeout -s KILL 120 $run -v --gpu "$edu" --cmdline "$L2_CMDLINE l2.hold=30" 2>/tmp/holder.err &
holder=$!
sleep 3
bad in-use $run --gpu "$edu"
# A group is viable only when every member is on vfio-pci (or on no driver): put one
# pci-testdev function on uio_pci_generic and ask for the other.
echo "$mf1" > /sys/bus/pci/drivers/vfio-pci/unbind
echo > /sys/bus/pci/devices/$mf1/driver_override
echo "1b36 0005" > /sys/bus/pci/drivers/uio_pci_generic/new_id
echo "LAB:MF1 driver=$(basename "$(readlink /sys/bus/pci/devices/$mf1/driver)")"
bad not-viable $run --gpu $mf0
kill "$holder" 2>/dev/null
wait "$holder"
rc=$?
echo "LAB:RESULT holder rc=$rc"
# Not stopped by the SIGTERM (the guest died first): where it was, from its -v lines.
[ "$rc" = 143 ] || sed 's/^/LAB:HOLDER /' /tmp/holder.err
# Released after SIGTERM: the group opens again.
bad reopen-after-sigterm $run --gpu "$edu" --cmdline "$L2_CMDLINE"

# A whole passthrough run as an ordinary user: /dev/kvm is open to all (above), the
# group's node is given to uid 1000, and the memlock limit (VFIO locks guest RAM) raised.
echo "LAB:BEGIN non-root"
group=$(basename "$(readlink /sys/bus/pci/devices/$edu/iommu_group)")
chown 1000:1000 "/dev/vfio/$group"
ulimit -l unlimited
: > /tmp/user-l2.log
chmod 666 /tmp/user-l2.log
timeout -s KILL "$VMM_TIMEOUT" run-as 1000 1000 minivmm --gpu "$edu" --kernel "$L2_KERNEL" \
  --initramfs "$L2_INITRD" --cmdline "$L2_CMDLINE l2.devices=id" --memory 128M \
  --serial file:/tmp/user-l2.log </dev/null 2>/tmp/user.err
rc=$?
grep -E "L2:EDU-ID|L2:POWEROFF" /tmp/user-l2.log
sed 's/^/LAB:VMM /' /tmp/user.err
echo "LAB:RESULT non-root rc=$rc"
chown 0:0 "/dev/vfio/$group"
exit $status
