// SPDX-License-Identifier: GPL-2.0-only
/*
 * vblk-engine --compat-ring (x86-64 only): a compat ring driven by a 64-bit
 * process.
 *
 * io_uring decides once, at io_uring_setup(), that a ring is a compat ring
 * (ctx->compat = in_compat_syscall()), and passes IO_URING_F_COMPAT to every
 * uring_cmd on it, whoever issues it.  The kernel's own READV/WRITEV parse
 * iovec arrays by that flag too.  Here the ring is set up with the 32-bit
 * system call (int $0x80 from 64-bit code, which needs IA32 emulation); every
 * later system call is the normal 64-bit one, so the threads that issue the
 * commands (this task inline, its io-wq workers, and with --sqpoll the SQ
 * thread of a 64-bit SQPOLL ring this one attaches to) are not in a compat
 * system call.  Every user pointer the kernel reads is what a 32-bit caller
 * would give: data buffers and iovec arrays below 4 GiB (MAP_32BIT), iovec
 * arrays in the 32-bit layout ({u32 base; u32 len}).  So a driver that
 * decides compat from the ring handles it; one that asks
 * in_compat_syscall() parses the arrays as 64-bit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine.h"

#define IA32_NR_IO_URING_SETUP	425	/* the same number in the i386 table */

bool compat_ring_supported(void)
{
#if defined(__x86_64__)
	return true;
#else
	return false;
#endif
}

#if defined(__x86_64__)
/* io_uring_setup() through the 32-bit system call entry; @p must be below 4 GiB. */
static int ia32_io_uring_setup(unsigned int entries, struct io_uring_params *p)
{
	long ret;

	/* int $0x80 takes ebx, ecx and may clobber r8-r11 */
	asm volatile("int $0x80"
		     : "=a" (ret)
		     : "0" ((long)IA32_NR_IO_URING_SETUP), "b" ((long)entries),
		       "c" ((long)(uintptr_t)p)
		     : "memory", "r8", "r9", "r10", "r11");
	return (int)ret;
}
#endif

/* Zeroed memory below 4 GiB (MAP_32BIT: below 2 GiB), or NULL. */
void *low_alloc(size_t len)
{
#if defined(__x86_64__)
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);

	return p == MAP_FAILED ? NULL : p;
#else
	(void)len;
	return NULL;
#endif
}

void low_free(void *p, size_t len)
{
	if (p)
		munmap(p, len);
}

/*
 * Rewrite @n struct iovec in place as the 32-bit layout a compat caller
 * passes: entry i goes to bytes 8i..8i+7, which only overlap entries
 * already converted.  The array and the buffers are below 4 GiB.
 */
void pack_iov32(struct iovec *iov, unsigned int n)
{
	uint32_t *out = (uint32_t *)(void *)iov;
	unsigned int i;

	for (i = 0; i < n; i++) {
		uint32_t base = (uint32_t)(uintptr_t)iov[i].iov_base;
		uint32_t len = (uint32_t)iov[i].iov_len;

		out[2 * i] = base;
		out[2 * i + 1] = len;
	}
}

/*
 * Set up e->ring as a compat ring with @p's flags; with IORING_SETUP_SQPOLL,
 * first a 64-bit SQPOLL ring (e->sq_owner) whose SQ thread it shares
 * (IORING_SETUP_ATTACH_WQ).  Returns 0 or -errno.
 */
int compat_ring_init(struct engine *e, unsigned int entries, struct io_uring_params *p)
{
#if defined(__x86_64__)
	struct io_uring_params *lp = low_alloc(sizeof(*lp));
	struct io_uring_params owner;
	unsigned int i;
	int fd, ret;

	if (!lp)
		return -ENOMEM;
	memcpy(lp, p, sizeof(*lp));
	if (p->flags & IORING_SETUP_SQPOLL) {
		memset(&owner, 0, sizeof(owner));
		owner.flags = IORING_SETUP_SQPOLL;
		ret = io_uring_queue_init_params(1, &e->sq_owner, &owner);
		if (ret < 0)
			goto out;
		e->sq_owner_ready = true;
		lp->flags |= IORING_SETUP_ATTACH_WQ;
		lp->wq_fd = (uint32_t)e->sq_owner.ring_fd;
	}
	fd = ia32_io_uring_setup(entries, lp);
	if (fd < 0) {
		ret = fd;
		goto out;
	}
	memcpy(p, lp, sizeof(*p));
	ret = io_uring_queue_mmap(fd, p, &e->ring);
	if (ret < 0) {
		close(fd);
		goto out;
	}
	/*
	 * liburing 2.9's io_uring_queue_mmap() maps the rings only; the rest is
	 * done by hand, as io_uring_queue_init_params() would.  Without the
	 * identity SQ index array (2.9 fills it at init only, no longer at
	 * submit) the kernel would read SQE 0 for every command.
	 */
	e->ring.flags = p->flags;
	e->ring.ring_fd = e->ring.enter_ring_fd = fd;
	e->ring.features = p->features;
	for (i = 0; i < p->sq_entries; i++)
		e->ring.sq.array[i] = i;
out:
	low_free(lp, sizeof(*lp));
	return ret;
#else
	(void)e;
	(void)entries;
	(void)p;
	return -EOPNOTSUPP;
#endif
}
