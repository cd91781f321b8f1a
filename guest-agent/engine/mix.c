// SPDX-License-Identifier: GPL-2.0-only
/*
 * vblk-engine --op mix: a seeded random mix of writes, verified reads,
 * flushes and (with --with-trim) discards and write-zeroes over the blocks
 * of [offset, offset + length), each I/O on --path or --path2 at random.
 *
 * The sequence of I/Os (kind, target, first block, block count) depends on
 * --seed only.  An I/O never overlaps one in flight: when it would, the
 * engine waits for completions first, so the shadow below is exact and the
 * result does not depend on timing (except how many I/Os --runtime allows).
 *
 * Shadow, per block: unknown, zero, the --init-seed pattern, or the
 * generation of the write that last wrote it.  Write generation g (from 3)
 * stores the PROTOCOL.md pattern with seed splitmix64(seed + g).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

#define SH_UNKNOWN	0
#define SH_ZERO		1
#define SH_INIT		2
#define SH_GEN0		3

struct mix_op {
	enum io_kind kind;
	unsigned int tgt;
	uint64_t blk;
	uint32_t nblk;
};

struct mix_counts {
	uint64_t n[IO_KINDS];
	uint64_t errors;
};

struct mix_state {
	uint64_t nblocks;
	uint64_t *shadow;
	uint8_t *busy;			/* block has an I/O in flight */
	uint64_t rng;
	uint64_t next_gen;
	uint64_t issued;
	uint64_t deadline;		/* 0: no --runtime */
	unsigned int inflight;
	bool pending;			/* op drawn but not issued yet */
	bool waiting;			/* op is waiting for an overlap */
	struct mix_op op;
	struct mix_counts per[MAX_TARGETS];
	uint64_t verified_blocks;
	uint64_t unverified_blocks;
	uint64_t overlap_waits;
};

int mix_setup(struct engine *e)
{
	const struct job *job = e->job;
	struct mix_state *m = calloc(1, sizeof(*m));
	uint64_t i;

	if (!m) {
		setup_error("out of memory for", job->path, ENOMEM);
		return -1;
	}
	m->nblocks = job->length / job->bs;
	m->shadow = calloc(m->nblocks, sizeof(*m->shadow));
	m->busy = calloc(m->nblocks, sizeof(*m->busy));
	if (!m->shadow || !m->busy) {
		setup_error("out of memory for the shadow of", job->path, ENOMEM);
		free(m->shadow);
		free(m->busy);
		free(m);
		return -1;
	}
	for (i = 0; job->have_init_seed && i < m->nblocks; i++)
		m->shadow[i] = SH_INIT;
	m->rng = splitmix64(job->seed) ? splitmix64(job->seed) : 1;
	m->next_gen = SH_GEN0;
	e->mix = m;
	return 0;
}

void mix_teardown(struct engine *e)
{
	if (!e->mix)
		return;
	free(e->mix->shadow);
	free(e->mix->busy);
	free(e->mix);
	e->mix = NULL;
}

static uint64_t write_seed(const struct job *job, uint64_t gen)
{
	return splitmix64(job->seed + gen);
}

/* flush 5%, [discard 5%, write-zeroes 5%,] write the rest up to 55%, read 45% */
static enum io_kind draw_kind(uint64_t r, bool trim)
{
	r %= 100;
	if (r < 5)
		return IO_FLUSH;
	if (trim && r < 10)
		return IO_DISCARD;
	if (trim && r < 15)
		return IO_WZEROES;
	return r < 55 ? IO_WRITE : IO_READ;
}

static void draw_op(struct engine *e, struct mix_op *op)
{
	struct mix_state *m = e->mix;
	uint64_t r_kind = xorshift64s(&m->rng), r_tgt = xorshift64s(&m->rng);
	uint64_t r_blk = xorshift64s(&m->rng), r_len = xorshift64s(&m->rng);

	op->kind = draw_kind(r_kind, e->job->with_trim);
	op->tgt = e->ntgt > 1 ? (unsigned int)(r_tgt & 1) : 0;
	op->blk = r_blk % m->nblocks;
	op->nblk = 1 + (uint32_t)(r_len % MIX_MAX_BLOCKS);
	if (op->nblk > m->nblocks - op->blk)
		op->nblk = (uint32_t)(m->nblocks - op->blk);
	/* An IOPOLL ring takes no fsync/fallocate/block discard: read instead. */
	if (e->job->iopoll && !e->tgt[op->tgt].passthru && op->kind != IO_WRITE)
		op->kind = IO_READ;
}

