// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
/*
 * iommufd smoke test for the virtio-iommu test kernel (runs as /iommufd_smoke in the guest).
 *
 *   iommufd_smoke                     selftest mock driver: IOAS_ALLOC, MOCK_DOMAIN, GET_HW_INFO,
 *                                     IOAS_MAP + MD_CHECK_MAP, IOAS_UNMAP, IOMMU_DESTROY
 *   iommufd_smoke vfio /dev/vfio/devices/vfioN
 *                                     VFIO cdev: BIND_IOMMUFD, GET_HW_INFO, ATTACH to an IOAS,
 *                                     IOAS_MAP/UNMAP and, if the device is QEMU's `edu`
 *                                     (1234:11e8), a DMA round trip through the IOMMU.
 *
 * Output: one "PASS: <what>" or "FAIL: <what> (...)" line per step, then
 * "RESULT: <name>: N passed, M failed". Exit status 0 only if nothing failed.
 *
 * Build: gcc -static -O2 -I <cache>/usr/include -I <cache>/selftest iommufd_smoke.c
 * (<cache> = output of scripts/build-test-kernel.sh; the uAPI headers must be from the same tree.)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/iommufd.h>
#include <linux/vfio.h>
#include "iommufd_test.h"

static int passed, failed;

#define PASS(...) do { printf("PASS: " __VA_ARGS__); putchar('\n'); passed++; } while (0)
#define FAILF(...) do { printf("FAIL: " __VA_ARGS__); putchar('\n'); failed++; } while (0)
/* Check an ioctl-like expression (0 = success); on failure report errno and optionally bail. */
#define CHECK(expr, ...) ({                                                   \
	int _r = (expr);                                                      \
	if (_r == 0) { PASS(__VA_ARGS__); }                                   \
	else { int _e = errno; printf("FAIL: " __VA_ARGS__);                  \
	       printf(" (errno %d: %s)\n", _e, strerror(_e)); failed++; }     \
	_r == 0; })

static int finish(const char *name)
{
	printf("RESULT: %s: %d passed, %d failed\n", name, passed, failed);
	fflush(stdout);
	return failed ? 1 : 0;
}

static int ioas_alloc(int fd, __u32 *id)
{
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	int r = ioctl(fd, IOMMU_IOAS_ALLOC, &a);
	*id = a.out_ioas_id;
	return r;
}

static int ioas_map_fixed(int fd, __u32 ioas, void *va, __u64 len, __u64 iova)
{
	struct iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE |
			 IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas,
		.user_va = (uintptr_t)va,
		.length = len,
		.iova = iova,
	};
	return ioctl(fd, IOMMU_IOAS_MAP, &m);
}

static int ioas_unmap(int fd, __u32 ioas, __u64 iova, __u64 len, __u64 *out_len)
{
	struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas, .iova = iova, .length = len };
	int r = ioctl(fd, IOMMU_IOAS_UNMAP, &u);
	*out_len = u.length;
	return r;
}

static int destroy(int fd, __u32 id)
{
	struct iommu_destroy d = { .size = sizeof(d), .id = id };
	return ioctl(fd, IOMMU_DESTROY, &d);
}

static int get_hw_info(int fd, __u32 dev_id, __u32 *type, void *data, __u32 len)
{
	struct iommu_hw_info h = {
		.size = sizeof(h), .dev_id = dev_id, .data_len = len, .data_uptr = (uintptr_t)data,
	};
	int r = ioctl(fd, IOMMU_GET_HW_INFO, &h);
	*type = h.out_data_type;
	return r;
}

