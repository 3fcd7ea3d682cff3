# lab-needs: qemu
# lab-needs: radeon
# The motivating failure and its fix. ati-vga (rv100, 1002:5159, a Radeon the guest radeon
# driver claims) has no ROM, like a laptop dGPU. Passed through by QEMU, L2's radeon logs
# "Unable to locate a BIOS ROM". Passed through by minivmm with a suitable image (SeaBIOS's
# vgabios-ati.bin is for 1002:5159), radeon finds a BIOS — once through each path
# (vbios=vfct, vbios=rombar, vbios=setup, vbios=atrm), so the docs can say which path
# radeon takes.
. /lab/lab.sh
status=0
ati=0000:00:08.0
rom=/usr/share/seabios/vgabios-ati.bin
dir=/sys/bus/pci/devices/$ati
[ -e "$dir/driver" ] && echo "$ati" > "$dir/driver/unbind"
echo vfio-pci > "$dir/driver_override"
echo "$ati" > /sys/bus/pci/drivers_probe
echo "LAB:BOUND $ati driver=$(basename "$(readlink "$dir/driver")")"
CMDLINE="$L2_CMDLINE l2.radeon=1 drm.debug=0x1"
# The driver may hang the guest after BIOS discovery (or crash it: radeon goes on probing
# the half-emulated chip while L2 powers off; a triple fault has been seen), so minivmm
# runs with --no-reboot as QEMU with -no-reboot: each guest runs until L2 has said what
# radeon found (or 240 s: a slow L1 has taken over 60 s to get QEMU's guest that far), then
# 10 s more to power off, and is killed after that. The markers decide, not the exit.

# lab.paths=qemu,vfct,... picks the guests (default all five); the test runs one per L1, so
# that an L1 that dies costs one guest's run, not five.
paths=$(lab_param paths all)
[ "$paths" = all ] && paths=qemu,vfct,rombar,setup,atrm
for path in $(echo "$paths" | tr , ' '); do
  if [ "$path" = qemu ]; then
    echo "LAB:BEGIN radeon-qemu"
    run_until_bios radeon-qemu qemu-system-x86_64 -accel kvm -cpu host -machine q35 -m 256M \
      -nodefaults -display none -monitor none -no-reboot -serial stdio \
      -device vfio-pci,host=$ati -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$CMDLINE"
    continue
  fi
  echo "LAB:BEGIN radeon-minivmm-$path"
  run_until_bios "radeon-minivmm-$path" minivmm --no-reboot --gpu "$ati,rom=$rom,vbios=$path" \
    --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" --cmdline "$CMDLINE" --memory 256M
done
exit $status
