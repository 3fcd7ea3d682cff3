// SPDX-License-Identifier: GPL-2.0
/*
 * link_probe: asks the kernel what GPU drivers (amdgpu, nouveau) ask it, the PCIe
 * bandwidth available to one device, from pcie_bandwidth_available(): the slowest link
 * between the device and the root. Loaded with `bdf=DDDD:BB:DD.F`; the answer is in the
 * read-only module parameters `mbps`, `width`, `speed` (enum pci_bus_speed) and `limit`
 * (the device whose link limits it), and the module stays loaded until removed.
 */
#include <linux/module.h>
#include <linux/pci.h>

static char *bdf = "";
module_param(bdf, charp, 0444);
MODULE_PARM_DESC(bdf, "the device, DDDD:BB:DD.F");

static int mbps;
module_param(mbps, int, 0444);
static int width;
module_param(width, int, 0444);
static int speed;
module_param(speed, int, 0444);
static char limit[32] = "none";
module_param_string(limit, limit, sizeof(limit), 0444);

static int __init link_probe_init(void)
{
	unsigned int domain, bus, dev, fn;
	enum pci_bus_speed link_speed = PCI_SPEED_UNKNOWN;
	enum pcie_link_width link_width = PCIE_LNK_WIDTH_UNKNOWN;
	struct pci_dev *pdev, *limiting = NULL;

	if (sscanf(bdf, "%x:%x:%x.%x", &domain, &bus, &dev, &fn) != 4)
		return -EINVAL;
	pdev = pci_get_domain_bus_and_slot(domain, bus, PCI_DEVFN(dev, fn));
	if (!pdev)
		return -ENODEV;
	mbps = pcie_bandwidth_available(pdev, &limiting, &link_speed, &link_width);
	width = link_width;
	speed = link_speed;
	if (limiting)
		strscpy(limit, pci_name(limiting), sizeof(limit));
	pci_dev_put(pdev);
	return 0;
}

static void __exit link_probe_exit(void)
{
}

module_init(link_probe_init);
module_exit(link_probe_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("pcie_bandwidth_available() of one device, for the minivmm lab");