static bool overlaps(const struct mix_state *m, const struct mix_op *op)
{
	uint32_t i;

	if (op->kind == IO_FLUSH)
		return false;
	for (i = 0; i < op->nblk; i++)
		if (m->busy[op->blk + i])
			return true;
	return false;
}

/* Mark the blocks busy and set what they hold once the I/O is done. */
static void shadow_issue(struct engine *e, struct slot *s, const struct mix_op *op)
{
	struct mix_state *m = e->mix;
	uint64_t state = SH_UNKNOWN, gen = 0;
	uint32_t i;

	if (op->kind == IO_WRITE) {
		gen = m->next_gen++;
		s->wseed = write_seed(e->job, gen);
		fill_pattern(s->buf, s->offset, s->len, s->wseed);
		state = gen;
	} else if (op->kind == IO_WZEROES) {
		state = SH_ZERO;
	} else if (op->kind == IO_READ) {
		memset(s->buf, READ_POISON, s->len);
	}
	for (i = 0; op->kind != IO_FLUSH && i < op->nblk; i++) {
		m->busy[op->blk + i] = 1;
		if (op->kind != IO_READ)
			m->shadow[op->blk + i] = state;
	}
}

static void issue(struct engine *e, struct io_uring_sqe *sqe, const struct mix_op *op)
{
	struct mix_state *m = e->mix;
	struct slot *s = e->free_slots[--e->nr_free];

	s->kind = op->kind;
	s->tgt = op->tgt;
	s->seq = m->issued++;
	s->offset = e->job->offset + op->blk * e->job->bs;
	s->len = (uint32_t)(op->nblk * e->job->bs);
	if (op->kind == IO_FLUSH)	/* FLUSH carries no range: sector 0 */
		s->offset = s->len = 0;
	s->nranges = 1;
	shadow_issue(e, s, op);
	prep_io(e, sqe, s);
	m->inflight++;
}

static bool more_ops(const struct engine *e)
{
	const struct mix_state *m = e->mix;

	if (e->job->ios && m->issued >= e->job->ios)
		return false;
	return !m->deadline || now_ns() < m->deadline;
}

/* Queue I/Os until qd is reached, the job is over or one must wait. */
static void fill_queue(struct engine *e)
{
	struct mix_state *m = e->mix;
	struct io_uring_sqe *sqe;

	while (m->inflight < e->job->qd) {
		if (!m->pending) {
			if (!more_ops(e))
				return;
			draw_op(e, &m->op);
			m->pending = true;
			m->waiting = false;
		}
		if (overlaps(m, &m->op)) {
			m->overlap_waits += !m->waiting;
			m->waiting = true;
			return;
		}
		sqe = io_uring_get_sqe(&e->ring);
		if (!sqe)
			return;
		issue(e, sqe, &m->op);
		m->pending = false;
	}
}

static uint64_t expected_word(const struct engine *e, uint64_t state, uint64_t off)
{
	if (state == SH_ZERO)
		return 0;
	if (state == SH_INIT)
		return pattern_word(e->job->init_seed, off);
	return pattern_word(write_seed(e->job, state), off);
}

static void verify_block(struct engine *e, const struct slot *s, uint64_t blk,
			 const uint64_t *w)
{
	uint64_t state = e->mix->shadow[blk], off, exp;
	uint64_t base = e->job->offset + blk * e->job->bs;
	uint64_t i;

	if (state == SH_UNKNOWN) {
		e->mix->unverified_blocks++;
		return;
	}
	e->mix->verified_blocks++;
	for (i = 0; i < e->job->bs / 8; i++) {
		off = base + i * 8;
		exp = expected_word(e, state, off);
		if (w[i] != exp)
			record_mismatch(&e->st, s, s->seq, off, exp, w[i]);
	}
}

static void verify_read(struct engine *e, const struct slot *s)
{
	uint64_t first = (s->offset - e->job->offset) / e->job->bs;
	uint64_t nblk = s->len / e->job->bs, i;
	const uint64_t *w = s->buf;

	for (i = 0; i < nblk; i++)
		verify_block(e, s, first + i, w + i * (e->job->bs / 8));
}

