// SPDX-License-Identifier: GPL-2.0-only
/*
 * vblk-engine command line: parsing and the checks that need no target.
 * Every refusal is one stderr line and exit code 2 (see PROTOCOL.md).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

#define USAGE "usage: vblk-engine --path PATH --op write|read|verify|flush|get-id|" \
	"discard|write-zeroes|mix|randread|randwrite [options]; see PROTOCOL.md"

#define MAX_RUNTIME_S	1e7

/* One stderr line: what is wrong, then the usage in parentheses. */
void usage_error(const char *fmt, const char *arg)
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

/* Seconds, decimal with an optional fraction: "600", "0.5". */
static int parse_seconds(const char *s, uint64_t *ns)
{
	char *end;
	double v;

	if (!*s || *s == '-' || *s == '+')
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || v <= 0 ||
	    v > MAX_RUNTIME_S)
		return -EINVAL;
	*ns = (uint64_t)(v * 1e9);
	return *ns ? 0 : -EINVAL;
}

static int parse_op(const char *s, enum job_op *op)
{
	int i;

	for (i = 0; i < OP_COUNT; i++) {
		if (!strcmp(s, op_names[i])) {
			*op = (enum job_op)i;
			return 0;
		}
	}
	return -EINVAL;
}

enum {
	OPT_SQE64 = 256, OPT_EXPECT_ERROR, OPT_RDONLY, OPT_PATH2, OPT_IOS,
	OPT_RUNTIME, OPT_TYPE, OPT_CMD_OP, OPT_FLAG, OPT_DATA_LEN, OPT_BAD_PTR,
	OPT_VEC, OPT_FIXED, OPT_IOPOLL, OPT_UNMAP, OPT_RANGES, OPT_WITH_TRIM,
	OPT_INIT_SEED, OPT_BENCH, OPT_BATCH_SUBMIT, OPT_BATCH_COMPLETE, OPT_ZERO,
	OPT_UID, OPT_GID, OPT_BUFFERED, OPT_RWMIX_READ,
	OPT_PROGRESS_FD, OPT_PROGRESS_MS,
	OPT_IOPRIO, OPT_SECTOR, OPT_RANGE_SECTOR,
	OPT_LINK, OPT_SCRIBBLE, OPT_ASYNC, OPT_DEFER_TASKRUN, OPT_SQPOLL, OPT_COMPAT_RING,
	OPT_RANGE_NR, OPT_RANGE_FLAGS, OPT_PROTECT_BUF, OPT_FAIL_NTH_SWEEP, OPT_WRONLY,
};

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
	{ "wronly",		no_argument,	   NULL, OPT_WRONLY },
	{ "path2",		required_argument, NULL, OPT_PATH2 },
	{ "ios",		required_argument, NULL, OPT_IOS },
	{ "runtime",		required_argument, NULL, OPT_RUNTIME },
	{ "type",		required_argument, NULL, OPT_TYPE },
	{ "cmd-op",		required_argument, NULL, OPT_CMD_OP },
	{ "flag",		required_argument, NULL, OPT_FLAG },
	{ "data-len",		required_argument, NULL, OPT_DATA_LEN },
	{ "bad-ptr",		no_argument,	   NULL, OPT_BAD_PTR },
	{ "vec",		required_argument, NULL, OPT_VEC },
	{ "fixed",		no_argument,	   NULL, OPT_FIXED },
	{ "iopoll",		no_argument,	   NULL, OPT_IOPOLL },
	{ "unmap",		no_argument,	   NULL, OPT_UNMAP },
	{ "ranges",		required_argument, NULL, OPT_RANGES },
	{ "with-trim",		no_argument,	   NULL, OPT_WITH_TRIM },
	{ "init-seed",		required_argument, NULL, OPT_INIT_SEED },
	{ "bench",		no_argument,	   NULL, OPT_BENCH },
	{ "batch-submit",	required_argument, NULL, OPT_BATCH_SUBMIT },
	{ "batch-complete",	required_argument, NULL, OPT_BATCH_COMPLETE },
	{ "zero",		no_argument,	   NULL, OPT_ZERO },
	{ "uid",		required_argument, NULL, OPT_UID },
	{ "gid",		required_argument, NULL, OPT_GID },
	{ "buffered",		no_argument,	   NULL, OPT_BUFFERED },
	{ "rwmix-read",		required_argument, NULL, OPT_RWMIX_READ },
	{ "progress-fd",	required_argument, NULL, OPT_PROGRESS_FD },
	{ "progress-ms",	required_argument, NULL, OPT_PROGRESS_MS },
	{ "ioprio",		required_argument, NULL, OPT_IOPRIO },
	{ "sector",		required_argument, NULL, OPT_SECTOR },
	{ "range-sector",	required_argument, NULL, OPT_RANGE_SECTOR },
	{ "link",		required_argument, NULL, OPT_LINK },
	{ "scribble",		no_argument,	   NULL, OPT_SCRIBBLE },
	{ "async",		no_argument,	   NULL, OPT_ASYNC },
	{ "defer-taskrun",	no_argument,	   NULL, OPT_DEFER_TASKRUN },
	{ "sqpoll",		no_argument,	   NULL, OPT_SQPOLL },
	{ "compat-ring",	no_argument,	   NULL, OPT_COMPAT_RING },
	{ "range-num-sectors",	required_argument, NULL, OPT_RANGE_NR },
	{ "range-flags",	required_argument, NULL, OPT_RANGE_FLAGS },
	{ "protect-buf",	no_argument,	   NULL, OPT_PROTECT_BUF },
	{ "fail-nth-sweep",	no_argument,	   NULL, OPT_FAIL_NTH_SWEEP },
	{ NULL, 0, NULL, 0 },
};

