. /lab/lab.sh
d=/sys/bus/pci/devices/0000:00:01.0
echo vfio-pci > "$d/driver_override"; echo 0000:00:01.0 > /sys/bus/pci/drivers_probe
n=$(lab_param n 12)
opt=$(lab_param opt port)
[ "$opt" = root ] && o=",bus=root" || o=""
ok=0; bad=0
for i in $(seq 1 $n); do
  : > /tmp/c
  t0=$(now_ms)
  timeout -s KILL 90 minivmm -v --trace bar --gpu 0000:00:01.0$o --kernel $L2_KERNEL --initramfs $L2_INITRD --cmdline "$L2_CMDLINE_MINIVMM l2.devices=id" --memory 256M </dev/null >/tmp/c 2>/tmp/e &
  pid=$!
  t1=$(wait_for /tmp/c L2:EDU-ID $pid $((t0+90000))) || t1=NA
  wait $pid
  rc=$?
  echo "LAB:P i=$i opt=$opt rc=$rc usable=$((${t1/NA/0}-t0))"
  if [ "$t1" = NA ] || [ $rc != 0 ]; then
    bad=$((bad+1))
    tail -n 40 /tmp/c | sed 's/^/LAB:FAILC /'
    sed 's/^/LAB:FAILE /' /tmp/e
  else ok=$((ok+1)); fi
done
echo "LAB:SUMMARY opt=$opt ok=$ok bad=$bad"