static void complete_io(struct engine *e, struct slot *s, int res)
{
	struct mix_state *m = e->mix;
	uint64_t first = (s->offset - e->job->offset) / e->job->bs;
	uint64_t nblk = s->kind == IO_FLUSH ? 0 : s->len / e->job->bs, i;
	bool ok = io_ok(e, s, res);

	count_res(&e->st.res_counts, res);
	m->per[s->tgt].n[s->kind]++;
	for (i = 0; i < nblk; i++) {
		m->busy[first + i] = 0;
		/* a failed write or write-zeroes left the blocks unknown */
		if (!ok && s->kind != IO_READ)
			m->shadow[first + i] = SH_UNKNOWN;
	}
	if (!ok) {
		m->per[s->tgt].errors++;
		record_error(&e->st, s, s->seq, res);
		return;
	}
	e->st.bytes += io_bytes(s);
	if (s->kind == IO_READ)
		verify_read(e, s);
}

static void reap(struct engine *e)
{
	struct io_uring_cqe *cqe;
	struct slot *s;

	while (io_uring_peek_cqe(&e->ring, &cqe) == 0) {
		s = io_uring_cqe_get_data(cqe);
		complete_io(e, s, cqe->res);
		io_uring_cqe_seen(&e->ring, cqe);
		e->free_slots[e->nr_free++] = s;
		e->mix->inflight--;
	}
}

int mix_run(struct engine *e)
{
	struct mix_state *m = e->mix;
	uint64_t start = now_ns();
	int ret;

	if (e->job->runtime_ns)
		m->deadline = start + e->job->runtime_ns;
	for (;;) {
		fill_queue(e);
		if (!m->inflight)
			break;
		ret = io_uring_submit_and_wait(&e->ring, 1);
		if (ret < 0 && ret != -EINTR) {
			runtime_error(e, -ret);
			return -1;
		}
		reap(e);
	}
	e->st.elapsed_ns = now_ns() - start;
	e->st.ios = m->issued;
	return 0;
}

static void print_counts(const uint64_t *n)
{
	printf("\"writes\": %" PRIu64 ", \"reads\": %" PRIu64 ", \"flushes\": %" PRIu64
	       ", \"discards\": %" PRIu64 ", \"write_zeroes\": %" PRIu64,
	       n[IO_WRITE], n[IO_READ], n[IO_FLUSH], n[IO_DISCARD], n[IO_WZEROES]);
}

static void print_per_path(const struct engine *e)
{
	static const char *const names[MAX_TARGETS] = { "path", "path2" };
	const struct mix_state *m = e->mix;
	unsigned int t;

	fputs(", \"per_path\": {", stdout);
	for (t = 0; t < e->ntgt; t++) {
		printf("%s\"%s\": {\"path\": ", t ? ", " : "", names[t]);
		print_json_string(e->tgt[t].path);
		printf(", \"mode\": \"%s\", ", e->tgt[t].passthru ? "passthru" : "block");
		print_counts(m->per[t].n);
		printf(", \"errors\": %" PRIu64 "}", m->per[t].errors);
	}
	putchar('}');
}

void mix_print(const struct engine *e)
{
	const struct job *job = e->job;
	const struct mix_state *m = e->mix;
	uint64_t n[IO_KINDS] = { 0 };
	unsigned int t, k;

	for (t = 0; t < e->ntgt; t++)
		for (k = 0; k < IO_KINDS; k++)
			n[k] += m->per[t].n[k];
	fputs(", \"path2\": ", stdout);
	if (job->path2)
		print_json_string(job->path2);
	else
		fputs("null", stdout);
	printf(", \"runtime_ns\": %" PRIu64 ", \"mix\": {", job->runtime_ns);
	print_counts(n);
	printf(", \"verified_blocks\": %" PRIu64 ", \"unverified_blocks\": %" PRIu64
	       ", \"overlap_waits\": %" PRIu64, m->verified_blocks,
	       m->unverified_blocks, m->overlap_waits);
	printf(", \"with_trim\": %s, \"unmap\": %s, \"init_seed\": ",
	       job->with_trim ? "true" : "false", job->unmap ? "true" : "false");
	if (job->have_init_seed)
		printf("%" PRIu64, job->init_seed);
	else
		fputs("null", stdout);
	print_per_path(e);
	putchar('}');
}