/* Options that only set a bool. */
static const struct { int opt; size_t off; } flag_opts[] = {
	{ OPT_SQE64,		offsetof(struct job, sqe64) },
	{ OPT_EXPECT_ERROR,	offsetof(struct job, expect_error) },
	{ OPT_RDONLY,		offsetof(struct job, rdonly) },
	{ OPT_WRONLY,		offsetof(struct job, wronly) },
	{ OPT_BAD_PTR,		offsetof(struct job, bad_ptr) },
	{ OPT_FIXED,		offsetof(struct job, fixed) },
	{ OPT_IOPOLL,		offsetof(struct job, iopoll) },
	{ OPT_UNMAP,		offsetof(struct job, unmap) },
	{ OPT_WITH_TRIM,	offsetof(struct job, with_trim) },
	{ OPT_BENCH,		offsetof(struct job, bench) },
	{ OPT_ZERO,		offsetof(struct job, zero) },
	{ OPT_BUFFERED,		offsetof(struct job, buffered) },
	{ OPT_SCRIBBLE,		offsetof(struct job, scribble) },
	{ OPT_ASYNC,		offsetof(struct job, async_sqe) },
	{ OPT_DEFER_TASKRUN,	offsetof(struct job, defer_taskrun) },
	{ OPT_SQPOLL,		offsetof(struct job, sqpoll) },
	{ OPT_COMPAT_RING,	offsetof(struct job, compat_ring) },
	{ OPT_PROTECT_BUF,	offsetof(struct job, protect_buf) },
	{ OPT_FAIL_NTH_SWEEP,	offsetof(struct job, fail_nth_sweep) },
};

/* Options that take a bounded count (unsigned int). */
static const struct {
	int opt;
	size_t off;
	unsigned int min, max;
	const char *msg;
} count_opts[] = {
	{ 'q', offsetof(struct job, qd), 1, MAX_QD, "--qd must be 1..4096, got '%s'" },
	{ OPT_VEC, offsetof(struct job, vec), 1, MAX_VEC, "--vec must be 1..4096, got '%s'" },
	{ OPT_RANGES, offsetof(struct job, ranges), 1, MAX_RANGES,
	  "--ranges must be 1..4096, got '%s'" },
	{ OPT_BATCH_SUBMIT, offsetof(struct job, batch_submit), 1, MAX_QD,
	  "--batch-submit must be 1..4096, got '%s'" },
	{ OPT_BATCH_COMPLETE, offsetof(struct job, batch_complete), 1, MAX_QD,
	  "--batch-complete must be 1..4096, got '%s'" },
	{ OPT_PROGRESS_FD, offsetof(struct job, progress_fd), 3, 1023,
	  "--progress-fd must be an open fd 3..1023, got '%s'" },
	{ OPT_PROGRESS_MS, offsetof(struct job, progress_ms), 10, 60000,
	  "--progress-ms must be 10..60000, got '%s'" },
};

