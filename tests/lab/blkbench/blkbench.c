// blkbench: throughput of a block device from inside L2, past the guest's page cache
// (O_DIRECT), for the disk benchmark against QEMU. One line per mode:
//   blkbench DEVICE seqwrite|seqread MIB      -> "mode=seqwrite bytes=N ms=T mbs=R"
//   blkbench DEVICE randwrite|randread COUNT  -> "mode=randread ops=N ms=T iops=R"
// Sequential runs use 1 MiB requests from the start of the device; random runs 4 KiB
// requests at offsets from a fixed pseudo-random sequence, so both VMMs see the same ones.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: blkbench DEVICE seqwrite|seqread|randwrite|randread N\n");
    return 2;
  }
  const char *mode = argv[2];
  long n = atol(argv[3]);
  int write = strstr(mode, "write") != NULL;
  int seq = strncmp(mode, "seq", 3) == 0;
  int fd = open(argv[1], (write ? O_RDWR : O_RDONLY) | O_DIRECT);
  if (fd < 0) {
    perror("open");
    return 1;
  }
  uint64_t size = 0;
  if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
    perror("BLKGETSIZE64");
    return 1;
  }
  size_t len = seq ? 1 << 20 : 4096;
  void *buf;
  if (posix_memalign(&buf, 4096, len) != 0) return 1;
  memset(buf, 0x5a, len);
  uint64_t blocks = size / len;
  long ops = seq ? n : n;
  if (seq && (uint64_t)ops > blocks) ops = blocks;
  uint64_t x = 88172645463325252ull;
  double start = now_ms();
  for (long i = 0; i < ops; i++) {
    uint64_t block = i;
    if (!seq) {
      x ^= x << 13; x ^= x >> 7; x ^= x << 17;
      block = x % blocks;
    }
    ssize_t done = write ? pwrite(fd, buf, len, block * len) : pread(fd, buf, len, block * len);
    if (done != (ssize_t)len) {
      perror(mode);
      return 1;
    }
  }
  if (write && fsync(fd) != 0) {
    perror("fsync");
    return 1;
  }
  double ms = now_ms() - start;
  if (seq)
    printf("mode=%s bytes=%llu ms=%.1f mbs=%.1f\n", mode, (unsigned long long)ops * len, ms,
           ops * (len / 1048576.0) / (ms / 1000.0));
  else
    printf("mode=%s ops=%ld ms=%.1f iops=%.0f\n", mode, ops, ms, ops / (ms / 1000.0));
  return 0;
}