/* ------------------------------------------------------------------ selftest mock ---------- */
static int mock_test(void)
{
	const __u64 len = 64 * 1024, iova = MOCK_APERTURE_START;
	__u32 ioas = 0, type = 0;
	__u64 unmapped = 0;
	int fd;

	fd = open("/dev/iommu", O_RDWR);
	if (fd < 0) {
		FAILF("open /dev/iommu (errno %d: %s)", errno, strerror(errno));
		return finish("iommufd-mock");
	}
	PASS("open /dev/iommu");
	if (!CHECK(ioas_alloc(fd, &ioas), "IOMMU_IOAS_ALLOC"))
		return finish("iommufd-mock");
	printf("  ioas_id=%u\n", ioas);

	struct iommu_test_cmd md = { .size = sizeof(md), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	if (!CHECK(ioctl(fd, IOMMU_TEST_CMD, &md), "IOMMU_TEST_CMD MOCK_DOMAIN"))
		return finish("iommufd-mock");
	__u32 stdev = md.mock_domain.out_stdev_id, hwpt = md.mock_domain.out_hwpt_id,
	      idev = md.mock_domain.out_idev_id;
	printf("  stdev_id=%u hwpt_id=%u idev_id=%u\n", stdev, hwpt, idev);

	struct iommu_test_hw_info { __u32 flags, test_reg; } info = { 0 };
	if (CHECK(get_hw_info(fd, idev, &type, &info, sizeof(info)), "IOMMU_GET_HW_INFO (mock)"))
		printf("  out_data_type=0x%x test_reg=0x%x\n", type, info.test_reg);

	void *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		FAILF("mmap");
		return finish("iommufd-mock");
	}
	memset(buf, 0xa5, len);
	CHECK(ioas_map_fixed(fd, ioas, buf, len, iova), "IOMMU_IOAS_MAP 64KiB at iova 0x%llx",
	      (unsigned long long)iova);

	struct iommu_test_cmd chk = {
		.size = sizeof(chk), .op = IOMMU_TEST_OP_MD_CHECK_MAP, .id = hwpt,
		.check_map = { .iova = iova, .length = len, .uptr = (uintptr_t)buf },
	};
	CHECK(ioctl(fd, IOMMU_TEST_CMD, &chk), "MD_CHECK_MAP (mock page table maps iova -> buffer)");

	if (CHECK(ioas_unmap(fd, ioas, iova, len, &unmapped), "IOMMU_IOAS_UNMAP")) {
		if (unmapped == len)
			PASS("IOAS_UNMAP reported %llu bytes", (unsigned long long)unmapped);
		else
			FAILF("IOAS_UNMAP reported %llu bytes, expected %llu",
			      (unsigned long long)unmapped, (unsigned long long)len);
	}
	if (ioctl(fd, IOMMU_TEST_CMD, &chk) != 0)
		PASS("MD_CHECK_MAP fails after unmap (errno %d)", errno);
	else
		FAILF("MD_CHECK_MAP still succeeds after unmap");

	CHECK(destroy(fd, stdev), "IOMMU_DESTROY mock device");
	CHECK(destroy(fd, ioas), "IOMMU_DESTROY ioas");
	close(fd);
	return finish("iommufd-mock");
}

/* ------------------------------------------------------------------ VFIO cdev -------------- */
#define EDU_ID          0x00
#define EDU_DMA_SRC     0x80
#define EDU_DMA_DST     0x88
#define EDU_DMA_COUNT   0x90
#define EDU_DMA_CMD     0x98
#define EDU_DMA_BUF     0x40000
#define EDU_CMD_START   1
#define EDU_CMD_TO_RAM  2

static int edu_wait(volatile uint8_t *bar)
{
	for (int i = 0; i < 400; i++) {               /* edu completes ~100 ms (virtual) later */
		if (!(*(volatile uint64_t *)(bar + EDU_DMA_CMD) & EDU_CMD_START))
			return 0;
		usleep(10000);
	}
	return -1;
}

static void edu_dma(volatile uint8_t *bar, __u64 src, __u64 dst, __u64 cnt, __u64 cmd)
{
	*(volatile uint64_t *)(bar + EDU_DMA_SRC) = src;
	*(volatile uint64_t *)(bar + EDU_DMA_DST) = dst;
	*(volatile uint64_t *)(bar + EDU_DMA_COUNT) = cnt;
	*(volatile uint64_t *)(bar + EDU_DMA_CMD) = cmd;
}

/* If the VFIO device is QEMU's edu: enable bus mastering, mmap BAR0, check ident. */
static volatile uint8_t *edu_open(int dev)
{
	struct vfio_device_info di = { .argsz = sizeof(di) };
	if (!CHECK(ioctl(dev, VFIO_DEVICE_GET_INFO, &di), "VFIO_DEVICE_GET_INFO"))
		return NULL;
	printf("  flags=0x%x regions=%u irqs=%u\n", di.flags, di.num_regions, di.num_irqs);

	struct vfio_region_info cfg = { .argsz = sizeof(cfg), .index = VFIO_PCI_CONFIG_REGION_INDEX };
	struct vfio_region_info bar = { .argsz = sizeof(bar), .index = VFIO_PCI_BAR0_REGION_INDEX };
	if (!CHECK(ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &cfg) |
		   ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &bar), "VFIO_DEVICE_GET_REGION_INFO"))
		return NULL;
	uint16_t ids[2] = { 0 };
	if (pread(dev, ids, 4, cfg.offset) != 4 || ids[0] != 0x1234 || ids[1] != 0x11e8) {
		printf("  not an edu device (%04x:%04x), skipping DMA test\n", ids[0], ids[1]);
		return NULL;
	}
	uint16_t cmdreg = 0;
	pread(dev, &cmdreg, 2, cfg.offset + 4);
	cmdreg |= 0x6;                                  /* memory space + bus master */
	if (pwrite(dev, &cmdreg, 2, cfg.offset + 4) != 2) {
		FAILF("enable bus mastering");
		return NULL;
	}
	volatile uint8_t *b = mmap(NULL, bar.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev, bar.offset);
	if (b == MAP_FAILED) {
		FAILF("mmap BAR0 (errno %d)", errno);
		return NULL;
	}
	uint32_t ident = *(volatile uint32_t *)(b + EDU_ID);
	if (ident != 0x010000ed) {
		FAILF("edu ident 0x%08x", ident);
		return NULL;
	}
	PASS("edu BAR0 mmap, ident 0x%08x", ident);
	return b;
}

