// SPDX-License-Identifier: GPL-2.0-only
/*
 * vblk-engine - run one io_uring job against a virtio-blk disk.
 *
 * A character device (/dev/vdXc0) is driven through IORING_OP_URING_CMD
 * with struct virtblk_uring_cmd in the SQE; anything else (block device
 * or regular file) through O_DIRECT IORING_OP_READ/WRITE.  The job prints
 * exactly one JSON object on stdout.  See guest-agent/PROTOCOL.md.
 *
 * Exit codes: 0 the job ran (I/O errors and mismatches are data),
 * 1 the ring failed in the middle of the job, 2 bad usage,
 * 3 the target could not be opened or the ring/buffers set up.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <liburing.h>

/* The user ABI of the passthrough driver; system headers do not carry it. */
#ifndef VIRTBLK_URING_CMD_IO
#define VIRTBLK_URING_CMD_IO		1
#endif
#ifndef VIRTBLK_URING_CMD_IO_VEC
#define VIRTBLK_URING_CMD_IO_VEC	2
#endif
#ifndef VIRTIO_BLK_T_IN
#define VIRTIO_BLK_T_IN			0
#endif
#ifndef VIRTIO_BLK_T_OUT
#define VIRTIO_BLK_T_OUT		1
#endif
#ifndef IORING_SETUP_SQE128
#define IORING_SETUP_SQE128		(1U << 10)
#endif
#ifndef IORING_SETUP_CQE32
#define IORING_SETUP_CQE32		(1U << 11)
#endif

/* Local name: a struct cannot be #ifndef-guarded against a system header. */
struct vblk_uring_cmd {
	uint32_t type;
	uint32_t ioprio;
	uint64_t sector;
	uint64_t data;
	uint32_t data_len;
	uint32_t flag;
};
_Static_assert(sizeof(struct vblk_uring_cmd) == 32, "uapi struct is 32 bytes");

#define SQE_CMD_OFFSET		48	/* sqe->cmd within a 64/128-byte SQE */
#define SQE64_CMD_BYTES		16	/* what fits in a 64-byte SQE */
#define SECTOR_SIZE		512
#define BUF_ALIGN		4096
#define MAX_QD			4096
#define MAX_BS			(64ULL << 20)
#define MAX_RESULTS		16
#define READ_POISON		0xa5

enum exit_code {
	EXIT_JOB_RAN	= 0,
	EXIT_RUNTIME	= 1,
	EXIT_USAGE	= 2,
	EXIT_SETUP	= 3,
};

enum job_op { OP_READ, OP_WRITE, OP_VERIFY };

static const char *const op_names[] = {
	[OP_READ] = "read", [OP_WRITE] = "write", [OP_VERIFY] = "verify",
};

struct job {
	const char *path;
	enum job_op op;
	uint64_t offset;
	uint64_t length;
	uint64_t bs;
	uint64_t seed;
	unsigned int qd;
	bool have_length;
	bool sqe64;
	bool expect_error;
	bool rdonly;
};

struct slot {
	void *buf;
	uint64_t index;		/* I/O number within the job */
	uint64_t offset;	/* absolute byte offset on the target */
	uint32_t len;
};

struct stats {
	uint64_t ios;
	uint64_t bytes;
	uint64_t errors;
	uint64_t mismatches;
	uint64_t elapsed_ns;
	bool have_error;
	uint64_t error_offset;
	int error_res;
	bool have_mismatch;
	uint64_t mismatch_offset;
	uint64_t mismatch_expected;
	uint64_t mismatch_got;
	int results[MAX_RESULTS];
};

struct engine {
	const struct job *job;
	int fd;
	bool passthru;
	bool ring_ready;
	struct io_uring ring;
	struct slot *slots;
	struct slot **free_slots;
	unsigned int nr_free;
	struct stats st;
};

