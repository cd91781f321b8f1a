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
#include <string.h>

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

int basic_run(struct engine *e)
{
	uint64_t next = 0, done = 0, start;
	unsigned int inflight = 0;
	int ret;

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
}