static int vfio_test(const char *path)
{
	const __u64 len = 1 << 20, iova = 0x100000;
	__u32 ioas = 0, type = 0;
	__u64 unmapped = 0;
	int dev, fd;

	dev = open(path, O_RDWR);
	if (dev < 0) {
		FAILF("open %s (errno %d: %s)", path, errno, strerror(errno));
		return finish("vfio-cdev");
	}
	PASS("open %s", path);
	fd = open("/dev/iommu", O_RDWR);
	if (fd < 0) {
		FAILF("open /dev/iommu (errno %d)", errno);
		return finish("vfio-cdev");
	}

	struct vfio_device_bind_iommufd bind;
	memset(&bind, 0, sizeof(bind));
	bind.argsz = sizeof(bind);
	bind.iommufd = fd;
	if (!CHECK(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind), "VFIO_DEVICE_BIND_IOMMUFD"))
		return finish("vfio-cdev");
	printf("  dev_id=%u\n", bind.out_devid);

	__u64 hw[16] = { 0 };
	if (CHECK(get_hw_info(fd, bind.out_devid, &type, hw, sizeof(hw)), "IOMMU_GET_HW_INFO (device)"))
		printf("  out_data_type=%u (1=INTEL_VTD 2=ARM_SMMUV3 0=NONE) data: 0x%llx 0x%llx 0x%llx"
		       " (VT-d: flags, cap_reg, ecap_reg)\n", type, (unsigned long long)hw[0],
		       (unsigned long long)hw[1], (unsigned long long)hw[2]);

	if (!CHECK(ioas_alloc(fd, &ioas), "IOMMU_IOAS_ALLOC"))
		return finish("vfio-cdev");
	struct vfio_device_attach_iommufd_pt at;
	memset(&at, 0, sizeof(at));
	at.argsz = sizeof(at);
	at.pt_id = ioas;
	if (!CHECK(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at), "VFIO_DEVICE_ATTACH_IOMMUFD_PT ioas=%u", ioas))
		return finish("vfio-cdev");
	printf("  attached, hwpt_id=%u\n", at.pt_id);

	uint8_t *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		FAILF("mmap");
		return finish("vfio-cdev");
	}
	memset(buf, 0, len);
	if (CHECK(ioas_map_fixed(fd, ioas, buf, len, iova), "IOMMU_IOAS_MAP 1MiB at iova 0x%llx",
		  (unsigned long long)iova)) {
		/* Optional end-to-end check: edu DMA RAM -> device -> RAM through the IOMMU. */
		volatile uint8_t *bar0 = edu_open(dev);
		if (bar0) {
			for (int i = 0; i < 4096; i++)
				buf[i] = (uint8_t)(i * 7 + 3);
			edu_dma(bar0, iova, EDU_DMA_BUF, 4096, EDU_CMD_START);           /* RAM -> dev */
			int ok1 = edu_wait(bar0) == 0;
			edu_dma(bar0, EDU_DMA_BUF, iova + 0x10000, 4096, EDU_CMD_START | EDU_CMD_TO_RAM);
			int ok2 = edu_wait(bar0) == 0;
			if (ok1 && ok2 && memcmp(buf, buf + 0x10000, 4096) == 0)
				PASS("edu DMA round trip through the IOMMU (iova 0x%llx -> dev -> iova 0x%llx)",
				     (unsigned long long)iova, (unsigned long long)iova + 0x10000);
			else
				FAILF("edu DMA round trip (done=%d/%d, data %s)", ok1, ok2,
				      memcmp(buf, buf + 0x10000, 4096) ? "differs" : "equal");
		}
		if (CHECK(ioas_unmap(fd, ioas, iova, len, &unmapped), "IOMMU_IOAS_UNMAP"))
			printf("  unmapped %llu bytes\n", (unsigned long long)unmapped);
	}

	struct vfio_device_detach_iommufd_pt de;
	memset(&de, 0, sizeof(de));
	de.argsz = sizeof(de);
	CHECK(ioctl(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &de), "VFIO_DEVICE_DETACH_IOMMUFD_PT");
	CHECK(destroy(fd, ioas), "IOMMU_DESTROY ioas");
	close(dev);
	close(fd);
	return finish("vfio-cdev");
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 3 && !strcmp(argv[1], "vfio"))
		return vfio_test(argv[2]);
	if (argc == 1 || (argc == 2 && !strcmp(argv[1], "mock")))
		return mock_test();
	fprintf(stderr, "usage: %s [mock] | vfio /dev/vfio/devices/vfioN\n", argv[0]);
	return 2;
}
