"""Write a finding out as a standalone C program over liburing.

The program carries the shrunk step list as a table, runs it on the char device
given on its command line (``./repro /dev/vdbc0``) exactly as the guest executor
lays it out (ring flags, open mode, buffer kinds, iovecs, ranges, links,
IOSQE_ASYNC), and compares every cqe->res with what the errno table accepts and
every read with the data the program's own earlier steps must have left (reads of
sectors the program did not write are not judged). It prints one line per step and
exits 1 if anything differs from the contract, 0 if nothing does.

``expected_plan`` is the contract run forward on the host: which results each step
must get and which data each read must find, assuming every earlier step got what
the table says.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import DiskModel
from .program import BUF_KINDS, T_IN, Program, Step
from .table import ECANCELED, Caller, DiskConfig, data_bytes, effects, expect

ANY = -4  # any tag
NONE = -3  # no alternative


@dataclass(frozen=True)
class Planned:
    accepted: tuple[int, ...]
    describe: str
    tags: tuple[tuple[int, int], ...] | None  # per sector (tag, alternative) for reads, or None


def expected_plan(program: Program, disk: DiskConfig, caller: Caller | None = None) -> list[Planned]:
    caller = caller or Caller.of(program)
    model = DiskModel(disk.capacity, initial_known=False)
    chain_of = {i: n for n, chain in enumerate(program.chains()) for i in chain}
    broken: set[int] = set()
    plan: list[Planned] = []
    for i, step in enumerate(program.steps):
        if chain_of[i] in broken:
            plan.append(Planned((-ECANCELED,), "-ECANCELED (linked to a failed command)", None))
            continue
        exp = expect(step, program, disk, caller)
        tags = None
        if step.type == T_IN and 0 in exp.accepted and data_bytes(step):
            tags = []
            for s in range(step.sector, step.sector + data_bytes(step) // 512):
                a = model.allowed(s)
                if a is None or len(a) > 2:
                    tags.append((ANY, NONE))
                else:
                    v = sorted(a)
                    tags.append((v[0], v[1] if len(v) > 1 else NONE))
            tags = tuple(tags)
        plan.append(Planned(tuple(sorted(exp.accepted)), f"{exp.describe()} ({', '.join(exp.rules)})", tags))
        if 0 not in exp.accepted:
            broken.add(chain_of[i])
        elif exp.accepted == frozenset({0}):
            for kind, sector, count, seed in effects(step, disk):
                model.apply(kind, sector, count, seed)
        else:  # success or a refusal both allowed: the outcome is not known
            for _, sector, count, _ in effects(step, disk):
                model.forget(sector, count)
    return plan


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _step_c(i: int, step: Step, p: Planned) -> tuple[str, str]:
    """(static arrays, initializer) for one step."""
    arrays = []
    iov = rng = acc = tags = "NULL"
    if step.iov:
        arrays.append(f"static const uint32_t iov{i}[] = {{{', '.join(map(str, step.iov))}}};")
        iov = f"iov{i}"
    if step.ranges:
        body = ", ".join(f"{{{s}ULL, {n}U, {f}U}}" for s, n, f in step.ranges)
        arrays.append(f"static const struct vblk_range ranges{i}[] = {{{body}}};")
        rng = f"ranges{i}"
    arrays.append(f"static const int acc{i}[] = {{{', '.join(map(str, p.accepted))}}};")
    acc = f"acc{i}"
    if p.tags:
        arrays.append(f"static const int64_t tags{i}[][2] = {{{', '.join(f'{{{a}, {b}}}' for a, b in p.tags)}}};")
        tags = f"tags{i}"
    init = (f"\t{{ {step.cmd_op}U, {step.type}U, {step.ioprio}U, {step.flag}U, {step.sector}ULL, {step.len}U, "
            f"{int(step.data_len is not None)}, {step.data_len or 0}U, {BUF_KINDS.index(step.buf)}, "
            f"{len(step.iov)}, {iov}, {len(step.ranges)}, {rng}, {step.seed}ULL, {int(step.link)}, "
            f"{int(step.async_)}, {acc}, {len(p.accepted)}, {_c_string(p.describe)}, {tags}, "
            f"{len(p.tags) if p.tags else 0} }},")
    return "\n".join(arrays), init


def write_repro_c(program: Program, disk: DiskConfig, title: str, caller: Caller | None = None) -> str:
    plan = expected_plan(program, disk, caller)
    arrays, inits = [], []
    for i, (step, p) in enumerate(zip(program.steps, plan)):
        a, init = _step_c(i, step, p)
        arrays.append(a)
        inits.append(init)
    comment = "\n".join(" * " + line for line in program.text().splitlines())
    return (_TEMPLATE
            .replace("@TITLE@", title.replace("*/", "* /"))
            .replace("@PROGRAM@", comment.replace("*/", "* /"))
            .replace("@SQE128@", "1" if program.sqe == 128 else "0")
            .replace("@IOPOLL@", str(int(program.iopoll)))
            .replace("@SQPOLL@", str(int(program.sqpoll)))
            .replace("@SCRIBBLE@", str(int(program.scribble)))
            .replace("@MODE@", {"rw": "O_RDWR", "ro": "O_RDONLY", "wo": "O_WRONLY"}[program.mode])
            .replace("@USER@", "-1" if program.user is None else str(program.user))
            .replace("@M32@", " -m32" if program.abi == "i386" else "")
            .replace("@ARRAYS@", "\n".join(arrays))
            .replace("@STEPS@", "\n".join(inits)))


_TEMPLATE = r"""// SPDX-License-Identifier: GPL-2.0-only
/*
 * Reproducer written by `vblk-ci fuzz` for:
 *   @TITLE@
 *
 * Build: gcc@M32@ -O2 -Wall -o repro repro.c -luring      (add -static for the guest)
 * Run:   ./repro /dev/vdXc0 [REPEAT]   (as root, in a guest with the driver; the program runs
 *        up to REPEAT times, default 20, until a round differs; with USER_ID >= 0 it
 *        becomes that user, no groups, before it opens anything: the node must be theirs)
 * Exit:  1 if any step's cqe->res or read data differs from the errno table
 *        (the v3 contract), 0 if every step got what the table says.
 *
 * The program it was shrunk to (the `vblk-ci fuzz --replay` format):
@PROGRAM@
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <liburing.h>

/* A 128-byte SQE is twice struct io_uring_sqe: gcc's object-size checks cannot know. */
#pragma GCC diagnostic ignored "-Wstringop-overflow"
#pragma GCC diagnostic ignored "-Warray-bounds"

