# lab-needs: disk
# L2's root filesystem on a virtio-blk disk (root=/dev/vda), with edu passed through, and a
# second disk for data. Five runs:
# - disk-write: L2 writes a known file on its root, syncs, says so, and minivmm is
#   SIGKILLed at once; the host image must already hold the data;
# - disk-check: the same image boots again, the file reads back with its checksum, and a
#   random write/verify run (and a sequential one) passes on /dev/vdb;
# - disk-ro: /dev/vdb with readonly=on: L2 sees it read-only, its write fails, and the
#   image is unchanged;
# - disk-requests: a test driver's malformed requests (and a write straight to a read-only
#   disk) get the error statuses;
# - disk-busy: a second minivmm on the image the first holds is refused in one line.
. /lab/lab.sh
edu=0000:00:01.0
d=/sys/bus/pci/devices/$edu
echo vfio-pci > "$d/driver_override"
echo "$edu" > /sys/bus/pci/drivers_probe
echo "LAB:BOUND $edu driver=$(basename "$(readlink "$d/driver")")"
cp /lab/l2/root.img /tmp/root.img
dd if=/dev/zero of=/tmp/data.img bs=1M count=0 seek=32 2>/dev/null
CMDLINE="$L2_CMDLINE_MINIVMM root=/dev/vda l2.devices=id"

# start_disks MODE [DATA-DISK-OPTIONS]: minivmm with both disks and edu, L2 in l2.disk=MODE.
start_disks() {
  : > /tmp/l2.log
  minivmm --gpu "$edu" --disk /tmp/root.img --disk "/tmp/data.img$2" \
    --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" --cmdline "$CMDLINE l2.disk=$1" \
    --memory 256M </dev/null >/tmp/l2.log 2>/tmp/vmm.err &
  pid=$!
}

# finish NAME: the guest's console, minivmm's stderr, and LAB:RESULT NAME rc=$rc.
finish() {
  cat /tmp/l2.log
  echo
  sed 's/^/LAB:VMM /' /tmp/vmm.err
  echo "LAB:RESULT $1 rc=$rc"
}

echo "LAB:BEGIN disk-write"
start_disks write
# The whole report line (the guest's console sends it in pieces), then the kill at once.
t0=$(wait_for /tmp/l2.log L2:SYNCED "$pid" $(( $(now_ms) + VMM_TIMEOUT * 1000 )))
if t1=$(wait_for /tmp/l2.log "L2:SYNCED sum=[0-9a-f]* bytes=[0-9]" "$pid" $(( $(now_ms) + 10000 ))); then
  kill -9 "$pid"
fi
echo "LAB:SYNCED-LINE first=${t0:-NA} whole=${t1:-NA}"
wait "$pid"
rc=$?
# What the host image holds once the VMM is gone (no unmount, no shutdown: a crash).
echo "LAB:IMAGE-LINES $(grep -c 'minivmm durable line 4095' /tmp/root.img)"
finish disk-write

echo "LAB:BEGIN disk-check"
start_disks check
wait_for /tmp/l2.log L2:POWEROFF "$pid" $(( $(now_ms) + VMM_TIMEOUT * 1000 )) >/dev/null
alive "$pid" && sleep 5 && alive "$pid" && kill -9 "$pid"
wait "$pid"
rc=$?
finish disk-check

echo "LAB:BEGIN disk-ro"
before=$(md5sum < /tmp/data.img | cut -d' ' -f1)
start_disks ro ",readonly=on"
wait_for /tmp/l2.log L2:POWEROFF "$pid" $(( $(now_ms) + VMM_TIMEOUT * 1000 )) >/dev/null
alive "$pid" && sleep 5 && alive "$pid" && kill -9 "$pid"
wait "$pid"
rc=$?
echo "LAB:RO-IMAGE same=$([ "$before" = "$(md5sum < /tmp/data.img | cut -d' ' -f1)" ] && echo yes || echo no)"
finish disk-ro

echo "LAB:BEGIN disk-requests"
# The test driver's malformed requests, on a writable disk (virtio0) and a read-only one
# (virtio1); L2 boots from its initramfs.
dd if=/dev/zero of=/tmp/ro.img bs=1M count=1 2>/dev/null
ro_before=$(md5sum < /tmp/ro.img | cut -d' ' -f1)
: > /tmp/l2.log
timeout -s KILL "$VMM_TIMEOUT" minivmm --disk /tmp/data.img --disk /tmp/ro.img,readonly=on \
  --kernel "$L2_KERNEL" --initramfs "$L2_INITRD" --cmdline "$L2_CMDLINE_MINIVMM l2.disk=requests" \
  --memory 256M </dev/null >/tmp/l2.log 2>/tmp/vmm.err
rc=$?
echo "LAB:RO-IMAGE-REQUESTS same=$([ "$ro_before" = "$(md5sum < /tmp/ro.img | cut -d' ' -f1)" ] && echo yes || echo no)"
finish disk-requests

echo "LAB:BEGIN disk-busy"
# A guest that holds the root image (it waits after writing), and a second VMM asking for it.
start_disks write
wait_for /tmp/l2.log L2:SYNCED "$pid" $(( $(now_ms) + VMM_TIMEOUT * 1000 )) >/dev/null
bad busy minivmm --disk /tmp/root.img --kernel "$L2_KERNEL" --memory 128M
kill -9 "$pid"
wait "$pid"
rc=$?
echo "LAB:RESULT disk-busy rc=$rc"
exit 0
