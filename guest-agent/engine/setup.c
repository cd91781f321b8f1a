// SPDX-License-Identifier: GPL-2.0-only
/*
 * vblk-engine setup: open the targets, the checks that depend on what they
 * are, the ring, the per-slot buffers and iovec arrays, registered buffers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"

void setup_error(const char *what, const char *path, int err)
{
	fprintf(stderr, "vblk-engine: %s %s: %s\n", what, path, strerror(err));
}

void runtime_error(const struct engine *e, int err)
{
	fprintf(stderr, "vblk-engine: io_uring_enter failed on %s: %s\n",
		e->job->path, strerror(err));
}

/*
 * --uid/--gid: become that user before anything is opened, with no
 * supplementary groups, so the node's mode decides (an EACCES open is exit 3).
 */
static int drop_privileges(const struct job *job)
{
	if (!job->have_ids)
		return 0;
	if (setgroups(0, NULL)) {
		setup_error("cannot clear supplementary groups for", job->path, errno);
		return -1;
	}
	if (setgid((gid_t)job->gid)) {
		fprintf(stderr, "vblk-engine: cannot switch to gid %u: %s\n",
			job->gid, strerror(errno));
		return -1;
	}
	if (setuid((uid_t)job->uid)) {
		fprintf(stderr, "vblk-engine: cannot switch to uid %u: %s\n",
			job->uid, strerror(errno));
		return -1;
	}
	return 0;
}

static void open_error(const struct job *job, const char *path, int err)
{
	if (!job->have_ids) {
		setup_error("cannot open", path, err);
		return;
	}
	fprintf(stderr, "vblk-engine: cannot open %s as uid %u gid %u: %s\n",
		path, job->uid, job->gid, strerror(err));
}

static int open_target(const struct job *job, struct target *t, const char *path)
{
	struct stat st;
	int flags;

	t->path = path;
	flags = job->rdonly ? O_RDONLY : job->wronly ? O_WRONLY : O_RDWR;
	t->fd = open(path, flags | O_CLOEXEC);
	if (t->fd < 0) {
		open_error(job, path, errno);
		return -1;
	}
	if (fstat(t->fd, &st)) {
		setup_error("cannot stat", path, errno);
		return -1;
	}
	if (S_ISCHR(st.st_mode)) {
		t->passthru = true;
		return 0;
	}
	if (!S_ISBLK(st.st_mode) && !S_ISREG(st.st_mode)) {
		setup_error("unsupported file type", path, EINVAL);
		return -1;
	}
	t->blkdev = S_ISBLK(st.st_mode);
	if (job->buffered)	/* the seed's -O0 block path: through the page cache */
		return 0;
	/* Set after fstat: a char device open with O_DIRECT fails outright. */
	flags = fcntl(t->fd, F_GETFL);
	if (flags < 0 || fcntl(t->fd, F_SETFL, flags | O_DIRECT) < 0) {
		setup_error("cannot set O_DIRECT on", path, errno);
		return -1;
	}
	return 0;
}

static int open_targets(struct engine *e)
{
	const struct job *job = e->job;

	e->tgt[0].fd = e->tgt[1].fd = -1;
	e->ntgt = 1;
	if (open_target(job, &e->tgt[0], job->path))
		return -1;
	if (!job->path2)
		return 0;
	e->ntgt = 2;
	return open_target(job, &e->tgt[1], job->path2);
}

static bool any_passthru(const struct engine *e)
{
	unsigned int i;

	for (i = 0; i < e->ntgt; i++)
		if (e->tgt[i].passthru)
			return true;
	return false;
}

static bool any_block(const struct engine *e)
{
	unsigned int i;

	for (i = 0; i < e->ntgt; i++)
		if (!e->tgt[i].passthru)
			return true;
	return false;
}