#define SQE128		@SQE128@
#define IOPOLL		@IOPOLL@
#define SQPOLL		@SQPOLL@
#define SCRIBBLE	@SCRIBBLE@	/* overwrite the SQ slots once the kernel consumed them */
#define OPEN_MODE	@MODE@
#define USER_ID		@USER@		/* run as this uid = gid (no capabilities); -1: as started */
#define MAX_CHAIN	8
#define STEP_BYTES	(256U << 10)
#define SLOT_BYTES	(STEP_BYTES + 8192U)
#define FIXED_BYTES	(MAX_CHAIN * STEP_BYTES)
#define MAX_IOV		1100
#define SQE_CMD_OFFSET	48
#define TAG_ANY		(-4)
#define TAG_NONE	(-3)

enum { BUF_ALIGNED, BUF_MISALIGNED, BUF_UNMAPPED, BUF_NULL, BUF_FIXED, BUF_FIXED_OOB };

struct vblk_uring_cmd {	/* struct virtblk_uring_cmd */
	uint32_t type, ioprio;
	uint64_t sector, data;
	uint32_t data_len, flag;
};

struct vblk_range {	/* struct virtio_blk_discard_write_zeroes (x86: little-endian) */
	uint64_t sector;
	uint32_t num_sectors, flags;
};

struct step {
	uint32_t cmd_op, type, ioprio, flag;
	uint64_t sector;
	uint32_t len;
	int have_data_len;
	uint32_t data_len;
	int buf;
	unsigned int niov;
	const uint32_t *iov;
	unsigned int nranges;
	const struct vblk_range *ranges;
	uint64_t seed;
	int link, async;
	const int *accepted;
	unsigned int naccepted;
	const char *expect;
	const int64_t (*tags)[2];
	unsigned int ntags;
};

@ARRAYS@

static const struct step steps[] = {
@STEPS@
};
#define NSTEPS (sizeof(steps) / sizeof(steps[0]))

static uint64_t splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static uint64_t unsplitmix64(uint64_t x)
{
	x ^= x >> 31;
	x ^= x >> 62;
	x *= 0x319642b2d24d8ec3ULL;
	x ^= x >> 27;
	x ^= x >> 54;
	x *= 0x96de1b173f119089ULL;
	x ^= x >> 30;
	x ^= x >> 60;
	return x - 0x9e3779b97f4a7c15ULL;
}

/* the vblk-engine pattern: word at byte offset o is splitmix64(seed ^ (o / 8)) */
static uint64_t pattern_word(uint64_t seed, uint64_t off)
{
	return splitmix64(seed ^ (off / 8));
}

/* 0 zeroes, -2 untouched poison, the pattern's seed, or -1 anything else */
static int64_t sector_tag(const unsigned char *p, uint64_t off)
{
	uint64_t w[64], seed;
	int zero = 1, poison = 1;
	unsigned int i;

	memcpy(w, p, sizeof(w));
	for (i = 0; i < 64; i++) {
		zero &= w[i] == 0;
		poison &= w[i] == 0xa5a5a5a5a5a5a5a5ULL;
	}
	if (zero)
		return 0;
	if (poison)
		return -2;
	seed = unsplitmix64(w[0]) ^ (off / 8);
	if (!seed || seed > INT64_MAX)
		return -1;
	for (i = 1; i < 64; i++)
		if (w[i] != pattern_word(seed, off + i * 8))
			return -1;
	return (int64_t)seed;
}

