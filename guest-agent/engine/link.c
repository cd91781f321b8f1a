// SPDX-License-Identifier: GPL-2.0-only
/*
 * vblk-engine --op write --link flush|read: every I/O is a chain of two
 * SQEs joined by IOSQE_IO_LINK, a WRITE of --bs bytes (the PROTOCOL.md
 * pattern of --seed) and then a FLUSH, or a READ of the same range into a
 * separate buffer (filled with 0xa5 first) that must come back equal to
 * what the WRITE wrote.  Chain i covers offset + i * bs.
 *
 * The chains run in waves of --qd: a wave is prepared, submitted with one
 * io_uring_submit() (so each linked command is issued by the kernel only
 * when its WRITE completes, well after the submit returned), then waited
 * for completely before the next one is prepared.  So without --scribble
 * no SQ slot is reused while a command of the wave is in flight, and with
 * --scribble (scribble.c) every slot is overwritten right after the
 * submit: a chain whose second command was read from its slot at issue
 * executes the scribble instead (review-v2 #3).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

static const char *const link_names[] = {
	[LINK_NONE] = "none", [LINK_FLUSH] = "flush", [LINK_READ] = "read",
};

#define MAX_BAD_RANGES	32

struct chain {
	struct slot io[2];		/* the WRITE, then the FLUSH or READ */
	int res[2];
	bool done[2];
};

struct chain_result {
	int res[2];
	bool data_ok;
	bool scribbled[2];		/* the kernel executed that slot's scribble */
};

struct link_state {
	struct chain *chains;		/* one wave: qd chains */
	uint64_t nchains;
	uint64_t ok;			/* both res 0, data equal, no scribble ran */
	uint64_t write_errors;
	uint64_t second_errors;
	uint64_t data_bad;		/* READ chains whose data differed */
	uint64_t scribbled[2];
	uint64_t stray_cqes;		/* CQEs with no I/O of ours (user_data 0) */
	bool have_bad;
	uint64_t bad_chain;
	uint64_t bad_offset;
	struct chain_result bad;
	struct chain_result results[MAX_RESULTS];
	unsigned int nranges;		/* bad chains as [first, last] ranges */
	uint64_t ranges[MAX_BAD_RANGES][2];
	bool more_ranges;		/* bad chains past the last range kept */
};

int link_setup(struct engine *e)
{
	const struct job *job = e->job;
	size_t size = ((size_t)job->bs + BUF_ALIGN - 1) & ~(size_t)(BUF_ALIGN - 1);
	struct link_state *l = calloc(1, sizeof(*l));
	unsigned int i, k;

	e->link = l;
	if (!l || !(l->chains = calloc(job->qd, sizeof(*l->chains)))) {
		setup_error("out of memory for the chains of", job->path, ENOMEM);
		return -1;
	}
	if (job->scribble && scribble_setup(e, 2 * job->qd))
		return -1;
	for (i = 0; i < job->qd; i++) {
		for (k = 0; k < 2; k++) {
			struct slot *s = &l->chains[i].io[k];

			if (posix_memalign(&s->buf, BUF_ALIGN, size)) {
				s->buf = NULL;
				setup_error("cannot allocate buffers for", job->path, ENOMEM);
				return -1;
			}
			if (job->scribble && scribble_add_canary(e, s))
				return -1;
		}
	}
	return 0;
}

void link_teardown(struct engine *e)
{
	struct link_state *l = e->link;
	unsigned int i;

	scribble_teardown(e);
	if (!l)
		return;
	for (i = 0; l->chains && i < e->job->qd; i++) {
		free(l->chains[i].io[0].buf);
		free(l->chains[i].io[1].buf);
	}
	free(l->chains);
	free(l);
	e->link = NULL;
}

