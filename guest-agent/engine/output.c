// SPDX-License-Identifier: GPL-2.0-only
/*
 * vblk-engine JSON output: the fields every job prints.  The mode-specific
 * parts (basic.c, mix.c, bench.c) are printed between head and tail.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "engine.h"

static const char *const tgt_names[MAX_TARGETS] = { "path", "path2" };

static void print_json_chars(const char *s, bool ascii)
{
	const unsigned char *p;

	putchar('"');
	for (p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			printf("\\%c", *p);
		else if (*p < 0x20 || (ascii && *p >= 0x7f))
			printf("\\u%04x", *p);
		else
			putchar(*p);
	}
	putchar('"');
}

/* A path: bytes >= 0x80 pass through (UTF-8 names stay readable). */
void print_json_string(const char *s)
{
	print_json_chars(s, false);
}

/* Device data (the GET_ID serial): anything outside printable ASCII escaped. */
void print_json_ascii(const char *s)
{
	print_json_chars(s, true);
}

static const char *bool_str(bool b)
{
	return b ? "true" : "false";
}

static void print_raw(const char *name, const struct raw_u32 *r, bool first)
{
	printf("%s\"%s\": ", first ? "" : ", ", name);
	if (r->set)
		printf("%" PRIu32, r->v);
	else
		fputs("null", stdout);
}

static void print_raw_u64(const char *name, const struct raw_u64 *r)
{
	printf(", \"%s\": ", name);
	if (r->set)
		printf("%" PRIu64, r->v);
	else
		fputs("null", stdout);
}

/* mix and bench say which I/O and target an error or mismatch came from. */
static bool extended(const struct job *job)
{
	return job->op == OP_MIX || job->bench;
}

static void print_first_error(const struct engine *e)
{
	const struct stats *st = &e->st;

	printf(", \"errors\": %" PRIu64 ", \"first_error\": ", st->errors);
	if (!st->have_error) {
		fputs("null", stdout);
		return;
	}
	printf("{\"offset\": %" PRIu64 ", \"res\": %d", st->error_offset,
	       st->error_res);
	if (extended(e->job))
		printf(", \"io\": %" PRIu64 ", \"kind\": \"%s\", \"target\": \"%s\"",
		       st->error_seq, kind_names[st->error_kind],
		       tgt_names[st->error_tgt]);
	putchar('}');
}

static void print_first_mismatch(const struct engine *e)
{
	const struct stats *st = &e->st;

	printf(", \"mismatches\": %" PRIu64 ", \"first_mismatch\": ", st->mismatches);
	if (!st->have_mismatch) {
		fputs("null", stdout);
		return;
	}
	printf("{\"offset\": %" PRIu64 ", \"expected\": \"0x%016" PRIx64
	       "\", \"got\": \"0x%016" PRIx64 "\"", st->mismatch_offset,
	       st->mismatch_expected, st->mismatch_got);
	if (extended(e->job))
		printf(", \"io\": %" PRIu64 ", \"target\": \"%s\"", st->mismatch_seq,
		       tgt_names[st->mismatch_tgt]);
	putchar('}');
}

static void print_id(bool have, uint32_t id)
{
	if (have)
		printf("%" PRIu32, id);
	else
		fputs("null", stdout);
}

/* "name": {"<res>": count, ...} in first-seen order; values past the table in name_other. */
void print_res_counts(const char *name, const struct res_counts *rc)
{
	unsigned int i;

	printf(", \"%s\": {", name);
	for (i = 0; i < rc->n; i++)
		printf("%s\"%d\": %" PRIu64, i ? ", " : "", rc->res[i], rc->count[i]);
	printf("}, \"%s_other\": %" PRIu64, name, rc->other);
}

static void print_options(const struct engine *e)
{
	const struct job *job = e->job;

	printf(", \"sqe64\": %s, \"expect_error\": %s, \"rdonly\": %s, \"wronly\": %s",
	       bool_str(job->sqe64), bool_str(job->expect_error), bool_str(job->rdonly),
	       bool_str(job->wronly));
	printf(", \"iopoll\": %s, \"fixed\": %s, \"vec\": %u, \"bad_ptr\": %s",
	       bool_str(job->iopoll), bool_str(job->fixed), job->vec,
	       bool_str(job->bad_ptr));
	printf(", \"uid\": ");
	print_id(job->have_ids, job->uid);
	printf(", \"gid\": ");
	print_id(job->have_ids, job->gid);
	printf(", \"async\": %s, \"sqpoll\": %s, \"ptr_bits\": %u, \"compat_ring\": %s",
	       bool_str(job->async_sqe), bool_str(job->sqpoll),
	       (unsigned int)(sizeof(void *) * 8), bool_str(job->compat_ring));
	fputs(", \"raw\": {", stdout);
	print_raw("type", &job->type, true);
	print_raw("cmd_op", &job->cmd_op, false);
	print_raw("flag", &job->flag, false);
	print_raw("data_len", &job->data_len, false);
	putchar('}');
	printf(", \"ioprio\": ");
	print_id(job->ioprio.set, job->ioprio.v);
	print_raw_u64("sector", &job->sector);
	print_raw_u64("range_sector", &job->range_sector);
	printf(", \"range_num_sectors\": ");
	print_id(job->range_nr.set, job->range_nr.v);
	printf(", \"range_flags\": ");
	print_id(job->range_flags.set, job->range_flags.v);
	printf(", \"protect_buf\": %s, \"fail_nth_sweep\": %s",
	       bool_str(job->protect_buf), bool_str(job->fail_nth_sweep));
}

void print_result_head(const struct engine *e)
{
	const struct job *job = e->job;
	const struct stats *st = &e->st;

	fputs("{\"path\": ", stdout);
	print_json_string(job->path);
	printf(", \"mode\": \"%s\", \"op\": \"%s\"",
	       e->tgt[0].passthru ? "passthru" : "block", op_names[job->op]);
	printf(", \"offset\": %" PRIu64 ", \"length\": %" PRIu64 ", \"bs\": %" PRIu64,
	       job->offset, job->length, job->bs);
	printf(", \"qd\": %u, \"seed\": %" PRIu64 ", \"ios\": %" PRIu64, job->qd,
	       job->seed, st->ios);
	printf(", \"bytes\": %" PRIu64 ", \"elapsed_ns\": %" PRIu64, st->bytes,
	       st->elapsed_ns);
	print_first_error(e);
	print_first_mismatch(e);
	print_res_counts("res_counts", &st->res_counts);
	printf(", \"close_ok\": %s, \"close_errno\": %d",
	       bool_str(e->closed && !e->close_errno), e->close_errno);
	print_options(e);
	scribble_print(e);
}

int print_result_tail(void)
{
	fputs("}\n", stdout);
	if (fflush(stdout) || ferror(stdout)) {
		fprintf(stderr, "vblk-engine: cannot write result: %s\n", strerror(errno));
		return -1;
	}
	return 0;
}
