# lab-needs: two-cpus
# A probe of the lab itself, not a test: two loops of plain minivmm boots (256M, 1 vCPU)
# side by side for lab.secs seconds (default 240), both of L1's CPUs running a guest. Each
# boot is good when L2 reaches /init, powers off and minivmm exits 0. Under MTTCG this load
# has taken L1's kernel down ("stack guard page was hit" in a vcpu thread); the counts and
# whether L1 survived measure the lab's own failure rate (docs/ARCHITECTURE.md, "The lab's
# QEMU").
. /lab/lab.sh
secs=$(lab_param secs 240)
end=$(( $(now_ms) + secs * 1000 ))
loop() {
  ok=0; bad=0
  while [ "$(now_ms)" -lt "$end" ]; do
    timeout -s KILL 90 minivmm --no-reboot --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" \
      --cmdline "$L2_CMDLINE_MINIVMM" --memory 256M </dev/null >/tmp/sbs.$1 2>&1
    rc=$?
    if [ $rc = 0 ] && grep -q L2:INIT /tmp/sbs.$1; then
      ok=$((ok + 1))
      echo "LAB:SBS-OK loop=$1 n=$ok"
    else
      bad=$((bad + 1))
      echo "LAB:SBS-BAD loop=$1 rc=$rc"
      tail -n 8 /tmp/sbs.$1 | sed "s/^/LAB:SBS-TAIL $1 /"
    fi
  done
  echo "LAB:SBS loop=$1 ok=$ok bad=$bad"
}
loop a &
loop b &
wait
