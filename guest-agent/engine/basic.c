// SPDX-License-Identifier: GPL-2.0-only
/*
 * vblk-engine basic jobs: write, read, verify, flush, get-id, discard and
 * write-zeroes over [offset, offset + length), I/O number i at
 * offset + i * unit, up to qd in flight (unit = bs, or bs * ranges for
 * discard/write-zeroes; flush and get-id carry no range and run --ios times).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine.h"

static const enum io_kind op_kind[] = {
	[OP_READ] = IO_READ, [OP_WRITE] = IO_WRITE, [OP_VERIFY] = IO_READ,
	[OP_FLUSH] = IO_FLUSH, [OP_GET_ID] = IO_GET_ID, [OP_DISCARD] = IO_DISCARD,
	[OP_WZEROES] = IO_WZEROES,
};

static bool no_range(enum job_op op)
{
	return op == OP_FLUSH || op == OP_GET_ID;
}

/* Bytes one I/O covers. */
static uint64_t io_unit(const struct job *job)
{
	if (job->op == OP_DISCARD || job->op == OP_WZEROES)
		return job->bs * job->ranges;
	return job->bs;
}

static uint64_t basic_ios(const struct job *job)
{
	uint64_t unit = io_unit(job);

	if (no_range(job->op))
		return job->ios ? job->ios : 1;
	return (job->length + unit - 1) / unit;
}

static void place_io(const struct job *job, struct slot *s, uint64_t index)
{
	uint64_t unit = io_unit(job), rel = index * unit;

	s->kind = op_kind[job->op];
	s->tgt = 0;
	s->seq = index;
	s->nranges = 0;
	if (no_range(job->op)) {
		s->offset = job->offset;
		s->len = s->kind == IO_GET_ID ? VBLK_ID_BYTES : 0;
		return;
	}
	s->offset = job->offset + rel;
	s->len = (uint32_t)(job->length - rel < unit ? job->length - rel : unit);
	if (s->kind == IO_DISCARD || s->kind == IO_WZEROES)
		s->nranges = (uint32_t)((s->len + job->bs - 1) / job->bs);
}

static void fill_buffer(const struct engine *e, struct slot *s)
{
	if (s->kind == IO_WRITE)
		fill_pattern(s->buf, s->offset, s->len, e->job->seed);
	else if (s->kind == IO_READ)	/* "got 0xa5a5..." means no data arrived */
		memset(s->buf, READ_POISON, s->len);
	else if (s->kind == IO_GET_ID)
		memset(s->buf, READ_POISON, VBLK_ID_BYTES);
}

static int queue_io(struct engine *e, uint64_t index)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&e->ring);
	struct slot *s;

	if (!sqe)
		return -EBUSY;
	s = e->free_slots[--e->nr_free];
	place_io(e->job, s, index);
	fill_buffer(e, s);
	prep_io(e, sqe, s);
	scribble_note(e, sqe, s);
	return 0;
}

static void check_pattern(struct engine *e, const struct slot *s)
{
	const uint64_t *w = s->buf;
	uint64_t expected, off;
	uint32_t i;

	for (i = 0; i < s->len / 8; i++) {
		off = s->offset + (uint64_t)i * 8;
		expected = e->job->zero ? 0 : pattern_word(e->job->seed, off);
		if (w[i] != expected)
			record_mismatch(&e->st, s, off, off, expected, w[i]);
	}
}

/* The serial: up to 20 bytes, NUL-terminated only when shorter. */
static void take_id(struct engine *e, const struct slot *s)
{
	if (e->have_id)
		return;
	memcpy(e->id, s->buf, VBLK_ID_BYTES);
	e->id[VBLK_ID_BYTES] = '\0';
	e->have_id = true;
}