static uint64_t splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static uint64_t pattern_word(uint64_t seed, uint64_t offset)
{
	return splitmix64(seed ^ (offset / 8));
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	/* CLOCK_MONOTONIC cannot fail with a valid pointer. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- argument parsing ------------------------------------------------ */

#define USAGE "usage: vblk-engine --path PATH --op write|read|verify" \
	" [--offset BYTES] [--length BYTES] [--bs BYTES] [--qd N] [--seed N]" \
	" [--sqe64] [--expect-error] [--rdonly]"

/* One stderr line: what is wrong, then the usage in parentheses. */
static void usage_error(const char *fmt, const char *arg)
{
	fputs("vblk-engine: ", stderr);
	fprintf(stderr, fmt, arg);
	fputs(" (" USAGE ")\n", stderr);
}

/* Decimal or 0x-hex, with an optional k/m/g suffix (powers of 1024). */
static int parse_u64(const char *s, uint64_t *out)
{
	unsigned long long v;
	unsigned int shift = 0;
	char *end;

	if (!*s || *s == '-' || *s == '+')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s)
		return -EINVAL;
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	default: break;
	}
	if (*end || (shift && v > (UINT64_MAX >> shift)))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

static int parse_op(const char *s, enum job_op *op)
{
	size_t i;

	for (i = 0; i < sizeof(op_names) / sizeof(op_names[0]); i++) {
		if (!strcmp(s, op_names[i])) {
			*op = (enum job_op)i;
			return 0;
		}
	}
	return -EINVAL;
}

enum { OPT_SQE64 = 256, OPT_EXPECT_ERROR, OPT_RDONLY };

static const struct option long_opts[] = {
	{ "path",		required_argument, NULL, 'p' },
	{ "op",			required_argument, NULL, 'o' },
	{ "offset",		required_argument, NULL, 'O' },
	{ "length",		required_argument, NULL, 'l' },
	{ "bs",			required_argument, NULL, 'b' },
	{ "qd",			required_argument, NULL, 'q' },
	{ "seed",		required_argument, NULL, 's' },
	{ "sqe64",		no_argument,	   NULL, OPT_SQE64 },
	{ "expect-error",	no_argument,	   NULL, OPT_EXPECT_ERROR },
	{ "rdonly",		no_argument,	   NULL, OPT_RDONLY },
	{ NULL, 0, NULL, 0 },
};

static uint64_t *number_target(struct job *job, int opt)
{
	switch (opt) {
	case 'O': return &job->offset;
	case 'l': return &job->length;
	case 'b': return &job->bs;
	case 's': return &job->seed;
	default: return NULL;
	}
}

static int apply_option(struct job *job, int opt, const char *arg)
{
	uint64_t *num = number_target(job, opt);
	uint64_t qd;

	if (num) {
		if (parse_u64(arg, num)) {
			usage_error("bad number '%s'", arg);
			return -EINVAL;
		}
		if (opt == 'l')
			job->have_length = true;
		return 0;
	}
	switch (opt) {
	case 'p':
		job->path = arg;
		return 0;
	case 'o':
		if (parse_op(arg, &job->op)) {
			usage_error("--op must be write, read or verify, got '%s'", arg);
			return -EINVAL;
		}
		return 0;
	case 'q':
		if (parse_u64(arg, &qd) || qd < 1 || qd > MAX_QD) {
			usage_error("--qd must be 1..4096, got '%s'", arg);
			return -EINVAL;
		}
		job->qd = (unsigned int)qd;
		return 0;
	case OPT_SQE64:
		job->sqe64 = true;
		return 0;
	case OPT_EXPECT_ERROR:
		job->expect_error = true;
		return 0;
	case OPT_RDONLY:
		job->rdonly = true;
		return 0;
	}
	return -EINVAL;
}

static int check_job(struct job *job, bool have_op)
{
	if (!job->path) {
		usage_error("%s", "--path is required");
		return -EINVAL;
	}
	if (!have_op) {
		usage_error("%s", "--op is required");
		return -EINVAL;
	}
	if (!job->bs || job->bs % 8 || job->bs > MAX_BS) {
		usage_error("%s", "--bs must be a non-zero multiple of 8 up to 64M");
		return -EINVAL;
	}
	if (!job->have_length)
		job->length = job->bs;
	if (!job->length || job->length % 8) {
		usage_error("%s", "--length must be a non-zero multiple of 8");
		return -EINVAL;
	}
	if (job->offset % SECTOR_SIZE) {
		usage_error("%s", "--offset must be a multiple of 512");
		return -EINVAL;
	}
	if (job->offset + job->length < job->offset) {
		usage_error("%s", "--offset + --length overflows");
		return -EINVAL;
	}
	return 0;
}

