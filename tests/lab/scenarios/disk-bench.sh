# lab-needs: two-cpus
# lab-needs: qemu
# lab-needs: disk
# The disk benchmark, side by side with QEMU in one L1: the same 128 MiB raw image (in L1's
# RAM) as a virtio-blk disk under each VMM (QEMU: -device virtio-blk-pci with its defaults,
# which cache through the host's page cache as minivmm does), and blkbench in L2 (O_DIRECT):
# 64 MiB written and read in 1 MiB requests, 3000 random 4 KiB writes and reads. Runs in
# the order QEMU, minivmm, minivmm, QEMU; each prints LAB:DISKBENCH vmm=NAME mode=... lines.
. /lab/lab.sh
dd if=/dev/zero of=/tmp/bench.img bs=1M count=128 2>/dev/null

measure() {
  : > /tmp/l2.log
  case $1 in
  qemu)
    timeout -s KILL "$VMM_TIMEOUT" qemu-system-x86_64 -accel kvm -cpu host -machine q35 \
      -m 256M -nodefaults -display none -monitor none -no-reboot -serial stdio \
      -drive file=/tmp/bench.img,format=raw,if=none,id=d0 \
      -device virtio-blk-pci,drive=d0,disable-legacy=on \
      -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$L2_CMDLINE l2.disk=bench" \
      </dev/null >/tmp/l2.log 2>/tmp/vmm.err
    ;;
  minivmm)
    timeout -s KILL "$VMM_TIMEOUT" minivmm --disk /tmp/bench.img --kernel "$L2_KERNEL" \
      --initramfs "$L2_INITRD" --cmdline "$L2_CMDLINE_MINIVMM l2.disk=bench" --memory 256M \
      </dev/null >/tmp/l2.log 2>/tmp/vmm.err
    ;;
  esac
  echo "LAB:RESULT disk-bench-$1 rc=$?"
  sed -n "s/.*L2:DISKBENCH /LAB:DISKBENCH vmm=$1 /p" /tmp/l2.log
  grep -q L2:DISKBENCH /tmp/l2.log || { tail -n 20 /tmp/l2.log; sed 's/^/LAB:VMM /' /tmp/vmm.err; }
}

for vmm in qemu minivmm minivmm qemu; do
  measure "$vmm"
done
exit 0
