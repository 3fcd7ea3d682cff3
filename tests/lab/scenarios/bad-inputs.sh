# Runs minivmm on bad inputs. Each must fail cleanly: non-zero exit, one stderr line, no panic.
. /lab/lab.sh

# bad NAME ARGS...: prints LAB:BAD name=NAME rc=RC lines=<stderr lines> panic=<0|1>.
bad() {
  name=$1
  shift
  timeout -s KILL 20 minivmm "$@" </dev/null >/tmp/bad.out 2>/tmp/bad.err
  rc=$?
  lines=$(grep -c '' /tmp/bad.err)
  panic=0
  grep -q panicked /tmp/bad.err && panic=1
  echo "LAB:BAD name=$name rc=$rc lines=$lines panic=$panic"
  head -n 5 /tmp/bad.err | sed "s/^/LAB:STDERR $name: /"
}

echo "this is a text file, not a bzImage" > /tmp/not-a-bzimage
long=$(head -c 5000 /dev/zero | tr '\0' x)

bad missing-kernel --kernel /nonexistent/bzImage
bad not-a-bzimage --kernel /tmp/not-a-bzimage
bad missing-initramfs --kernel "$L2_KERNEL" --initramfs /nonexistent/initrd.gz
bad memory-zero --kernel "$L2_KERNEL" --memory 0
bad cpus-zero --kernel "$L2_KERNEL" --cpus 0
bad cpus-9999 --kernel "$L2_KERNEL" --cpus 9999
bad unknown-option --kernel "$L2_KERNEL" --no-such-option
bad cmdline-too-long --kernel "$L2_KERNEL" --cmdline "$long"
exit 0