static unsigned char *slots, *fixedbuf, *data[MAX_CHAIN];
static struct iovec iovs[MAX_CHAIN][MAX_IOV];
static uint32_t bytes[MAX_CHAIN];
static void *bad_addr;

static void *map(size_t n)
{
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	return p;
}

static void fill(const struct step *s, unsigned char *d, uint32_t n)
{
	uint32_t i;

	if (s->nranges) {
		memcpy(d, s->ranges, n < s->nranges * 16 ? n : s->nranges * 16);
		return;
	}
	if (s->type == 1) {
		for (i = 0; i + 8 <= n; i += 8) {
			uint64_t w = pattern_word(s->seed, s->sector * 512 + i);

			memcpy(d + i, &w, 8);
		}
		return;
	}
	memset(d, 0xa5, n);
}

static uint64_t layout(const struct step *s, unsigned int pos)
{
	unsigned char *base = slots + (size_t)pos * SLOT_BYTES;
	unsigned int i;

	if (s->buf == BUF_FIXED || s->buf == BUF_FIXED_OOB)
		base = fixedbuf + (size_t)pos * STEP_BYTES;
	if (s->buf == BUF_MISALIGNED)
		base += 8;
	if (s->niov) {
		uint64_t total = 0, off = 0, g = 0;
		unsigned int gap = s->buf == BUF_MISALIGNED && s->niov <= 64 ? 64 : 0;

		for (i = 0; i < s->niov; i++)
			total += s->iov[i];
		if (total > STEP_BYTES)
			total = 0;
		bytes[pos] = (uint32_t)total;
		data[pos] = malloc(total ? total : 1);
		fill(s, data[pos], (uint32_t)total);
		for (i = 0; i < s->niov; i++) {
			iovs[pos][i].iov_len = s->iov[i];
			iovs[pos][i].iov_base = total ? base + off : base;
			if (!total)
				continue;
			memcpy(base + off, data[pos] + g, s->iov[i]);
			g += s->iov[i];
			off += s->iov[i] + gap;
		}
		if (s->buf == BUF_UNMAPPED)
			return (uint64_t)(uintptr_t)bad_addr;
		if (s->buf == BUF_NULL)
			return 0;
		return (uint64_t)(uintptr_t)iovs[pos];
	}
	bytes[pos] = s->nranges ? s->nranges * 16 : s->len;
	data[pos] = s->buf == BUF_FIXED_OOB ? fixedbuf + FIXED_BYTES - 512 : base;
	if (s->buf != BUF_UNMAPPED && s->buf != BUF_NULL && s->buf != BUF_FIXED_OOB)
		fill(s, data[pos], bytes[pos]);
	if (s->buf == BUF_UNMAPPED)
		return (uint64_t)(uintptr_t)bad_addr;
	if (s->buf == BUF_NULL)
		return 0;
	return (uint64_t)(uintptr_t)data[pos];
}

static void gather(const struct step *s, unsigned int pos)
{
	uint64_t g = 0;
	unsigned int i;

	if (!s->niov || !bytes[pos])
		return;
	for (i = 0; i < s->niov; i++) {
		memcpy(data[pos] + g, iovs[pos][i].iov_base, s->iov[i]);
		g += s->iov[i];
	}
}