static int parse_args(int argc, char **argv, struct job *job)
{
	bool have_op = false;
	int opt;

	memset(job, 0, sizeof(*job));
	job->bs = 4096;
	job->qd = 1;
	job->seed = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":", long_opts, NULL)) != -1) {
		if (opt == '?' || opt == ':') {
			usage_error("bad or incomplete option '%s'",
				    argv[optind - 1]);
			return -EINVAL;
		}
		if (apply_option(job, opt, optarg))
			return -EINVAL;
		if (opt == 'o')
			have_op = true;
	}
	if (optind < argc) {
		usage_error("unexpected argument '%s'", argv[optind]);
		return -EINVAL;
	}
	return check_job(job, have_op);
}

/* ---- setup ----------------------------------------------------------- */

static void setup_error(const char *what, const char *path, int err)
{
	fprintf(stderr, "vblk-engine: %s %s: %s\n", what, path, strerror(err));
}

static int open_target(struct engine *e)
{
	const struct job *job = e->job;
	struct stat st;
	int flags;

	e->fd = open(job->path, (job->rdonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (e->fd < 0) {
		setup_error("cannot open", job->path, errno);
		return -1;
	}
	if (fstat(e->fd, &st)) {
		setup_error("cannot stat", job->path, errno);
		return -1;
	}
	if (S_ISCHR(st.st_mode)) {
		e->passthru = true;
		return 0;
	}
	if (!S_ISBLK(st.st_mode) && !S_ISREG(st.st_mode)) {
		setup_error("unsupported file type", job->path, EINVAL);
		return -1;
	}
	/* Set after fstat: a char device open with O_DIRECT fails outright. */
	flags = fcntl(e->fd, F_GETFL);
	if (flags < 0 || fcntl(e->fd, F_SETFL, flags | O_DIRECT) < 0) {
		setup_error("cannot set O_DIRECT on", job->path, errno);
		return -1;
	}
	return 0;
}

static int setup_ring(struct engine *e)
{
	struct io_uring_params p;
	int ret;

	memset(&p, 0, sizeof(p));
	if (e->passthru) {
		p.flags = IORING_SETUP_CQE32;
		if (!e->job->sqe64)
			p.flags |= IORING_SETUP_SQE128;
	}
	ret = io_uring_queue_init_params(e->job->qd, &e->ring, &p);
	if (ret < 0) {
		setup_error("io_uring setup failed for", e->job->path, -ret);
		return -1;
	}
	e->ring_ready = true;
	return 0;
}

static int setup_slots(struct engine *e)
{
	size_t buf_size = (e->job->bs + BUF_ALIGN - 1) & ~(size_t)(BUF_ALIGN - 1);
	unsigned int i;
	int ret;

	e->slots = calloc(e->job->qd, sizeof(*e->slots));
	e->free_slots = calloc(e->job->qd, sizeof(*e->free_slots));
	if (!e->slots || !e->free_slots) {
		setup_error("out of memory for", e->job->path, ENOMEM);
		return -1;
	}
	for (i = 0; i < e->job->qd; i++) {
		ret = posix_memalign(&e->slots[i].buf, BUF_ALIGN, buf_size);
		if (ret) {
			e->slots[i].buf = NULL;
			setup_error("cannot allocate buffers for", e->job->path, ret);
			return -1;
		}
		e->free_slots[e->nr_free++] = &e->slots[i];
	}
	return 0;
}

static void engine_teardown(struct engine *e)
{
	unsigned int i;

	if (e->slots) {
		for (i = 0; i < e->job->qd; i++)
			free(e->slots[i].buf);
	}
	free(e->slots);
	free(e->free_slots);
	if (e->ring_ready)
		io_uring_queue_exit(&e->ring);
	if (e->fd >= 0)
		close(e->fd);
}

static int engine_setup(struct engine *e, const struct job *job)
{
	memset(e, 0, sizeof(*e));
	e->job = job;
	e->fd = -1;
	e->st.ios = (job->length + job->bs - 1) / job->bs;
	if (open_target(e) || setup_ring(e) || setup_slots(e)) {
		engine_teardown(e);
		return -1;
	}
	return 0;
}

/* ---- I/O ------------------------------------------------------------- */

static void fill_pattern(uint64_t *w, uint64_t offset, uint32_t len,
			 uint64_t seed)
{
	uint32_t i;

	for (i = 0; i < len / 8; i++)
		w[i] = pattern_word(seed, offset + (uint64_t)i * 8);
}

static void check_pattern(struct engine *e, const struct slot *s)
{
	const uint64_t *w = s->buf;
	struct stats *st = &e->st;
	uint64_t expected, off;
	uint32_t i;

	for (i = 0; i < s->len / 8; i++) {
		off = s->offset + (uint64_t)i * 8;
		expected = pattern_word(e->job->seed, off);
		if (w[i] == expected)
			continue;
		st->mismatches++;
		if (st->have_mismatch && st->mismatch_offset <= off)
			continue;
		st->have_mismatch = true;
		st->mismatch_offset = off;
		st->mismatch_expected = expected;
		st->mismatch_got = w[i];
	}
}

static void prep_passthru(struct engine *e, struct io_uring_sqe *sqe,
			  const struct slot *s)
{
	struct vblk_uring_cmd cmd;
	size_t sqe_size = e->job->sqe64 ? 64 : 128;
	size_t cmd_bytes = e->job->sqe64 ? SQE64_CMD_BYTES : sizeof(cmd);

	memset(&cmd, 0, sizeof(cmd));
	cmd.type = e->job->op == OP_WRITE ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;
	cmd.sector = s->offset / SECTOR_SIZE;
	cmd.data = (uint64_t)(uintptr_t)s->buf;
	cmd.data_len = s->len;

	memset(sqe, 0, sqe_size);
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = e->fd;
	sqe->cmd_op = VIRTBLK_URING_CMD_IO;
	/* With 64-byte SQEs only 16 bytes fit: the kernel must refuse it. */
	memcpy((unsigned char *)sqe + SQE_CMD_OFFSET, &cmd, cmd_bytes);
}

static int queue_io(struct engine *e, uint64_t index)
{
	const struct job *job = e->job;
	struct io_uring_sqe *sqe = io_uring_get_sqe(&e->ring);
	uint64_t rel = index * job->bs;
	struct slot *s;

	if (!sqe)
		return -EBUSY;
	s = e->free_slots[--e->nr_free];
	s->index = index;
	s->offset = job->offset + rel;
	s->len = (uint32_t)(job->length - rel < job->bs ? job->length - rel : job->bs);
	if (job->op == OP_WRITE)
		fill_pattern(s->buf, s->offset, s->len, job->seed);
	else	/* "got 0xa5a5..." then means no data arrived at all */
		memset(s->buf, READ_POISON, s->len);

	if (e->passthru)
		prep_passthru(e, sqe, s);
	else if (job->op == OP_WRITE)
		io_uring_prep_write(sqe, e->fd, s->buf, s->len, s->offset);
	else
		io_uring_prep_read(sqe, e->fd, s->buf, s->len, s->offset);
	io_uring_sqe_set_data(sqe, s);
	return 0;
}

static void record_error(struct stats *st, uint64_t offset, int res)
{
	st->errors++;
	if (st->have_error && st->error_offset <= offset)
		return;
	st->have_error = true;
	st->error_offset = offset;
	st->error_res = res;
}

static void complete_io(struct engine *e, struct slot *s, int res)
{
	bool ok;

	if (s->index < MAX_RESULTS)
		e->st.results[s->index] = res;
	if (e->passthru)
		ok = res == 0;
	else
		ok = res >= 0 && (uint32_t)res == s->len;
	if (!ok) {
		record_error(&e->st, s->offset, res);
		return;
	}
	e->st.bytes += s->len;
	if (e->job->op == OP_VERIFY)
		check_pattern(e, s);
}

static unsigned int reap_completions(struct engine *e)
{
	struct io_uring_cqe *cqe;
	unsigned int n = 0;
	struct slot *s;

	while (io_uring_peek_cqe(&e->ring, &cqe) == 0) {
		s = io_uring_cqe_get_data(cqe);
		complete_io(e, s, cqe->res);
		io_uring_cqe_seen(&e->ring, cqe);
		e->free_slots[e->nr_free++] = s;
		n++;
	}
	return n;
}

static int engine_run(struct engine *e)
{
	uint64_t next = 0, done = 0, start;
	unsigned int inflight = 0;
	int ret;

	start = now_ns();
	while (done < e->st.ios) {
		while (inflight < e->job->qd && next < e->st.ios) {
			ret = queue_io(e, next);
			if (ret)
				break;
			next++;
			inflight++;
		}
		ret = io_uring_submit_and_wait(&e->ring, 1);
		if (ret < 0 && ret != -EINTR) {
			fprintf(stderr, "vblk-engine: io_uring_enter failed on %s: %s\n",
				e->job->path, strerror(-ret));
			return -1;
		}
		ret = (int)reap_completions(e);
		inflight -= (unsigned int)ret;
		done += (uint64_t)ret;
	}
	e->st.elapsed_ns = now_ns() - start;
	return 0;
}

/* ---- output ---------------------------------------------------------- */

static void print_json_string(const char *s)
{
	const unsigned char *p;

	putchar('"');
	for (p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			printf("\\%c", *p);
		else if (*p < 0x20)
			printf("\\u%04x", *p);
		else
			putchar(*p);
	}
	putchar('"');
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

static int print_result(const struct engine *e)
{
	const struct job *job = e->job;
	const struct stats *st = &e->st;

	fputs("{\"path\": ", stdout);
	print_json_string(job->path);
	printf(", \"mode\": \"%s\", \"op\": \"%s\"", e->passthru ? "passthru" : "block",
	       op_names[job->op]);
	printf(", \"offset\": %" PRIu64 ", \"length\": %" PRIu64 ", \"bs\": %" PRIu64,
	       job->offset, job->length, job->bs);
	printf(", \"qd\": %u, \"seed\": %" PRIu64 ", \"ios\": %" PRIu64, job->qd,
	       job->seed, st->ios);
	printf(", \"bytes\": %" PRIu64 ", \"elapsed_ns\": %" PRIu64, st->bytes,
	       st->elapsed_ns);
	printf(", \"errors\": %" PRIu64 ", \"first_error\": ", st->errors);
	if (st->have_error)
		printf("{\"offset\": %" PRIu64 ", \"res\": %d}", st->error_offset,
		       st->error_res);
	else
		fputs("null", stdout);
	printf(", \"mismatches\": %" PRIu64 ", \"first_mismatch\": ", st->mismatches);
	if (st->have_mismatch)
		printf("{\"offset\": %" PRIu64 ", \"expected\": \"0x%016" PRIx64
		       "\", \"got\": \"0x%016" PRIx64 "\"}", st->mismatch_offset,
		       st->mismatch_expected, st->mismatch_got);
	else
		fputs("null", stdout);
	printf(", \"sqe64\": %s, \"expect_error\": %s, \"rdonly\": %s",
	       job->sqe64 ? "true" : "false", job->expect_error ? "true" : "false",
	       job->rdonly ? "true" : "false");
	print_results(st);
	fputs("}\n", stdout);
	if (fflush(stdout) || ferror(stdout)) {
		fprintf(stderr, "vblk-engine: cannot write result: %s\n", strerror(errno));
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct engine e;
	struct job job;
	int ret;

	if (parse_args(argc, argv, &job))
		return EXIT_USAGE;
	if (engine_setup(&e, &job))
		return EXIT_SETUP;
	ret = engine_run(&e);
	if (!ret)
		ret = print_result(&e);
	engine_teardown(&e);
	return ret ? EXIT_RUNTIME : EXIT_JOB_RAN;
}