static void complete_io(struct engine *e, struct slot *s, int res)
{
	count_res(&e->st.res_counts, res);
	scribble_check(e, s);
	if (s->seq < MAX_RESULTS)
		e->st.results[s->seq] = res;
	if (!io_ok(e, s, res)) {
		record_error(&e->st, s, s->offset, res);
		return;
	}
	e->st.bytes += io_bytes(s);
	if (e->job->op == OP_VERIFY)
		check_pattern(e, s);
	else if (s->kind == IO_GET_ID)
		take_id(e, s);
}

static unsigned int reap_completions(struct engine *e)
{
	struct io_uring_cqe *cqe;
	unsigned int n = 0;
	struct slot *s;

	while (io_uring_peek_cqe(&e->ring, &cqe) == 0) {
		s = io_uring_cqe_get_data(cqe);
		if (!s) {	/* not an I/O of ours: a kernel ran a scribble */
			io_uring_cqe_seen(&e->ring, cqe);
			continue;
		}
		complete_io(e, s, cqe->res);
		io_uring_cqe_seen(&e->ring, cqe);
		e->free_slots[e->nr_free++] = s;
		n++;
	}
	return n;
}

/*
 * --scribble: submit, overwrite the submitted SQEs at once (scribble.c),
 * then wait for a completion.
 */
static int submit_scribbled(struct engine *e)
{
	int ret = io_uring_submit(&e->ring);

	scribble_submitted(e);
	iowq_sample(e);
	if (ret < 0)
		return ret;
	return io_uring_submit_and_wait(&e->ring, 1);
}

/* Wait for one completion of ours and complete it; its cqe->res in *res. */
static int wait_one(struct engine *e, int *res)
{
	struct io_uring_cqe *cqe;
	struct slot *s;
	int ret;

	for (;;) {
		ret = io_uring_wait_cqe(&e->ring, &cqe);
		if (ret == -EINTR)
			continue;
		if (ret < 0)
			return ret;
		s = io_uring_cqe_get_data(cqe);
		*res = cqe->res;
		io_uring_cqe_seen(&e->ring, cqe);
		if (!s)
			continue;
		complete_io(e, s, *res);
		e->free_slots[e->nr_free++] = s;
		return 0;
	}
}

/* The whole pages under a slot's buffer, made read-only or writable again. */
static int protect_slot(const struct engine *e, const struct slot *s, int prot)
{
	long page = sysconf(_SC_PAGESIZE);
	uintptr_t lo = (uintptr_t)s->buf & ~((uintptr_t)page - 1);
	uintptr_t hi = ((uintptr_t)s->buf + e->buf_size + (uintptr_t)page - 1) &
		       ~((uintptr_t)page - 1);

	return mprotect((void *)lo, hi - lo, prot) ? -errno : 0;
}

/*
 * --protect-buf: submit the one read, make its buffer read-only, then reap.
 * With DEFER_TASKRUN the completion's task work (where a bounced read is
 * copied out to the buffer) runs only inside the wait, so the copy always
 * meets a read-only buffer: the command must fail with -EFAULT, not 0.
 */
static int protected_read(struct engine *e)
{
	struct slot *s;
	int ret, res;

	e->st.ios = 1;
	if (queue_io(e, 0))
		return runtime_error(e, EBUSY), -1;
	s = e->free_slots[e->nr_free];	/* the slot queue_io just took */
	ret = io_uring_submit(&e->ring);
	if (ret < 0)
		return runtime_error(e, -ret), -1;
	ret = protect_slot(e, s, PROT_READ);
	if (ret)
		return runtime_error(e, -ret), -1;
	ret = wait_one(e, &res);
	protect_slot(e, s, PROT_READ | PROT_WRITE);
	if (ret < 0)
		return runtime_error(e, -ret), -1;
	return 0;
}

#define FAIL_NTH_MAX	1024

/*
 * --fail-nth-sweep: issue the job's one I/O again and again; on run N the
 * Nth allocation the kernel checks for fault injection in this thread
 * fails (/proc/thread-self/fail-nth, armed only around the submitting
 * io_uring_enter and the task work it runs on the way out).  The sweep
 * ends with the first run that makes fewer than N such allocations: then
 * every allocation of the submission path has failed once, and that last
 * run is the clean one.  cqe->res of run N is fail_nth_res[N - 1].  An
 * io_uring_enter that fails itself (the SQE not consumed) is entered again
 * without injection; its first error is kept in fail_nth_submit.
 */
