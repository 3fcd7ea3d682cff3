# The lab's own check: /dev/kvm works in L1 and the minivmm binary (dynamically linked,
# libraries copied by ldd) starts.
. /lab/lab.sh
[ -c /dev/kvm ] && kvm=1 || kvm=0
ls /dev/vfio >/dev/null 2>&1 && vfio=1 || vfio=0
echo "LAB:SELFTEST kvm=$kvm vfio=$vfio groups=$(ls /sys/kernel/iommu_groups | wc -l)"
out=$(minivmm --help 2>&1)
rc=$?
echo "$out" | head -n 3 | sed 's/^/LAB:MINIVMM-OUT /'
echo "LAB:RESULT minivmm-starts rc=$rc"
[ "$kvm" = 1 ] && [ "$rc" = 0 ]