/* Raw 32-bit overrides of passthrough command fields. */
static const struct { int opt; size_t off; } raw_opts[] = {
	{ OPT_TYPE,	offsetof(struct job, type) },
	{ OPT_CMD_OP,	offsetof(struct job, cmd_op) },
	{ OPT_FLAG,	offsetof(struct job, flag) },
	{ OPT_DATA_LEN,	offsetof(struct job, data_len) },
	{ OPT_IOPRIO,	offsetof(struct job, ioprio) },
	{ OPT_RANGE_NR,	offsetof(struct job, range_nr) },
	{ OPT_RANGE_FLAGS, offsetof(struct job, range_flags) },
};

#define ARRAY_SIZE(a)	(sizeof(a) / sizeof((a)[0]))

static uint64_t *number_target(struct job *job, int opt)
{
	switch (opt) {
	case 'O': return &job->offset;
	case 'l': job->have_length = true; return &job->length;
	case 'b': return &job->bs;
	case 's': return &job->seed;
	case OPT_IOS: return &job->ios;
	case OPT_INIT_SEED: job->have_init_seed = true; return &job->init_seed;
	default: return NULL;
	}
}

/* Returns 1 if @opt is not a table option, 0 if applied, -EINVAL if bad. */
static int apply_table_option(struct job *job, int opt, const char *arg)
{
	char *base = (char *)job;
	uint64_t v;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(flag_opts); i++) {
		if (flag_opts[i].opt == opt) {
			*(bool *)(base + flag_opts[i].off) = true;
			return 0;
		}
	}
	for (i = 0; i < ARRAY_SIZE(count_opts); i++) {
		if (count_opts[i].opt != opt)
			continue;
		if (parse_u64(arg, &v) || v < count_opts[i].min || v > count_opts[i].max) {
			usage_error(count_opts[i].msg, arg);
			return -EINVAL;
		}
		*(unsigned int *)(base + count_opts[i].off) = (unsigned int)v;
		return 0;
	}
	for (i = 0; i < ARRAY_SIZE(raw_opts); i++) {
		if (raw_opts[i].opt != opt)
			continue;
		if (parse_u64(arg, &v) || v > UINT32_MAX) {
			usage_error("bad 32-bit number '%s'", arg);
			return -EINVAL;
		}
		((struct raw_u32 *)(base + raw_opts[i].off))->set = true;
		((struct raw_u32 *)(base + raw_opts[i].off))->v = (uint32_t)v;
		return 0;
	}
	return 1;
}

/* --uid/--gid: a numeric id; (uid_t)-1 means "unchanged" to setuid(), so no. */
static int parse_id(struct job *job, int opt, const char *arg)
{
	uint64_t v;

	if (parse_u64(arg, &v) || v >= UINT32_MAX) {
		usage_error("--uid/--gid must be a numeric id below 4294967295, got '%s'", arg);
		return -EINVAL;
	}
	if (opt == OPT_UID)
		job->uid = (uint32_t)v;
	else
		job->gid = (uint32_t)v;
	return 0;
}

static int apply_option(struct job *job, int opt, const char *arg)
{
	uint64_t *num = number_target(job, opt);
	uint64_t v;
	int ret;

	if (num) {
		if (parse_u64(arg, num)) {
			usage_error("bad number '%s'", arg);
			return -EINVAL;
		}
		if (opt == OPT_IOS && !*num) {
			usage_error("--ios must be at least 1, got '%s'", arg);
			return -EINVAL;
		}
		return 0;
	}
	ret = apply_table_option(job, opt, arg);
	if (ret <= 0)
		return ret;
	switch (opt) {
	case 'p':
		job->path = arg;
		return 0;
	case OPT_PATH2:
		job->path2 = arg;
		return 0;
	case 'o':
		if (parse_op(arg, &job->op)) {
			usage_error("--op must be write, read, verify, flush, get-id, discard, "
				    "write-zeroes, mix, randread or randwrite, got '%s'", arg);
			return -EINVAL;
		}
		return 0;
	case OPT_UID:
	case OPT_GID:
		return parse_id(job, opt, arg);
	case OPT_RWMIX_READ:
		if (parse_u64(arg, &v) || v > 100) {
			usage_error("--rwmix-read must be 0..100, got '%s'", arg);
			return -EINVAL;
		}
		job->rwmix_read = (unsigned int)v;
		job->have_rwmix = true;
		return 0;
	case OPT_LINK:
		if (!strcmp(arg, "flush")) {
			job->link = LINK_FLUSH;
		} else if (!strcmp(arg, "read")) {
			job->link = LINK_READ;
		} else {
			usage_error("--link must be flush or read, got '%s'", arg);
			return -EINVAL;
		}
		return 0;
	case OPT_RUNTIME:
		if (parse_seconds(arg, &job->runtime_ns)) {
			usage_error("--runtime must be seconds > 0, got '%s'", arg);
			return -EINVAL;
		}
		return 0;
	case OPT_SECTOR:
	case OPT_RANGE_SECTOR: {
		/* any 64-bit value: the wrap tests need sectors near U64_MAX */
		struct raw_u64 *r = opt == OPT_SECTOR ? &job->sector : &job->range_sector;

		if (parse_u64(arg, &r->v)) {
			usage_error("bad 64-bit number '%s'", arg);
			return -EINVAL;
		}
		r->set = true;
		return 0;
	}
	}
	return -EINVAL;
}