/* Usage checks that depend on the kind of target (exit 2). */
static int check_targets(const struct engine *e)
{
	const struct job *job = e->job;
	const char *msg = NULL;

	if (!any_passthru(e) && (job->type.set || job->cmd_op.set ||
				 job->flag.set || job->data_len.set))
		msg = "--type/--cmd-op/--flag/--data-len need a passthrough char device";
	else if (!any_passthru(e) && job->op == OP_GET_ID)
		msg = "--op get-id needs a passthrough char device";
	else if (any_block(e) && job->fixed && job->vec)
		msg = "--fixed with --vec has no block-path operation";
	else if (!any_passthru(e) && (job->sector.set || job->range_sector.set))
		msg = "--sector/--range-sector need a passthrough char device";
	else if (!any_passthru(e) && (job->range_nr.set || job->range_flags.set))
		msg = "--range-num-sectors/--range-flags need a passthrough char device";
	else if (any_block(e) && job->ioprio.v > UINT16_MAX)
		msg = "--ioprio above 0xffff does not fit the block path's sqe->ioprio";
	if (!msg)
		return 0;
	usage_error("%s", msg);
	return -1;
}

static int setup_ring(struct engine *e)
{
	struct io_uring_params p;
	unsigned int entries;
	int ret;

	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SUBMIT_ALL;
	if (any_passthru(e)) {
		p.flags |= IORING_SETUP_CQE32;
		if (!e->job->sqe64)
			p.flags |= IORING_SETUP_SQE128;
	}
	if (e->job->iopoll)
		p.flags |= IORING_SETUP_IOPOLL;
	/* Completions and linked issues run only when the job waits for CQEs. */
	if (e->job->defer_taskrun)
		p.flags |= IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
	/* The kernel's SQ thread, not this task, issues every SQE (idle: 1 s). */
	if (e->job->sqpoll)
		p.flags |= IORING_SETUP_SQPOLL;
	/* --link: a wave of qd chains is 2 * qd SQEs */
	entries = e->job->link ? 2 * e->job->qd : e->job->qd;
	if (e->job->compat_ring)
		ret = compat_ring_init(e, entries, &p);
	else
		ret = io_uring_queue_init_params(entries, &e->ring, &p);
	if (ret < 0) {
		setup_error("io_uring setup failed for", e->job->path, -ret);
		return -1;
	}
	e->ring_ready = true;
	e->sqe128 = p.flags & IORING_SETUP_SQE128;
	return 0;
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
	return a > b ? a : b;
}

/* Bytes of data buffer each slot needs for the job. */
static size_t slot_bytes(const struct job *job)
{
	uint64_t n = job->bs;

	if (job->op == OP_MIX)
		n = job->bs * MIX_MAX_BLOCKS;
	else if (job->op == OP_DISCARD || job->op == OP_WZEROES)
		n = (uint64_t)job->ranges * sizeof(struct vblk_range);
	/* A larger --data-len must not let the kernel write past the buffer. */
	if (job->data_len.set && !job->vec && job->data_len.v <= MAX_BS)
		n = max_u64(n, job->data_len.v);
	return (size_t)((n + BUF_ALIGN - 1) & ~(uint64_t)(BUF_ALIGN - 1));
}

/* iovec entries per slot: --vec, or more if --data-len claims more. */
static unsigned int slot_iovs(const struct job *job)
{
	unsigned int n = job->vec;

	if (job->data_len.set && job->data_len.v > n)
		n = job->data_len.v > MAX_VEC ? MAX_VEC : job->data_len.v;
	return n;
}

static int setup_slot(struct engine *e, struct slot *s, unsigned int i)
{
	unsigned int niov = slot_iovs(e->job);
	int ret;

	s->buf_index = i;
	if (e->job->compat_ring) {	/* what a 32-bit caller could point at */
		s->buf = low_alloc(e->buf_size);
		s->iov = niov ? low_alloc(niov * sizeof(*s->iov)) : NULL;
		if (!s->buf || (niov && !s->iov)) {
			setup_error("cannot map buffers below 4 GiB for", e->job->path, ENOMEM);
			return -1;
		}
		return 0;
	}
	ret = posix_memalign(&s->buf, BUF_ALIGN, e->buf_size);
	if (ret) {
		s->buf = NULL;
		setup_error("cannot allocate buffers for", e->job->path, ret);
		return -1;
	}
	memset(s->buf, 0, e->buf_size);
	if (!niov)
		return 0;
	/* calloc: entries beyond what an I/O fills stay zero-length */
	s->iov = calloc(niov, sizeof(*s->iov));
	if (!s->iov) {
		setup_error("cannot allocate iovecs for", e->job->path, ENOMEM);
		return -1;
	}
	return 0;
}

