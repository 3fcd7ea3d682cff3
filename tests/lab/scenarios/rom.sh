# VBIOS paths: L1's VGA ROM dumped with `minivmm rom dump` and described with `rom info`;
# L2 gets VGA with its own ROM passed through, and bochs-display (which has no ROM, like a
# laptop dGPU) with that image served by minivmm (`rom=`): L2 reads both ROMs back through
# sysfs, and finds the VFCT table with bochs-display's address. Then bad ROM inputs.
. /lab/lab.sh
status=0

vga=0000:00:02.0
bochs=0000:00:07.0
echo 1 > /sys/bus/pci/devices/$vga/enable
minivmm rom dump $vga -o /tmp/vga.rom
echo "LAB:RESULT rom-dump rc=$?"
minivmm rom info /tmp/vga.rom | sed 's/^/LAB:ROMINFO /'
echo "LAB:L1ROM size=$(wc -c < /tmp/vga.rom) md5=$(md5sum < /tmp/vga.rom | cut -d' ' -f1)"
echo "LAB:L1ROM-BOCHS exists=$([ -e /sys/bus/pci/devices/$bochs/rom ] && echo 1 || echo 0)"

for d in $vga $bochs; do
  dir=/sys/bus/pci/devices/$d
  [ -e "$dir/driver" ] && echo "$d" > "$dir/driver/unbind"
  echo vfio-pci > "$dir/driver_override"
  echo "$d" > /sys/bus/pci/drivers_probe
done

echo "LAB:BEGIN rom"
timeout -s KILL "$VMM_TIMEOUT" minivmm --gpu $vga --gpu "$bochs,rom=/tmp/vga.rom" \
  --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" --cmdline "$L2_CMDLINE l2.devices=1" \
  --memory 256M --trace bar </dev/null 2>/tmp/vmm.err | tee /tmp/l2.log
rc=$?
echo
sed 's/^/LAB:VMM /' /tmp/vmm.err
echo "LAB:RESULT rom rc=$rc"
[ "$rc" = 0 ] || status=1

run="minivmm --kernel $L2_KERNEL --initramfs $L2_INITRD --memory 128M --serial none"
echo "not a rom" > /tmp/text.rom
head -c 1000 /tmp/vga.rom > /tmp/short.rom
bad rom-missing $run --gpu "$bochs,rom=/nonexistent.rom"
bad rom-unsigned $run --gpu "$bochs,rom=/tmp/text.rom"
bad rom-truncated $run --gpu "$bochs,rom=/tmp/short.rom"
bad rom-mismatch $run --gpu "$bochs,rom=/usr/share/seabios/vgabios-ati.bin"
bad rom-bad-option $run --gpu "$bochs,rom=/tmp/vga.rom,vbios=bios"
bad rom-extract-no-vfct minivmm rom extract -o /tmp/x.rom
exit $status
