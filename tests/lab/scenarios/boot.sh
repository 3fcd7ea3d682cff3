# Boots L2 under minivmm with each vCPU count in lab.cpus (default 1,2) and records
# minivmm's exit code. L2's own markers (L2:INIT ...) come through on the console.
# One vCPU gets 256M and minivmm's default console (the MMIO console UART, with its exit
# counts); more get 3200M, so that guest RAM is split around the 32-bit hole (3 GiB below
# it, 128 MiB above 4 GiB), and the console on COM1.
. /lab/lab.sh
set -o pipefail
status=0
for n in $(lab_param cpus 1,2 | tr , ' '); do
  echo "LAB:BEGIN boot-cpus=$n"
  mem=256M cmdline=$L2_CMDLINE_MINIVMM stats=--exit-stats
  [ "$n" = 1 ] || { mem=3200M cmdline=$L2_CMDLINE stats=; }
  timeout -s KILL "$VMM_TIMEOUT" minivmm $stats --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" \
    --cmdline "$cmdline" --memory $mem --cpus "$n" --serial stdio </dev/null 2>&1 | tee /tmp/l2.log
  rc=$?
  grep -q L2:POWEROFF /tmp/l2.log && l2=poweroff || l2=incomplete
  echo
  echo "LAB:RESULT boot-cpus=$n rc=$rc l2=$l2"
  [ "$rc" = 0 ] && [ "$l2" = poweroff ] || status=1
done

# Console input, on each UART: L1 writes a line to minivmm's stdin once L2 waits for it;
# L2 echoes it.
for console in com1 uart; do
  echo "LAB:BEGIN console-input-$console"
  cmdline=$L2_CMDLINE
  [ "$console" = uart ] && cmdline=$L2_CMDLINE_MINIVMM
  rm -f /tmp/in && mkfifo /tmp/in
  : > /tmp/out
  timeout -s KILL "$VMM_TIMEOUT" minivmm --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" \
    --cmdline "$cmdline l2.echo=1" --memory 256M < /tmp/in > /tmp/out &
  pid=$!
  exec 3> /tmp/in
  until grep -q L2:WAITING-FOR-INPUT /tmp/out; do
    kill -0 "$pid" 2>/dev/null || break
    usleep 100000
  done
  echo "ping-from-l1" >&3
  wait "$pid"
  rc=$?
  exec 3>&-
  cat /tmp/out
  echo
  echo "LAB:RESULT console-input-$console rc=$rc"
  [ "$rc" = 0 ] || status=1
done

# The exit device: L2 ends by writing 3 to port 0xf4 (l2.exit=3), and minivmm exits 3.
echo "LAB:BEGIN exit-device"
timeout -s KILL "$VMM_TIMEOUT" minivmm --exit-device port=0xf4 --kernel "$L2_KERNEL" \
  --initramfs "$L2_INITRD" --cmdline "$L2_CMDLINE_MINIVMM l2.exit=3" --memory 256M \
  </dev/null >/tmp/out 2>/tmp/err
rc=$?
cat /tmp/out
echo
sed 's/^/LAB:VMM /' /tmp/err
echo "LAB:RESULT exit-device rc=$rc"
[ "$rc" = 3 ] || status=1
exit $status