static int setup_slots(struct engine *e)
{
	unsigned int i;

	e->buf_size = slot_bytes(e->job);
	e->slots = calloc(e->job->qd, sizeof(*e->slots));
	e->free_slots = calloc(e->job->qd, sizeof(*e->free_slots));
	if (!e->slots || !e->free_slots) {
		setup_error("out of memory for", e->job->path, ENOMEM);
		return -1;
	}
	for (i = 0; i < e->job->qd; i++) {
		if (setup_slot(e, &e->slots[i], i))
			return -1;
		e->free_slots[e->nr_free++] = &e->slots[i];
	}
	return 0;
}

static int register_buffers(struct engine *e)
{
	struct iovec *iov;
	unsigned int i;
	int ret;

	iov = calloc(e->job->qd, sizeof(*iov));
	if (!iov) {
		setup_error("out of memory for", e->job->path, ENOMEM);
		return -1;
	}
	for (i = 0; i < e->job->qd; i++) {
		iov[i].iov_base = e->slots[i].buf;
		iov[i].iov_len = e->buf_size;
	}
	ret = io_uring_register_buffers(&e->ring, iov, e->job->qd);
	free(iov);
	if (ret < 0) {
		setup_error("cannot register buffers for", e->job->path, -ret);
		return -1;
	}
	return 0;
}

/*
 * An address no access may touch: a PROT_NONE page that stays mapped for the
 * whole job.  A page that was munmap()ped would be the first place the next
 * mapping lands (a ring, a malloc above the mmap threshold, a thread stack),
 * and --bad-ptr would then hand the kernel writable memory instead of -EFAULT.
 */
static int setup_bad_addr(struct engine *e)
{
	void *p = mmap(NULL, BUF_ALIGN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);

	if (p == MAP_FAILED) {
		setup_error("cannot map a page for --bad-ptr on", e->job->path, errno);
		return -1;
	}
	e->bad_addr = p;
	return 0;
}

/* --scribble in a basic job: a canary per slot (scribble.c). */
static int setup_basic_scribble(struct engine *e)
{
	unsigned int i;

	if (scribble_setup(e, e->job->qd))
		return -1;
	for (i = 0; i < e->job->qd; i++)
		if (scribble_add_canary(e, &e->slots[i]))
			return -1;
	return 0;
}

/*
 * Exit the ring, then close the targets; the first close() error is kept
 * for the result ("close_ok").  Idempotent.
 */
void engine_close(struct engine *e)
{
	unsigned int i;

	if (e->ring_ready)
		io_uring_queue_exit(&e->ring);
	e->ring_ready = false;
	if (e->sq_owner_ready)
		io_uring_queue_exit(&e->sq_owner);
	e->sq_owner_ready = false;
	for (i = 0; i < MAX_TARGETS; i++) {
		if (e->tgt[i].fd < 0)
			continue;
		if (close(e->tgt[i].fd) && !e->close_errno)
			e->close_errno = errno;
		e->tgt[i].fd = -1;
	}
	e->closed = true;
}

void engine_teardown(struct engine *e)
{
	unsigned int i;

	engine_close(e);
	if (e->slots) {
		for (i = 0; i < e->job->qd; i++) {
			if (e->job->compat_ring) {
				low_free(e->slots[i].buf, e->buf_size);
				low_free(e->slots[i].iov,
					 slot_iovs(e->job) * sizeof(struct iovec));
				continue;
			}
			free(e->slots[i].buf);
			free(e->slots[i].iov);
		}
	}
	free(e->slots);
	free(e->free_slots);
	if (e->bad_addr)
		munmap(e->bad_addr, BUF_ALIGN);
	scribble_teardown(e);
}

/* Returns 0, EXIT_USAGE or EXIT_SETUP (after a stderr line). */
int engine_setup(struct engine *e, const struct job *job)
{
	int ret = EXIT_SETUP;

	memset(e, 0, sizeof(*e));
	e->job = job;
	e->tgt[0].fd = e->tgt[1].fd = -1;
	if (drop_privileges(job) || open_targets(e))
		goto fail;
	if (check_targets(e)) {
		ret = EXIT_USAGE;
		goto fail;
	}
	if (setup_ring(e) || setup_slots(e))
		goto fail;
	if (job->fixed && register_buffers(e))
		goto fail;
	if (job->bad_ptr && setup_bad_addr(e))
		goto fail;
	if (job->scribble && !job->link && setup_basic_scribble(e))
		goto fail;
	return 0;
fail:
	engine_teardown(e);
	return ret;
}
