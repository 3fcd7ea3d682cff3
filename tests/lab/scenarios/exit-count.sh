# lab-needs: two-cpus
# lab-needs: qemu
# A probe of the lab, not a test: what one L2 boot costs L1's KVM, counted from its
# kvm:kvm_exit trace events. The bench guest (256M, 1 vCPU) boots to L2:POWEROFF under
# minivmm, QEMU and minivmm again; for each, `LAB:EC vmm=… total=…`, the exits by reason
# (`LAB:EC VMM COUNT REASON`) and the commonest exit_info1 values of the NPF and IOIO exits
# (`LAB:ECINFO VMM COUNT INFO1`: the port and access of an IOIO, the error code of an NPF).
. /lab/lab.sh
t=/sys/kernel/tracing
mount -t tracefs nodev $t 2>/dev/null
echo 65536 > $t/buffer_size_kb
echo 1 > $t/events/kvm/kvm_exit/enable
for vmm in minivmm qemu minivmm; do
  : > $t/trace
  : > /tmp/c
  t0=$(now_ms)
  if [ $vmm = qemu ]; then
    qemu-system-x86_64 -accel kvm -cpu host -machine q35 -m 256M -smp 1 -nodefaults \
      -display none -monitor none -no-reboot -serial file:/tmp/c \
      -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$L2_CMDLINE" </dev/null >/tmp/e 2>&1 &
  else
    minivmm --no-reboot --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" \
      --cmdline "$L2_CMDLINE_MINIVMM" --memory 256M --cpus 1 --serial stdio </dev/null >/tmp/c 2>/tmp/e &
  fi
  pid=$!
  # A guest that never powers off is killed at the deadline, so `wait` cannot hang the probe.
  t1=$(wait_for /tmp/c L2:POWEROFF $pid $((t0 + 90000))) || { t1=NA; kill -9 $pid 2>/dev/null; }
  wait $pid
  grep ' kvm_exit:' $t/trace > /tmp/exits
  echo "LAB:EC vmm=$vmm poweroff_ms=$(( ${t1/NA/$(now_ms)} - t0 )) total=$(wc -l < /tmp/exits)"
  sed -n 's/.*reason \([A-Za-z_0-9]*\).*/\1/p' /tmp/exits | sort | uniq -c | sort -rn | head -12 |
    sed "s/^/LAB:EC $vmm /"
  grep 'reason \(npf\|io\) ' /tmp/exits | sed -n 's/.*info1 \(0x[0-9a-f]*\).*/\1/p' | sort | uniq -c |
    sort -rn | head -6 | sed "s/^/LAB:ECINFO $vmm /"
done
