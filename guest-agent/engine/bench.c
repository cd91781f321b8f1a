// SPDX-License-Identifier: GPL-2.0-only
/*
 * vblk-engine benchmarks: --op randread|randwrite, or read|write with
 * --bench (or any of --runtime, --ios, --batch-submit, --batch-complete).
 *
 * Loop, modelled on fio's t/io_uring: prepare up to --batch-submit SQEs
 * (fewer if the queue would pass --qd or the job is over) and submit them
 * with one io_uring_submit(); when the queue is full or the job is over,
 * wait for min(--batch-complete, in flight) completions with one
 * io_uring_submit_and_wait() (nothing queued then, so it only waits), unless
 * that many are already in the CQ ring; reap at most --batch-complete CQEs
 * per round straight from the ring (io_uring_for_each_cqe, no syscall).
 *
 * slat: a batch of n SQEs submitted by one call gives each of them
 *   (t after io_uring_submit() returned - t before the first was prepared) / n.
 * clat: t the CQE was reaped - t io_uring_submit() of its batch returned.
 * iops: successful I/Os per second; bw_bytes_s: their bytes per second
 *   (failed I/Os count in ios, errors and the latencies, not in these).
 * syscalls: io_uring_submit() calls (always with >= 1 SQE queued, so each is
 *   exactly one io_uring_enter) + waiting io_uring_submit_and_wait() calls
 *   (wait_nr >= 1: exactly one io_uring_enter); -EINTR retries count too.
 * Latency histograms: 8 linear sub-buckets per power of two (values below 8
 *   exact); a percentile is the lower bound of the bucket holding the
 *   ceil(p * n)-th smallest sample, clamped to [min, max].
 * --rwmix-read P: each I/O reads with probability P% (own random stream, so
 *   the offsets are those of the same job without it), else writes.
 * cpu_ns: CPU time the engine process used during the loop
 *   (CLOCK_PROCESS_CPUTIME_ID, user + system).  Under QEMU -icount shift=0
 *   one guest nanosecond is one instruction, so cpu_ns / ios is the guest
 *   instructions per I/O spent in the engine's context.
 * Signals: SIGINT/SIGTERM end the job as if --runtime had run out (stop
 *   issuing, drain what is in flight, print); SIGUSR1 is a mark: I/Os
 *   prepared after it are also counted in res_counts_after_mark.  Failed
 *   I/Os never end the job, so a job can run across a hot-unplug.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"

#define HIST_SUB_BITS	3
#define HIST_SUB	(1U << HIST_SUB_BITS)
#define HIST_BUCKETS	(HIST_SUB + (64 - HIST_SUB_BITS) * HIST_SUB)

struct hist {
	uint64_t n, sum, min, max;
	uint64_t b[HIST_BUCKETS];
};

struct bench_state {
	struct hist slat, clat;
	uint64_t rng;
	uint64_t nblocks;
	uint64_t limit;			/* I/Os to issue */
	uint64_t deadline;		/* 0: no --runtime */
	uint64_t issued;
	uint64_t completed;
	uint64_t submit_calls;
	uint64_t wait_calls;
	unsigned int inflight;
	unsigned int queued;
	struct slot **batch;		/* the SQEs of the batch being prepared */
	uint64_t mix_rng;		/* --rwmix-read: read or write */
	uint64_t reads, writes;		/* I/Os issued of each kind */
	uint64_t cpu_ns;
	bool random;
	enum io_kind kind;
};

/* ---- histograms ------------------------------------------------------- */

static unsigned int hist_index(uint64_t v)
{
	unsigned int k;

	if (v < HIST_SUB)
		return (unsigned int)v;
	k = 63U - (unsigned int)__builtin_clzll(v);
	return HIST_SUB + (k - HIST_SUB_BITS) * HIST_SUB +
	       (unsigned int)((v >> (k - HIST_SUB_BITS)) & (HIST_SUB - 1));
}

