# lab-needs: radeon
# lab-needs: vfct
# The laptop case with no extra flags. L1's firmware carries a VFCT table (QEMU's
# -acpitable), as a laptop's carries its dGPU's VBIOS; the ati-vga (1002:5159) at 00:08.0
# has no ROM. With lab.vfct=match the table's entry is an image for it (SeaBIOS's
# vgabios-ati.bin); with lab.vfct=other the entry at its address is for other IDs.
# `minivmm --gpu BDF` with no rom= then finds the image by itself (match) or says it found
# none (other); rom=none turns the lookup off and reproduces QEMU's "Unable to locate a
# BIOS ROM". doctor says what --gpu will do.
. /lab/lab.sh
ati=0000:00:08.0
dir=/sys/bus/pci/devices/$ati
vfct=/sys/firmware/acpi/tables/VFCT
echo "LAB:L1-VFCT bytes=$(wc -c < "$vfct" 2>/dev/null || echo 0)"
[ -e "$dir/driver" ] && echo "$ati" > "$dir/driver/unbind"
echo vfio-pci > "$dir/driver_override"
echo "$ati" > /sys/bus/pci/drivers_probe
echo "LAB:BOUND $ati driver=$(basename "$(readlink "$dir/driver")")"
minivmm doctor "$ati" 2>&1 | sed 's/^/LAB:DOCTOR /'
CMDLINE="$L2_CMDLINE l2.radeon=1 drm.debug=0x1"
# As in the radeon scenario: --no-reboot, and the markers decide, not the exit.
echo "LAB:BEGIN laptop-auto"
run_until_bios laptop-auto minivmm --no-reboot --gpu "$ati" \
  --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" --cmdline "$CMDLINE" --memory 256M
if [ "$(lab_param vfct match)" = match ]; then
  echo "LAB:BEGIN laptop-none"
  run_until_bios laptop-none minivmm --no-reboot --gpu "$ati,rom=none" \
    --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" --cmdline "$CMDLINE" --memory 256M
fi