static int judge(unsigned int idx, const struct step *s, unsigned int pos, int res)
{
	unsigned int i, ok = 0;

	for (i = 0; i < s->naccepted; i++)
		ok |= s->accepted[i] == res;
	printf("step %u: cqe->res %d, expected %s%s\n", idx, res, s->expect, ok ? "" : "  <-- DIFFERS");
	if (!ok)
		return 1;
	if (res || !s->tags)
		return 0;
	for (i = 0; i < s->ntags && (i + 1) * 512 <= bytes[pos]; i++) {
		int64_t t = sector_tag(data[pos] + (size_t)i * 512, (s->sector + i) * 512);

		if (s->tags[i][0] == TAG_ANY || t == s->tags[i][0] || t == s->tags[i][1])
			continue;
		printf("step %u: sector %llu holds tag %lld, expected %lld  <-- DIFFERS\n", idx,
		       (unsigned long long)(s->sector + i), (long long)t, (long long)s->tags[i][0]);
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct io_uring_params p;
	struct io_uring ring;
	struct iovec reg;
	unsigned int i = 0, bad = 0, iter, repeat = 20;
	int fd, ret;

	if (argc != 2 && argc != 3) {
		fprintf(stderr, "usage: %s /dev/vdXc0 [REPEAT (default 20)]\n", argv[0]);
		return 2;
	}
	if (argc == 3)
		repeat = (unsigned int)strtoul(argv[2], NULL, 0);
	if (USER_ID >= 0 && (setgroups(0, NULL) || setgid(USER_ID) || setuid(USER_ID))) {
		perror("setuid");
		return 2;
	}
	fd = open(argv[1], OPEN_MODE | O_CLOEXEC);
	if (fd < 0) {
		perror(argv[1]);
		return 2;
	}
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQE32;
	if (SQE128)
		p.flags |= IORING_SETUP_SQE128;
	if (IOPOLL)
		p.flags |= IORING_SETUP_IOPOLL;
	if (SQPOLL) {
		p.flags |= IORING_SETUP_SQPOLL;
		p.sq_thread_idle = 100;
	}
	ret = io_uring_queue_init_params(16, &ring, &p);
	if (ret < 0) {
		fprintf(stderr, "io_uring_queue_init_params: %s\n", strerror(-ret));
		return 2;
	}
	slots = map((size_t)MAX_CHAIN * SLOT_BYTES);
	fixedbuf = map(FIXED_BYTES);
	/* inaccessible but kept mapped: a freed page could come back as ring memory */
	bad_addr = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	reg.iov_base = fixedbuf;
	reg.iov_len = FIXED_BYTES;
	ret = io_uring_register_buffers(&ring, &reg, 1);
	if (ret < 0) {
		fprintf(stderr, "io_uring_register_buffers: %s\n", strerror(-ret));
		return 2;
	}
	/* a race (a late SQE read, a completion order) may need several rounds */
	for (iter = 0; iter < repeat && !bad; iter++)
	for (i = 0; i < NSTEPS;) {
		unsigned int n = 0, got = 0, first = i;
		struct io_uring_sqe *sqes[MAX_CHAIN];
		int res[MAX_CHAIN];

		/* one linked chain at a time, as the fuzzer's executor does */
		do {
			const struct step *s = &steps[i];
			struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
			struct vblk_uring_cmd cmd;

			memset(&cmd, 0, sizeof(cmd));
			cmd.type = s->type;
			cmd.ioprio = s->ioprio;
			cmd.sector = s->sector;
			cmd.flag = s->flag;
			cmd.data = layout(s, n);
			cmd.data_len = s->niov ? s->niov : bytes[n];
			if (s->have_data_len)
				cmd.data_len = s->data_len;
			memset(sqe, 0, SQE128 ? 128 : 64);
			sqe->opcode = IORING_OP_URING_CMD;
			sqe->fd = fd;
			sqe->cmd_op = s->cmd_op;
			sqe->user_data = n;
			if (s->buf == BUF_FIXED || s->buf == BUF_FIXED_OOB)
				sqe->uring_cmd_flags = IORING_URING_CMD_FIXED;
			if (s->link && n + 1 < MAX_CHAIN && i + 1 < NSTEPS)
				sqe->flags |= IOSQE_IO_LINK;
			if (s->async)
				sqe->flags |= IOSQE_ASYNC;
			memcpy((unsigned char *)sqe + SQE_CMD_OFFSET, &cmd, SQE128 ? sizeof(cmd) : 16);
			sqes[n] = sqe;
			n++;
			i++;
		} while (steps[i - 1].link && n < MAX_CHAIN && i < NSTEPS);
		ret = io_uring_submit(&ring);
		if (ret < 0) {
			fprintf(stderr, "io_uring_submit: %s\n", strerror(-ret));
			return 2;
		}
		if (SCRIBBLE) {
			while (SQPOLL && io_uring_sq_ready(&ring))
				;
			for (got = 0; got < n; got++)
				memset(sqes[got], 0xa5, SQE128 ? 128 : 64);
			got = 0;
		}
		while (got < n) {
			struct io_uring_cqe *cqe;

			ret = io_uring_wait_cqe(&ring, &cqe);
			if (ret < 0) {
				fprintf(stderr, "io_uring_wait_cqe: %s\n", strerror(-ret));
				return 2;
			}
			res[cqe->user_data] = cqe->res;
			got++;
			io_uring_cqe_seen(&ring, cqe);
		}
		for (got = 0; got < n; got++) {
			if (steps[first + got].niov && res[got] == 0)
				gather(&steps[first + got], got);
			bad += judge(first + got, &steps[first + got], got, res[got]);
			if (steps[first + got].niov)
				free(data[got]);
		}
	}
	printf("%s: %u of %zu steps differ from the contract (round %u of %u)\n",
	       bad ? "REPRODUCED" : "not reproduced", bad, (size_t)NSTEPS, iter, repeat);
	return bad ? 1 : 0;
}
"""
