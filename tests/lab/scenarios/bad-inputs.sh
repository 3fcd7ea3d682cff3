# Runs minivmm on bad inputs. Each must fail cleanly: non-zero exit, one stderr line, no panic.
. /lab/lab.sh

echo "this is a text file, not a bzImage" > /tmp/not-a-bzimage
long=$(head -c 5000 /dev/zero | tr '\0' x)

bad missing-kernel minivmm --kernel /nonexistent/bzImage
bad not-a-bzimage minivmm --kernel /tmp/not-a-bzimage
bad missing-initramfs minivmm --kernel "$L2_KERNEL" --initramfs /nonexistent/initrd.gz
bad memory-zero minivmm --kernel "$L2_KERNEL" --memory 0
bad cpus-zero minivmm --kernel "$L2_KERNEL" --cpus 0
bad cpus-9999 minivmm --kernel "$L2_KERNEL" --cpus 9999
bad unknown-option minivmm --kernel "$L2_KERNEL" --no-such-option
bad cmdline-too-long minivmm --kernel "$L2_KERNEL" --cmdline "$long"
# Huge pages asked for and none reserved; a size that is no whole number of them.
echo 0 > /proc/sys/vm/nr_hugepages
bad hugepages-none minivmm --kernel "$L2_KERNEL" --memory 256M,hugepages=on
bad hugepages-odd minivmm --kernel "$L2_KERNEL" --memory 255M,hugepages=on
# Disks that cannot be: missing, a directory, empty.
: > /tmp/empty.img
bad disk-missing minivmm --kernel "$L2_KERNEL" --disk /nonexistent/root.img
bad disk-directory minivmm --kernel "$L2_KERNEL" --disk /tmp
bad disk-empty minivmm --kernel "$L2_KERNEL" --disk /tmp/empty.img
exit 0
