// SPDX-License-Identifier: GPL-2.0
/*
 * edu_msi: a tiny L2 driver for QEMU's edu device (1234:11e8) that proves MSI delivery
 * through minivmm. On probe it enables one MSI vector, asks the device to raise
 * `raises` interrupts one after the other (register 0x60), and counts the ones its
 * handler sees (acknowledged through 0x64). The count is readable as the module parameter
 * `seen`; /proc/interrupts shows the vector as edu_msi.
 */
#include <linux/delay.h>
#include <linux/interrupt.h>
#include <linux/module.h>
#include <linux/pci.h>

#define EDU_IRQ_STATUS 0x24
#define EDU_IRQ_RAISE 0x60
#define EDU_IRQ_ACK 0x64

static int raises = 3;
module_param(raises, int, 0444);
MODULE_PARM_DESC(raises, "interrupts to raise at probe");

static int seen;
module_param(seen, int, 0444);
MODULE_PARM_DESC(seen, "interrupts the handler saw");

static void __iomem *regs;

static irqreturn_t edu_msi_irq(int irq, void *data)
{
	u32 status = ioread32(regs + EDU_IRQ_STATUS);

	if (!status)
		return IRQ_NONE;
	iowrite32(status, regs + EDU_IRQ_ACK);
	WRITE_ONCE(seen, READ_ONCE(seen) + 1);
	return IRQ_HANDLED;
}

static int edu_msi_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	int err, nvec, i, wait;

	err = pcim_enable_device(pdev);
	if (err)
		return err;
	err = pcim_iomap_regions(pdev, 1, "edu_msi");
	if (err)
		return err;
	regs = pcim_iomap_table(pdev)[0];
	/* MSI is a memory write by the device: it needs bus mastering. */
	pci_set_master(pdev);
	nvec = pci_alloc_irq_vectors(pdev, 1, 1, PCI_IRQ_MSI);
	if (nvec < 0)
		return nvec;
	err = request_irq(pci_irq_vector(pdev, 0), edu_msi_irq, 0, "edu_msi", pdev);
	if (err) {
		pci_free_irq_vectors(pdev);
		return err;
	}
	for (i = 0; i < raises; i++) {
		int before = READ_ONCE(seen);

		iowrite32(1, regs + EDU_IRQ_RAISE);
		for (wait = 0; wait < 2000 && READ_ONCE(seen) == before; wait++)
			usleep_range(500, 1000);
	}
	return 0;
}

static void edu_msi_remove(struct pci_dev *pdev)
{
	free_irq(pci_irq_vector(pdev, 0), pdev);
	pci_free_irq_vectors(pdev);
}

static const struct pci_device_id edu_msi_ids[] = {
	{ PCI_DEVICE(0x1234, 0x11e8) },
	{ 0 }
};
MODULE_DEVICE_TABLE(pci, edu_msi_ids);

static struct pci_driver edu_msi_driver = {
	.name = "edu_msi",
	.id_table = edu_msi_ids,
	.probe = edu_msi_probe,
	.remove = edu_msi_remove,
};
module_pci_driver(edu_msi_driver);

MODULE_DESCRIPTION("MSI test driver for QEMU's edu device (minivmm lab)");
MODULE_LICENSE("GPL");