static uint64_t hist_lo(unsigned int i)
{
	unsigned int k, sub;

	if (i < HIST_SUB)
		return i;
	k = (i - HIST_SUB) / HIST_SUB + HIST_SUB_BITS;
	sub = (i - HIST_SUB) % HIST_SUB;
	return (uint64_t)(HIST_SUB + sub) << (k - HIST_SUB_BITS);
}

static void hist_add(struct hist *h, uint64_t v, uint64_t count)
{
	if (!h->n || v < h->min)
		h->min = v;
	if (v > h->max)
		h->max = v;
	h->n += count;
	h->sum += v * count;
	h->b[hist_index(v)] += count;
}

/* The (num/den)-quantile, see the top of the file. */
static uint64_t hist_quantile(const struct hist *h, uint64_t num, uint64_t den)
{
	uint64_t rank = (h->n * num + den - 1) / den, cum = 0, v;
	unsigned int i;

	if (!h->n)
		return 0;
	if (!rank)
		rank = 1;
	for (i = 0; i < HIST_BUCKETS; i++) {
		cum += h->b[i];
		if (cum >= rank)
			break;
	}
	v = i < HIST_BUCKETS ? hist_lo(i) : h->max;
	return v < h->min ? h->min : v > h->max ? h->max : v;
}

static void print_hist(const char *name, const struct hist *h)
{
	const char *sep = "";
	unsigned int i;

	printf(", \"%s\": {\"p50\": %" PRIu64 ", \"p90\": %" PRIu64 ", \"p99\": %" PRIu64
	       ", \"p999\": %" PRIu64, name, hist_quantile(h, 500, 1000),
	       hist_quantile(h, 900, 1000), hist_quantile(h, 990, 1000),
	       hist_quantile(h, 999, 1000));
	printf(", \"min\": %" PRIu64 ", \"max\": %" PRIu64 ", \"mean\": %" PRIu64
	       ", \"samples\": %" PRIu64 ", \"buckets_per_octave\": %u, \"hist\": [",
	       h->min, h->max, h->n ? h->sum / h->n : 0, h->n, HIST_SUB);
	for (i = 0; i < HIST_BUCKETS; i++) {
		if (!h->b[i])
			continue;
		printf("%s[%" PRIu64 ", %" PRIu64 "]", sep, hist_lo(i), h->b[i]);
		sep = ", ";
	}
	fputs("]}", stdout);
}

/* ---- signals ---------------------------------------------------------- */

static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t mark_requested;

static void on_stop(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static void on_mark(int sig)
{
	(void)sig;
	mark_requested = 1;
}

/* No SA_RESTART: a wait in io_uring_enter sees EINTR and is retried. */
static int install_signals(const struct job *job)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_stop;
	if (sigaction(SIGINT, &sa, NULL) || sigaction(SIGTERM, &sa, NULL)) {
		setup_error("cannot install signal handlers for", job->path, errno);
		return -1;
	}
	sa.sa_handler = on_mark;
	if (sigaction(SIGUSR1, &sa, NULL)) {
		setup_error("cannot install signal handlers for", job->path, errno);
		return -1;
	}
	return 0;
}

/* ---- setup ------------------------------------------------------------ */

int bench_setup(struct engine *e)
{
	const struct job *job = e->job;
	struct bench_state *b = calloc(1, sizeof(*b));
	unsigned int i;

	if (b)
		b->batch = calloc(job->batch_submit, sizeof(*b->batch));
	if (!b || !b->batch) {
		setup_error("out of memory for", job->path, ENOMEM);
		free(b);
		return -1;
	}
	if (install_signals(job)) {
		free(b->batch);
		free(b);
		return -1;
	}
	b->random = job->op == OP_RANDREAD || job->op == OP_RANDWRITE;
	b->kind = job->op == OP_RANDWRITE || job->op == OP_WRITE ? IO_WRITE : IO_READ;
	b->nblocks = job->length / job->bs;
	b->rng = splitmix64(job->seed) ? splitmix64(job->seed) : 1;
	b->limit = job->ios ? job->ios : job->runtime_ns ? UINT64_MAX : b->nblocks;
	b->mix_rng = splitmix64(job->seed ^ 0x6d6978ULL) ? splitmix64(job->seed ^ 0x6d6978ULL) : 1;
	if (job->have_rwmix)
		b->kind = job->rwmix_read == 100 ? IO_READ : IO_WRITE;
	/* Written data is not checked: one pattern per buffer, made once. */
	for (i = 0; b->kind == IO_WRITE && i < job->qd; i++)
		fill_pattern(e->slots[i].buf, 0, (uint32_t)job->bs, job->seed);
	e->bench = b;
	return 0;
}