static void place_chain(struct engine *e, struct chain *c, uint64_t index)
{
	const struct job *job = e->job;
	uint64_t rel = index * job->bs;
	uint32_t len = (uint32_t)(job->length - rel < job->bs ? job->length - rel : job->bs);
	struct slot *w = &c->io[0], *second = &c->io[1];

	memset(c->res, 0, sizeof(c->res));
	memset(c->done, 0, sizeof(c->done));
	w->kind = IO_WRITE;
	w->seq = second->seq = index;
	w->offset = job->offset + rel;
	w->len = len;
	fill_pattern(w->buf, w->offset, len, job->seed);
	if (job->link == LINK_FLUSH) {
		second->kind = IO_FLUSH;
		second->offset = 0;	/* FLUSH carries no sector */
		second->len = 0;
	} else {
		second->kind = IO_READ;
		second->offset = w->offset;
		second->len = len;
		memset(second->buf, READ_POISON, len);
	}
}

static int queue_chain(struct engine *e, struct chain *c, uint64_t index)
{
	struct io_uring_sqe *sqe[2];
	unsigned int k;

	place_chain(e, c, index);
	for (k = 0; k < 2; k++) {
		sqe[k] = io_uring_get_sqe(&e->ring);
		if (!sqe[k])
			return -EBUSY;
		prep_io(e, sqe[k], &c->io[k]);
		scribble_note(e, sqe[k], &c->io[k]);
	}
	sqe[0]->flags |= IOSQE_IO_LINK;
	return 0;
}

/* Does the READ buffer hold exactly what the WRITE wrote? */
static bool check_read(struct engine *e, const struct slot *r)
{
	const uint64_t *w = r->buf;
	uint64_t expected, off;
	bool ok = true;
	uint32_t i;

	for (i = 0; i < r->len / 8; i++) {
		off = r->offset + (uint64_t)i * 8;
		expected = pattern_word(e->job->seed, off);
		if (w[i] != expected) {
			record_mismatch(&e->st, r, off, off, expected, w[i]);
			ok = false;
		}
	}
	return ok;
}

/* Chains are judged in increasing order: extend the last range or start one. */
static void note_bad(struct link_state *l, uint64_t seq)
{
	if (l->nranges && l->ranges[l->nranges - 1][1] + 1 == seq) {
		l->ranges[l->nranges - 1][1] = seq;
	} else if (l->nranges < MAX_BAD_RANGES) {
		l->ranges[l->nranges][0] = l->ranges[l->nranges][1] = seq;
		l->nranges++;
	} else {
		l->more_ranges = true;
	}
}

static void judge_chain(struct engine *e, struct chain *c)
{
	struct link_state *l = e->link;
	struct chain_result r;
	unsigned int k;
	bool ok;

	memset(&r, 0, sizeof(r));
	for (k = 0; k < 2; k++) {
		r.res[k] = c->res[k];
		r.scribbled[k] = scribble_check(e, &c->io[k]);
		l->scribbled[k] += r.scribbled[k];
		if (io_ok(e, &c->io[k], c->res[k])) {
			e->st.bytes += io_bytes(&c->io[k]);
		} else {
			record_error(&e->st, &c->io[k], c->io[0].offset * 2 + k, c->res[k]);
			if (k)
				l->second_errors++;
			else
				l->write_errors++;
		}
	}
	r.data_ok = true;
	if (c->io[1].kind == IO_READ && io_ok(e, &c->io[1], c->res[1]))
		r.data_ok = check_read(e, &c->io[1]);
	else if (c->io[1].kind == IO_READ)
		r.data_ok = false;	/* nothing was read back */
	l->data_bad += c->io[1].kind == IO_READ && !r.data_ok;
	ok = io_ok(e, &c->io[0], r.res[0]) && io_ok(e, &c->io[1], r.res[1]) &&
	     r.data_ok && !r.scribbled[0] && !r.scribbled[1];
	l->ok += ok;
	if (!ok)
		note_bad(l, c->io[0].seq);
	if (c->io[0].seq < MAX_RESULTS)
		l->results[c->io[0].seq] = r;
	if (!ok && (!l->have_bad || c->io[0].seq < l->bad_chain)) {
		l->have_bad = true;
		l->bad_chain = c->io[0].seq;
		l->bad_offset = c->io[0].offset;
		l->bad = r;
	}
}