static int fail_nth_sweep(struct engine *e)
{
	unsigned int n, left = 0;
	int fd, ret, res;

	fd = fail_nth_open();
	if (fd < 0)
		return runtime_error(e, -fd), -1;
	e->fail_nth_res = calloc(FAIL_NTH_MAX, sizeof(*e->fail_nth_res));
	if (!e->fail_nth_res)
		return runtime_error(e, ENOMEM), -1;
	for (n = 1; n <= FAIL_NTH_MAX; n++) {
		if (queue_io(e, 0))
			return runtime_error(e, EBUSY), -1;
		ret = fail_nth_arm(fd, n);
		if (ret)
			return runtime_error(e, -ret), -1;
		ret = io_uring_submit(&e->ring);
		if (fail_nth_disarm(fd, &left))
			return runtime_error(e, EIO), -1;
		if (ret < 0) {
			if (!e->fail_nth_submit)
				e->fail_nth_submit = ret;
			ret = io_uring_submit(&e->ring);
			if (ret < 0)
				return runtime_error(e, -ret), -1;
		}
		ret = wait_one(e, &res);
		if (ret < 0)
			return runtime_error(e, -ret), -1;
		e->fail_nth_res[n - 1] = res;
		e->fail_nth_n = n;
		if (left)	/* the Nth allocation never came: clean run */
			break;
	}
	close(fd);
	e->st.ios = e->fail_nth_n;
	return 0;
}

int basic_run(struct engine *e)
{
	uint64_t next = 0, done = 0, start;
	unsigned int inflight = 0;
	int ret;

	if (e->job->protect_buf)
		return protected_read(e);
	if (e->job->fail_nth_sweep)
		return fail_nth_sweep(e);
	e->st.ios = basic_ios(e->job);
	start = now_ns();
	while (done < e->st.ios) {
		while (inflight < e->job->qd && next < e->st.ios) {
			if (queue_io(e, next))
				break;
			next++;
			inflight++;
		}
		ret = e->scribble ? submit_scribbled(e) :
				    io_uring_submit_and_wait(&e->ring, 1);
		if (ret < 0 && ret != -EINTR) {
			runtime_error(e, -ret);
			return -1;
		}
		ret = (int)reap_completions(e);
		iowq_sample(e);
		inflight -= (unsigned int)ret;
		done += (uint64_t)ret;
	}
	e->st.elapsed_ns = now_ns() - start;
	return 0;
}

static void print_results(const struct stats *st)
{
	uint64_t i;

	if (st->ios > MAX_RESULTS)
		return;
	fputs(", \"results\": [", stdout);
	for (i = 0; i < st->ios; i++)
		printf("%s%d", i ? ", " : "", st->results[i]);
	putchar(']');
}

void basic_print(const struct engine *e)
{
	const struct job *job = e->job;

	if (job->op == OP_DISCARD || job->op == OP_WZEROES)
		printf(", \"ranges\": %u, \"unmap\": %s", job->ranges,
		       job->unmap ? "true" : "false");
	if (job->op == OP_VERIFY)
		printf(", \"zero\": %s", job->zero ? "true" : "false");
	if (job->op == OP_GET_ID) {
		fputs(", \"id\": ", stdout);
		if (e->have_id)
			print_json_ascii(e->id);
		else
			fputs("null", stdout);
	}
	print_results(&e->st);
	if (e->job->fail_nth_sweep && e->fail_nth_res) {
		unsigned int i;

		printf(", \"fail_nth_submit\": %d, \"fail_nth\": [", e->fail_nth_submit);
		for (i = 0; i < e->fail_nth_n; i++)
			printf("%s%d", i ? ", " : "", e->fail_nth_res[i]);
		putchar(']');
	}
}