void bench_teardown(struct engine *e)
{
	if (!e->bench)
		return;
	free(e->bench->batch);
	free(e->bench);
	e->bench = NULL;
}

/* ---- the loop --------------------------------------------------------- */

static uint64_t next_offset(struct engine *e, uint64_t seq)
{
	struct bench_state *b = e->bench;
	uint64_t blk = b->random ? xorshift64s(&b->rng) % b->nblocks : seq % b->nblocks;

	return e->job->offset + blk * e->job->bs;
}

static void prep_batch(struct engine *e)
{
	struct bench_state *b = e->bench;
	struct io_uring_sqe *sqe;
	struct slot *s;

	while (b->queued < e->job->batch_submit &&
	       b->inflight + b->queued < e->job->qd && b->issued < b->limit) {
		sqe = io_uring_get_sqe(&e->ring);
		if (!sqe)
			break;
		s = e->free_slots[--e->nr_free];
		s->kind = b->kind;
		if (e->job->have_rwmix)
			s->kind = xorshift64s(&b->mix_rng) % 100 < e->job->rwmix_read ?
				  IO_READ : IO_WRITE;
		if (s->kind == IO_READ)
			b->reads++;
		else
			b->writes++;
		s->tgt = 0;
		s->seq = b->issued++;
		s->offset = next_offset(e, s->seq);
		s->len = (uint32_t)e->job->bs;
		s->nranges = 0;
		s->after_mark = mark_requested;
		prep_io(e, sqe, s);
		b->batch[b->queued++] = s;
	}
}

/* Submit the batch; @t0 is when its preparation started. */
static int submit_batch(struct engine *e, uint64_t t0)
{
	struct bench_state *b = e->bench;
	unsigned int done = 0, i;
	uint64_t t1;
	int ret;

	while (done < b->queued) {
		ret = io_uring_submit(&e->ring);
		b->submit_calls++;
		if (ret == -EINTR)
			continue;
		if (ret <= 0) {
			runtime_error(e, ret ? -ret : EAGAIN);
			return -1;
		}
		done += (unsigned int)ret;
	}
	t1 = now_ns();
	if (!b->queued)
		return 0;
	hist_add(&b->slat, (t1 - t0) / b->queued, b->queued);
	for (i = 0; i < b->queued; i++)
		b->batch[i]->t_submit = t1;
	b->inflight += b->queued;
	b->queued = 0;
	return 0;
}

static int wait_completions(struct engine *e)
{
	struct bench_state *b = e->bench;
	unsigned int nr = e->job->batch_complete < b->inflight ?
			  e->job->batch_complete : b->inflight;
	int ret;

	if (io_uring_cq_ready(&e->ring) >= nr)
		return 0;
	do {
		ret = io_uring_submit_and_wait(&e->ring, nr);
		b->wait_calls++;
	} while (ret == -EINTR);
	if (ret < 0) {
		runtime_error(e, -ret);
		return -1;
	}
	return 0;
}

static void complete_io(struct engine *e, struct slot *s, int res, uint64_t t)
{
	struct bench_state *b = e->bench;

	hist_add(&b->clat, t - s->t_submit, 1);
	count_res(&e->st.res_counts, res);
	if (s->after_mark)
		count_res(&e->st.res_after_mark, res);
	if (io_ok(e, s, res))
		e->st.bytes += s->len;
	else
		record_error(&e->st, s, s->seq, res);
	b->completed++;
	b->inflight--;
	e->free_slots[e->nr_free++] = s;
}