/* ---- checks ---------------------------------------------------------- */

static bool op_in(enum job_op op, unsigned int mask)
{
	return mask & (1U << op);
}

#define M(op)		(1U << (op))
#define M_DATA		(M(OP_READ) | M(OP_WRITE) | M(OP_VERIFY))
#define M_RANGES	(M(OP_DISCARD) | M(OP_WZEROES))
#define M_BASIC		(M_DATA | M(OP_FLUSH) | M(OP_GET_ID) | M_RANGES)

static int fail(const char *msg)
{
	usage_error("%s", msg);
	return -EINVAL;
}

static int check_sizes(struct job *job)
{
	if (!job->bs || job->bs % 8 || job->bs > MAX_BS)
		return fail("--bs must be a non-zero multiple of 8 up to 64M");
	if (!job->have_length)
		job->length = job->bs;
	if (!job->length || job->length % 8)
		return fail("--length must be a non-zero multiple of 8");
	if (job->offset % SECTOR_SIZE)
		return fail("--offset must be a multiple of 512");
	if (job->offset + job->length < job->offset)
		return fail("--offset + --length overflows");
	return 0;
}

/* Benchmark mode: rand*, or read/write with any benchmark option. */
static int decide_bench(struct job *job)
{
	bool batch = job->batch_submit || job->batch_complete;
	bool rw = job->op == OP_READ || job->op == OP_WRITE;

	if (job->op == OP_RANDREAD || job->op == OP_RANDWRITE ||
	    (rw && (job->bench || batch || job->runtime_ns || job->ios))) {
		job->bench = true;
		return 0;
	}
	if (job->bench || batch)
		return fail("--bench/--batch-* take --op read|write|randread|randwrite");
	if (job->op == OP_MIX)
		return 0;
	if (job->runtime_ns)
		return fail("--runtime takes --op mix or a benchmark op");
	if (job->ios && !op_in(job->op, M(OP_FLUSH) | M(OP_GET_ID)))
		return fail("--ios takes --op flush|get-id|mix or a benchmark op");
	return 0;
}

/* --link and --scribble: plain buffers, basic jobs (link.c, scribble.c). */
static int check_link_options(const struct job *job)
{
	bool basic = !job->bench && job->op != OP_MIX;

	if (job->link && (job->op != OP_WRITE || !basic))
		return fail("--link takes --op write (no --ios/--runtime/--bench/--batch-*)");
	if (job->scribble && (!basic || !op_in(job->op, M_DATA)))
		return fail("--scribble takes --op write, read or verify");
	if ((job->link || job->scribble) &&
	    (job->vec || job->fixed || job->iopoll || job->bad_ptr || job->type.set ||
	     job->cmd_op.set || job->flag.set || job->data_len.set))
		return fail("--link/--scribble cannot go with --vec, --fixed, --iopoll, --bad-ptr "
			    "or --type/--cmd-op/--flag/--data-len");
	return 0;
}

