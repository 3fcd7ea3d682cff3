# lab-needs: sole-vga
# Legacy VGA (issue 16): L1's std VGA (1234:1111, L1's boot display, in the text mode
# SeaBIOS and L1's vgacon left) passed to minivmm with vga=on. This L1 has no ati-vga
# (sole-vga): QEMU would give it the legacy ranges too, and it would answer them. A picture
# of the VGA first shows L1's own text. L2 boots with console=tty0 besides its serial
# console: its kernel's vgacon drives the VGA through the legacy ranges minivmm routes to
# VFIO's VGA region, so L2's boot text appears on L1's screen. L2 then writes known words
# to its tty1 and says L2:SCREEN-READY; L1 asks the harness for a picture of the VGA
# (LAB:SCREENSHOT) and tells L2 to go on.
. /lab/lab.sh
status=0
vga=0000:00:02.0
d=/sys/bus/pci/devices/$vga

# The control port: the harness answers each LAB:SCREENSHOT on ttyS1.
stty -F /dev/ttyS1 -echo
exec 5< /dev/ttyS1
# L1's own text on the VGA, before minivmm has it.
shot l1-text vga
[ -e "$d/driver" ] && echo "$vga" > "$d/driver/unbind"
echo vfio-pci > "$d/driver_override"
echo "$vga" > /sys/bus/pci/drivers_probe
echo "LAB:BOUND $vga driver=$(basename "$(readlink "$d/driver")")"

echo "LAB:BEGIN vga"
rm -f /tmp/in && mkfifo /tmp/in
: > /tmp/l2.log
# console=tty0 first: the kernel writes to both, and /dev/console stays the serial one.
timeout -s KILL "$VMM_TIMEOUT" minivmm --gpu "$vga,vga=on" --exit-stats \
  --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" \
  --cmdline "console=tty0 $L2_CMDLINE_MINIVMM l2.vga=1" --memory 256M \
  < /tmp/in > /tmp/l2.log 2>/tmp/vmm.err &
pid=$!
exec 3> /tmp/in
served=0
while alive "$pid"; do
  if [ "$served" = 0 ] && grep -q "L2:SCREEN-READY" /tmp/l2.log; then
    served=1
    shot vgacon vga
    echo "$answer" >&3
  fi
  usleep 100000
done
end_vmm "$pid"
echo "LAB:RESULT vga rc=$rc"
[ "$rc" = 0 ] || status=1
exit $status