/* Reap up to --batch-complete CQEs from the ring, without a syscall. */
static void reap(struct engine *e)
{
	struct io_uring_cqe *cqe;
	unsigned int head, n = 0;
	uint64_t t;

	if (!io_uring_cq_ready(&e->ring))
		return;
	t = now_ns();
	io_uring_for_each_cqe(&e->ring, head, cqe) {
		complete_io(e, io_uring_cqe_get_data(cqe), cqe->res, t);
		if (++n == e->job->batch_complete)
			break;
	}
	io_uring_cq_advance(&e->ring, n);
}

static bool more_ios(const struct bench_state *b, uint64_t t)
{
	return b->issued < b->limit && (!b->deadline || t < b->deadline) &&
	       !stop_requested;
}

static uint64_t cpu_time_ns(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts))
		return 0;
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int bench_run(struct engine *e)
{
	struct bench_state *b = e->bench;
	uint64_t cpu0 = cpu_time_ns(), start = now_ns(), t;
	bool more;

	if (e->job->runtime_ns)
		b->deadline = start + e->job->runtime_ns;
	for (;;) {
		t = now_ns();
		more = more_ios(b, t);
		if (more && b->inflight < e->job->qd) {
			prep_batch(e);
			if (submit_batch(e, t))
				return -1;
		}
		if (!b->inflight && !more)
			break;
		if ((!more || b->inflight >= e->job->qd) && wait_completions(e))
			return -1;
		reap(e);
	}
	e->st.elapsed_ns = now_ns() - start;
	b->cpu_ns = cpu_time_ns() - cpu0;
	e->st.ios = b->completed;
	return 0;
}

/* ---- output ----------------------------------------------------------- */

void bench_print(const struct engine *e)
{
	const struct bench_state *b = e->bench;
	double secs = e->st.elapsed_ns ? (double)e->st.elapsed_ns / 1e9 : 1e-9;
	uint64_t sys = b->submit_calls + b->wait_calls;
	uint64_t good = b->completed - e->st.errors;	/* iops counts these */

	printf(", \"runtime_ns\": %" PRIu64 ", \"stopped\": %s, \"marked\": %s",
	       e->job->runtime_ns, stop_requested ? "true" : "false",
	       mark_requested ? "true" : "false");
	print_res_counts("res_counts_after_mark", &e->st.res_after_mark);
	fputs(", \"bench\": {", stdout);
	printf("\"iops\": %.1f, \"bw_bytes_s\": %.0f, \"ios\": %" PRIu64
	       ", \"elapsed_ns\": %" PRIu64, (double)good / secs,
	       (double)e->st.bytes / secs, b->completed, e->st.elapsed_ns);
	printf(", \"syscalls\": %" PRIu64 ", \"syscalls_per_io\": %.4f"
	       ", \"submit_calls\": %" PRIu64 ", \"wait_calls\": %" PRIu64,
	       sys, b->completed ? (double)sys / (double)b->completed : 0.0,
	       b->submit_calls, b->wait_calls);
	printf(", \"batch_submit\": %u, \"batch_complete\": %u, \"random\": %s",
	       e->job->batch_submit, e->job->batch_complete,
	       b->random ? "true" : "false");
	printf(", \"buffered\": %s, \"rwmix_read\": ", e->job->buffered ? "true" : "false");
	if (e->job->have_rwmix)
		printf("%u", e->job->rwmix_read);
	else
		fputs("null", stdout);
	printf(", \"reads\": %" PRIu64 ", \"writes\": %" PRIu64 ", \"cpu_ns\": %" PRIu64
	       ", \"cpu_ns_per_io\": %.1f", b->reads, b->writes, b->cpu_ns,
	       b->completed ? (double)b->cpu_ns / (double)b->completed : 0.0);
	print_hist("slat", &b->slat);
	print_hist("clat", &b->clat);
	putchar('}');
}