/* Options that belong to some ops only. */
static int check_op_options(const struct job *job)
{
	bool basic = op_in(job->op, M_BASIC) && !job->bench;

	if (job->rdonly && job->wronly)
		return fail("--rdonly and --wronly exclude each other");
	if (job->path2 && job->op != OP_MIX)
		return fail("--path2 takes --op mix");
	if ((job->with_trim || job->have_init_seed) && job->op != OP_MIX)
		return fail("--with-trim/--init-seed take --op mix");
	if (job->unmap && !op_in(job->op, M(OP_WZEROES) | M(OP_MIX)))
		return fail("--unmap takes --op write-zeroes or mix");
	if (job->ranges && !op_in(job->op, M_RANGES))
		return fail("--ranges takes --op discard or write-zeroes");
	if (job->zero && job->op != OP_VERIFY)
		return fail("--zero takes --op verify");
	if ((job->buffered || job->have_rwmix) && !job->bench)
		return fail("--buffered/--rwmix-read take a benchmark op");
	if (job->buffered && (job->fixed || job->iopoll))
		return fail("--buffered cannot go with --fixed or --iopoll");
	if (job->compat_ring && !compat_ring_supported())
		return fail("--compat-ring needs the 64-bit x86 engine (vblk-engine32's ring is compat already)");
	if (job->compat_ring && job->fixed)
		return fail("--compat-ring cannot go with --fixed");
	if (!basic && (job->type.set || job->cmd_op.set || job->flag.set ||
		       job->data_len.set || job->bad_ptr))
		return fail("--type/--cmd-op/--flag/--data-len/--bad-ptr take a basic op");
	if (!basic && job->sector.set)
		return fail("--sector takes a basic op");
	if (job->range_sector.set && !op_in(job->op, M_RANGES))
		return fail("--range-sector takes --op discard or write-zeroes");
	if ((job->range_nr.set || job->range_flags.set) && !op_in(job->op, M_RANGES))
		return fail("--range-num-sectors/--range-flags take --op discard or write-zeroes");
	if (job->protect_buf && (!basic || !op_in(job->op, M(OP_READ) | M(OP_VERIFY)) ||
				 !job->defer_taskrun || job->qd != 1 || job->fixed || job->sqpoll))
		return fail("--protect-buf takes --op read or verify with --defer-taskrun and --qd 1 "
			    "(no --fixed or --sqpoll)");
	if (job->fail_nth_sweep && (!basic || job->qd != 1 || job->length != job->bs ||
				    job->sqpoll || job->async_sqe || job->link || job->scribble ||
				    job->protect_buf))
		return fail("--fail-nth-sweep takes a basic op with --qd 1 and one I/O "
			    "(no --sqpoll, --async, --link, --scribble or --protect-buf)");
	return check_link_options(job);
}

static int check_mix(const struct job *job)
{
	if (!job->runtime_ns && !job->ios)
		return fail("--op mix needs --runtime or --ios");
	if (job->bs % SECTOR_SIZE || job->length % job->bs)
		return fail("--op mix needs --bs a multiple of 512 and --length of --bs");
	if (job->length / job->bs > MIX_MAX_NBLOCKS)
		return fail("--op mix: --length / --bs is over 64M blocks");
	return 0;
}

static int check_op_sizes(struct job *job)
{
	if (job->op == OP_MIX)
		return check_mix(job);
	if (job->bench && job->length < job->bs)
		return fail("a benchmark needs --length of at least --bs");
	if (op_in(job->op, M_RANGES)) {
		if (!job->ranges)
			job->ranges = 1;
		if (job->bs % SECTOR_SIZE)
			return fail("--op discard/write-zeroes needs --bs a multiple of 512");
		if (job->bs * job->ranges > UINT32_MAX)
			return fail("--bs * --ranges must be below 4 GiB");
	}
	if (job->vec && op_in(job->op, M_DATA | M(OP_MIX) | M(OP_RANDREAD) |
			      M(OP_RANDWRITE)) && job->vec > job->bs / 8)
		return fail("--vec must be at most --bs / 8");
	return 0;
}

static void default_batches(struct job *job)
{
	if (!job->batch_submit)
		job->batch_submit = 1;
	if (!job->batch_complete)
		job->batch_complete = 1;
	if (job->batch_submit > job->qd)
		job->batch_submit = job->qd;
	if (job->batch_complete > job->qd)
		job->batch_complete = job->qd;
}

static int check_job(struct job *job, bool have_op)
{
	if (!job->path)
		return fail("--path is required");
	if (!have_op)
		return fail("--op is required");
	if (check_sizes(job) || decide_bench(job) || check_op_options(job) ||
	    check_op_sizes(job))
		return -EINVAL;
	if (job->bench)
		default_batches(job);
	return 0;
}

int parse_args(int argc, char **argv, struct job *job)
{
	bool have_op = false, have_uid = false, have_gid = false;
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
		have_uid |= opt == OPT_UID;
		have_gid |= opt == OPT_GID;
	}
	if (have_uid != have_gid) {
		usage_error("%s", "--uid and --gid go together");
		return -EINVAL;
	}
	job->have_ids = have_uid;
	if (optind < argc) {
		usage_error("unexpected argument '%s'", argv[optind]);
		return -EINVAL;
	}
	return check_job(job, have_op);
}