/* Wait for the @want CQEs of a wave; returns 0 or -1 after a stderr line. */
static int reap_wave(struct engine *e, uint64_t first, unsigned int want)
{
	struct link_state *l = e->link;
	struct io_uring_cqe *cqe;
	unsigned int got = 0;
	struct slot *s;
	struct chain *c;
	int ret;

	while (got < want) {
		ret = io_uring_wait_cqe(&e->ring, &cqe);
		if (ret == -EINTR)
			continue;
		if (ret < 0) {
			runtime_error(e, -ret);
			return -1;
		}
		s = io_uring_cqe_get_data(cqe);
		count_res(&e->st.res_counts, cqe->res);
		if (!s) {
			l->stray_cqes++;
		} else {
			c = &l->chains[s->seq - first];
			c->res[s == &c->io[1]] = cqe->res;
			c->done[s == &c->io[1]] = true;
			got++;
		}
		io_uring_cqe_seen(&e->ring, cqe);
		iowq_sample(e);
	}
	return 0;
}

int link_run(struct engine *e)
{
	const struct job *job = e->job;
	struct link_state *l = e->link;
	uint64_t first, start;
	unsigned int n, i;
	int ret;

	l->nchains = (job->length + job->bs - 1) / job->bs;
	e->st.ios = 2 * l->nchains;
	start = now_ns();
	for (first = 0; first < l->nchains; first += n) {
		n = (unsigned int)(l->nchains - first < job->qd ? l->nchains - first : job->qd);
		for (i = 0; i < n; i++) {
			if (queue_chain(e, &l->chains[i], first + i)) {
				fprintf(stderr, "vblk-engine: SQ ring full on %s\n", job->path);
				return -1;
			}
		}
		ret = io_uring_submit(&e->ring);
		scribble_submitted(e);
		if (ret < 0) {
			runtime_error(e, -ret);
			return -1;
		}
		if ((unsigned int)ret != 2 * n) {
			fprintf(stderr, "vblk-engine: io_uring_submit took %d of %u SQEs on %s\n",
				ret, 2 * n, job->path);
			return -1;
		}
		iowq_sample(e);
		if (reap_wave(e, first, 2 * n))
			return -1;
		for (i = 0; i < n; i++)
			judge_chain(e, &l->chains[i]);
	}
	e->st.elapsed_ns = now_ns() - start;
	return 0;
}

static const char *bool_text(bool b)
{
	return b ? "true" : "false";
}

static void print_chain(const struct chain_result *r)
{
	printf("{\"write_res\": %d, \"second_res\": %d, \"data_ok\": %s, "
	       "\"scribbled\": [%s, %s]}", r->res[0], r->res[1], bool_text(r->data_ok),
	       bool_text(r->scribbled[0]), bool_text(r->scribbled[1]));
}

void link_print(const struct engine *e)
{
	const struct link_state *l = e->link;
	uint64_t i;

	printf(", \"link\": {\"kind\": \"%s\", \"chains\": %" PRIu64 ", \"ok\": %" PRIu64
	       ", \"write_errors\": %" PRIu64 ", \"second_errors\": %" PRIu64
	       ", \"data_mismatches\": %" PRIu64 ", \"scribbled_writes\": %" PRIu64
	       ", \"scribbled_seconds\": %" PRIu64 ", \"stray_cqes\": %" PRIu64,
	       link_names[e->job->link], l->nchains, l->ok, l->write_errors,
	       l->second_errors, l->data_bad, l->scribbled[0], l->scribbled[1],
	       l->stray_cqes);
	fputs(", \"first_bad\": ", stdout);
	if (l->have_bad) {
		printf("{\"chain\": %" PRIu64 ", \"offset\": %" PRIu64 ", \"result\": ",
		       l->bad_chain, l->bad_offset);
		print_chain(&l->bad);
		putchar('}');
	} else {
		fputs("null", stdout);
	}
	fputs(", \"bad_chains\": [", stdout);
	for (i = 0; i < l->nranges; i++)
		printf("%s[%" PRIu64 ", %" PRIu64 "]", i ? ", " : "", l->ranges[i][0],
		       l->ranges[i][1]);
	printf("], \"bad_chains_more\": %s", bool_text(l->more_ranges));
	if (l->nchains <= MAX_RESULTS) {
		fputs(", \"chain_results\": [", stdout);
		for (i = 0; i < l->nchains; i++) {
			fputs(i ? ", " : "", stdout);
			print_chain(&l->results[i]);
		}
		putchar(']');
	}
	putchar('}');
}
