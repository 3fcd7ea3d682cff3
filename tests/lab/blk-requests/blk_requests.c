// SPDX-License-Identifier: GPL-2.0
/*
 * blk_requests: an L2 test driver for a virtio-blk device that puts requests on its queue
 * that Linux's own virtio_blk never would, and reports the status the device answers
 * each with. Loaded instead of virtio_blk (it claims the same virtio device type), it runs
 * its cases at probe and prints one line per case:
 *   blk_requests: dev=virtioN case=NAME status=S len=L
 * (S is the status byte, 255 if the device left it alone; L the used length). The cases:
 * a header of 8 bytes, a read whose data the device may only read, sectors past the end,
 * an unknown request type, a write of 100 bytes, GET_ID (the control: status 0), and a
 * write straight to the device (a read-only disk must refuse it itself: the guest kernel's
 * own read-only check is not in the way here).
 */
#include <linux/module.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/virtio.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/wait.h>

struct request_buf {
	struct virtio_blk_outhdr header;
	u8 data[1024];
	u8 status;
};

static DECLARE_WAIT_QUEUE_HEAD(done_wait);
static bool done;

static void blk_requests_done(struct virtqueue *vq)
{
	WRITE_ONCE(done, true);
	wake_up(&done_wait);
}

/* Submit one request: `out` device-readable pieces, then `in` device-writable ones. */
static void submit(struct virtqueue *vq, const char *name, struct scatterlist **sgs,
		   unsigned int out, unsigned int in, struct request_buf *buf)
{
	const char *dev = dev_name(&vq->vdev->dev);
	unsigned int len = 0;
	int err;

	buf->status = 0xff;
	WRITE_ONCE(done, false);
	err = virtqueue_add_sgs(vq, sgs, out, in, buf, GFP_KERNEL);
	if (err) {
		pr_info("blk_requests: dev=%s case=%s add=%d\n", dev, name, err);
		return;
	}
	virtqueue_kick(vq);
	if (!wait_event_timeout(done_wait, READ_ONCE(done), 10 * HZ)) {
		pr_info("blk_requests: dev=%s case=%s timeout\n", dev, name);
		return;
	}
	if (!virtqueue_get_buf(vq, &len)) {
		pr_info("blk_requests: dev=%s case=%s nothing-used\n", dev, name);
		return;
	}
	pr_info("blk_requests: dev=%s case=%s status=%u len=%u\n", dev, name, buf->status, len);
}

static int blk_requests_probe(struct virtio_device *vdev)
{
	struct scatterlist hdr, hdr8, data_in, data_out, data100, status;
	struct scatterlist *sgs[3];
	struct request_buf *buf;
	struct virtqueue *vq;
	u64 capacity;

	vq = virtio_find_single_vq(vdev, blk_requests_done, "requests");
	if (IS_ERR(vq))
		return PTR_ERR(vq);
	virtio_device_ready(vdev);
	buf = kzalloc(sizeof(*buf), GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	virtio_cread(vdev, struct virtio_blk_config, capacity, &capacity);
	pr_info("blk_requests: dev=%s capacity=%llu ro=%d\n", dev_name(&vdev->dev), capacity,
		virtio_has_feature(vdev, VIRTIO_BLK_F_RO));

	sg_init_one(&hdr, &buf->header, sizeof(buf->header));
	sg_init_one(&hdr8, &buf->header, 8);
	sg_init_one(&data_in, buf->data, 512);
	sg_init_one(&data_out, buf->data, 512);
	sg_init_one(&data100, buf->data, 100);
	sg_init_one(&status, &buf->status, 1);

	/* A header of 8 bytes: no sector. */
	buf->header.type = cpu_to_virtio32(vdev, VIRTIO_BLK_T_IN);
	buf->header.sector = 0;
	sgs[0] = &hdr8;
	sgs[1] = &status;
	submit(vq, "short-header", sgs, 1, 1, buf);

	/* A read whose data buffer the device may only read. */
	sgs[0] = &hdr;
	sgs[1] = &data_out;
	sgs[2] = &status;
	submit(vq, "read-into-readonly-buffer", sgs, 2, 1, buf);

	/* A read past the end. */
	buf->header.sector = cpu_to_virtio64(vdev, capacity);
	sgs[1] = &data_in;
	submit(vq, "past-the-end", sgs, 1, 2, buf);

	/* An unknown type. */
	buf->header.type = cpu_to_virtio32(vdev, 0x77);
	buf->header.sector = 0;
	sgs[1] = &status;
	submit(vq, "unknown-type", sgs, 1, 1, buf);

	/* A write of 100 bytes. */
	buf->header.type = cpu_to_virtio32(vdev, VIRTIO_BLK_T_OUT);
	sgs[1] = &data100;
	sgs[2] = &status;
	submit(vq, "write-100-bytes", sgs, 2, 1, buf);

	/* GET_ID: the control. */
	buf->header.type = cpu_to_virtio32(vdev, VIRTIO_BLK_T_GET_ID);
	memset(buf->data, 0, 32);
	sgs[1] = &data_in;
	sgs[2] = &status;
	sg_init_one(&data_in, buf->data, VIRTIO_BLK_ID_BYTES);
	submit(vq, "get-id", sgs, 1, 2, buf);
	pr_info("blk_requests: dev=%s id=%.20s\n", dev_name(&vdev->dev), buf->data);

	/* A write of one sector at sector 1, straight to the device. */
	buf->header.type = cpu_to_virtio32(vdev, VIRTIO_BLK_T_OUT);
	buf->header.sector = cpu_to_virtio64(vdev, 1);
	memset(buf->data, 0x5a, 512);
	sgs[1] = &data_out;
	sgs[2] = &status;
	submit(vq, "write-sector", sgs, 2, 1, buf);

	kfree(buf);
	pr_info("blk_requests: dev=%s done\n", dev_name(&vdev->dev));
	return 0;
}

static void blk_requests_remove(struct virtio_device *vdev)
{
	virtio_reset_device(vdev);
	vdev->config->del_vqs(vdev);
}

static const struct virtio_device_id id_table[] = {
	{ VIRTIO_ID_BLOCK, VIRTIO_DEV_ANY_ID },
	{ 0 },
};

static unsigned int features[] = { VIRTIO_BLK_F_RO };

static struct virtio_driver blk_requests_driver = {
	.driver.name = "blk_requests",
	.driver.owner = THIS_MODULE,
	.id_table = id_table,
	.feature_table = features,
	.feature_table_size = ARRAY_SIZE(features),
	.probe = blk_requests_probe,
	.remove = blk_requests_remove,
};
module_virtio_driver(blk_requests_driver);

MODULE_DEVICE_TABLE(virtio, id_table);
MODULE_DESCRIPTION("virtio-blk requests Linux's driver never makes, for minivmm's lab");
MODULE_LICENSE("GPL");
