// SPDX-License-Identifier: GPL-2.0-only
/*
 * vblk-engine - run one io_uring job against a virtio-blk disk.
 *
 * A character device (/dev/vdXc0) is driven through IORING_OP_URING_CMD
 * with struct virtblk_uring_cmd in the SQE; anything else (block device
 * or regular file) through O_DIRECT IORING_OP_READ/WRITE and friends.
 * The job prints exactly one JSON object on stdout.  See
 * guest-agent/PROTOCOL.md.
 *
 * Files: args.c (command line), setup.c (targets, ring, buffers), prep.c
 * (SQEs for both paths), basic.c (write/read/verify/flush/get-id/discard/
 * write-zeroes), mix.c (randomised verified mix), bench.c (benchmarks),
 * output.c (JSON), link.c (--link chains), scribble.c (--scribble).
 *
 * Exit codes: 0 the job ran (I/O errors and mismatches are data),
 * 1 the ring failed in the middle of the job, 2 bad usage,
 * 3 the target could not be opened (also as --uid/--gid: EACCES) or the
 * ring/buffers set up, or the ids could not be switched.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "engine.h"

const char *const op_names[OP_COUNT] = {
	[OP_READ] = "read", [OP_WRITE] = "write", [OP_VERIFY] = "verify",
	[OP_FLUSH] = "flush", [OP_GET_ID] = "get-id", [OP_DISCARD] = "discard",
	[OP_WZEROES] = "write-zeroes", [OP_MIX] = "mix",
	[OP_RANDREAD] = "randread", [OP_RANDWRITE] = "randwrite",
};

const char *const kind_names[IO_KINDS] = {
	[IO_READ] = "read", [IO_WRITE] = "write", [IO_FLUSH] = "flush",
	[IO_GET_ID] = "get-id", [IO_DISCARD] = "discard",
	[IO_WZEROES] = "write-zeroes",
};

uint64_t splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

uint64_t pattern_word(uint64_t seed, uint64_t offset)
{
	return splitmix64(seed ^ (offset / 8));
}

void fill_pattern(uint64_t *w, uint64_t offset, uint32_t len, uint64_t seed)
{
	uint32_t i;

	for (i = 0; i < len / 8; i++)
		w[i] = pattern_word(seed, offset + (uint64_t)i * 8);
}

/* xorshift64* (Vigna); the state must not be 0. */
uint64_t xorshift64s(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545f4914f6cdd1dULL;
}

uint64_t now_ns(void)
{
	struct timespec ts;

	/* CLOCK_MONOTONIC cannot fail with a valid pointer. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Count an error; keep the one with the lowest @key (first seen on a tie). */
void record_error(struct stats *st, const struct slot *s, uint64_t key, int res)
{
	st->errors++;
	if (st->have_error && st->error_key <= key)
		return;
	st->have_error = true;
	st->error_key = key;
	st->error_offset = s->offset;
	st->error_seq = s->seq;
	st->error_tgt = s->tgt;
	st->error_kind = s->kind;
	st->error_res = res;
}

void record_mismatch(struct stats *st, const struct slot *s, uint64_t key,
		     uint64_t off, uint64_t expected, uint64_t got)
{
	st->mismatches++;
	if (st->have_mismatch && st->mismatch_key <= key)
		return;
	st->have_mismatch = true;
	st->mismatch_key = key;
	st->mismatch_offset = off;
	st->mismatch_seq = s->seq;
	st->mismatch_tgt = s->tgt;
	st->mismatch_expected = expected;
	st->mismatch_got = got;
}

/* Count one completion under its cqe->res value. */
void count_res(struct res_counts *rc, int res)
{
	unsigned int i;

	for (i = 0; i < rc->n; i++) {
		if (rc->res[i] == res) {
			rc->count[i]++;
			return;
		}
	}
	if (rc->n == MAX_RES_VALUES) {
		rc->other++;
		return;
	}
	rc->res[rc->n] = res;
	rc->count[rc->n++] = 1;
}

struct mode {
	int (*setup)(struct engine *e);
	int (*run)(struct engine *e);
	void (*print)(const struct engine *e);
	void (*teardown)(struct engine *e);
};

static const struct mode basic_mode = { NULL, basic_run, basic_print, NULL };
static const struct mode mix_mode = { mix_setup, mix_run, mix_print, mix_teardown };
static const struct mode bench_mode = {
	bench_setup, bench_run, bench_print, bench_teardown,
};
static const struct mode link_mode = { link_setup, link_run, link_print, link_teardown };

static const struct mode *job_mode(const struct job *job)
{
	if (job->op == OP_MIX)
		return &mix_mode;
	if (job->link)
		return &link_mode;
	if (job->bench)
		return &bench_mode;
	return &basic_mode;
}

/*
 * Returns an exit code.  The ring and the targets are closed before the
 * result is printed, so "close_ok" can say how close() went.
 */
static int run_job(struct engine *e)
{
	const struct mode *m = job_mode(e->job);
	int ret = EXIT_JOB_RAN;

	if (m->setup && m->setup(e))
		return EXIT_SETUP;
	if (m->run(e)) {
		ret = EXIT_RUNTIME;
	} else {
		engine_close(e);
		print_result_head(e);
		m->print(e);
		if (print_result_tail())
			ret = EXIT_RUNTIME;
	}
	if (m->teardown)
		m->teardown(e);
	return ret;
}

int main(int argc, char **argv)
{
	struct engine e;
	struct job job;
	int ret;

	/* vblk-ci fuzz: a program of raw uring_cmd steps (fuzz.c) */
	if (argc > 1 && !strcmp(argv[1], "--program"))
		return fuzz_main(argc, argv);
	/* the module suite: load virtio_blk with allocation failures (failnth.c) */
	if (argc > 1 && !strcmp(argv[1], "--load-module"))
		return load_module_main(argc, argv);
	if (parse_args(argc, argv, &job))
		return EXIT_USAGE;
	ret = engine_setup(&e, &job);
	if (ret)
		return ret;
	ret = run_job(&e);
	engine_teardown(&e);
	return ret;
}
