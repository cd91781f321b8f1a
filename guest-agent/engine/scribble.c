// SPDX-License-Identifier: GPL-2.0-only
/*
 * vblk-engine --scribble: right after each io_uring_submit() returns, every
 * SQE it submitted is overwritten with another valid command, as an
 * application that reuses its SQ ring at once would.  The kernel has
 * consumed those slots, so no command may be read from its slot any more
 * (review-v2 #3: a linked uring_cmd, or one retried after -EAGAIN, was).
 *
 * The scribbled command is a READ (passthrough type 0, block path
 * IORING_OP_READ) of --bs bytes at --offset into a canary buffer of the
 * I/O's own, filled with 0xa5, user_data 0.  When the I/O completes its
 * canary is checked: one that changed means the kernel executed the
 * scribble, a command the application never submitted, in place of the
 * one it did (counted in "scribble": {"executed"}).
 *
 * Also here: the io-wq workers of the job ("iou-wrk-<tid>" threads in
 * /proc/self/task), sampled after each submit and reap.  Without --async a
 * uring_cmd goes to io-wq only when its inline issue returned -EAGAIN (no
 * free tag), so a maximum above 0 shows the -EAGAIN retry path ran.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"

struct scribble_state {
	unsigned int cap;
	unsigned int n;			/* submitted SQEs not yet scribbled */
	struct io_uring_sqe **sqe;
	void **canary;			/* canary of each of them */
	unsigned int nowned;
	void **owned;			/* canaries to free */
	uint32_t len;			/* bytes the scribbled READ covers */
	uint64_t sqes;			/* SQEs overwritten */
	uint64_t hits;			/* canaries the kernel wrote into */
};

int scribble_setup(struct engine *e, unsigned int cap)
{
	struct scribble_state *sc = calloc(1, sizeof(*sc));

	if (sc) {
		sc->sqe = calloc(cap, sizeof(*sc->sqe));
		sc->canary = calloc(cap, sizeof(*sc->canary));
		sc->owned = calloc(cap, sizeof(*sc->owned));
	}
	e->scribble = sc;
	if (!sc || !sc->sqe || !sc->canary || !sc->owned) {
		setup_error("out of memory for --scribble on", e->job->path, ENOMEM);
		return -1;
	}
	sc->cap = cap;
	sc->len = (uint32_t)(e->job->length < e->job->bs ? e->job->length : e->job->bs);
	return 0;
}

int scribble_add_canary(struct engine *e, struct slot *s)
{
	struct scribble_state *sc = e->scribble;
	size_t size = ((size_t)sc->len + BUF_ALIGN - 1) & ~(size_t)(BUF_ALIGN - 1);
	int ret;

	if (sc->nowned == sc->cap)
		return -1;
	ret = posix_memalign(&s->canary, BUF_ALIGN, size);
	if (ret) {
		s->canary = NULL;
		setup_error("cannot allocate canaries for", e->job->path, ret);
		return -1;
	}
	memset(s->canary, READ_POISON, size);
	sc->owned[sc->nowned++] = s->canary;
	return 0;
}

void scribble_teardown(struct engine *e)
{
	struct scribble_state *sc = e->scribble;
	unsigned int i;

	if (!sc)
		return;
	for (i = 0; i < sc->nowned; i++)
		free(sc->owned[i]);
	free(sc->owned);
	free(sc->sqe);
	free(sc->canary);
	free(sc);
	e->scribble = NULL;
}

/* @sqe, just prepared for the I/O in @s, is to be scribbled after submit. */
void scribble_note(struct engine *e, struct io_uring_sqe *sqe, const struct slot *s)
{
	struct scribble_state *sc = e->scribble;

	if (!sc || !s->canary || sc->n == sc->cap)
		return;
	sc->sqe[sc->n] = sqe;
	sc->canary[sc->n++] = s->canary;
}

/* Call right after io_uring_submit() returned: overwrite what it took. */
void scribble_submitted(struct engine *e)
{
	struct scribble_state *sc = e->scribble;
	struct slot other;
	unsigned int i;

	if (!sc)
		return;
	for (i = 0; i < sc->n; i++) {
		memset(&other, 0, sizeof(other));
		other.buf = sc->canary[i];
		other.kind = IO_READ;
		other.offset = e->job->offset;
		other.len = sc->len;
		prep_sqe(e, sc->sqe[i], &other);
		io_uring_sqe_set_data(sc->sqe[i], NULL);
	}
	sc->sqes += sc->n;
	sc->n = 0;
}

/* After the I/O in @s completed: did the kernel execute its scribble? */
bool scribble_check(struct engine *e, const struct slot *s)
{
	struct scribble_state *sc = e->scribble;
	const unsigned char *p = s->canary;
	uint32_t i;

	if (!sc || !p)
		return false;
	for (i = 0; i < sc->len; i++) {
		if (p[i] != READ_POISON) {
			memset(s->canary, READ_POISON, sc->len);
			sc->hits++;
			return true;
		}
	}
	return false;
}

bool iowq_watched(const struct job *job)
{
	return (job->scribble || job->async_sqe || job->link) && !job->bench &&
	       job->op != OP_MIX;
}

/* io-wq workers are threads of this process named "iou-wrk-<tid>". */
static unsigned int count_iowq_workers(void)
{
	char path[64], comm[32];
	unsigned int n = 0;
	struct dirent *d;
	ssize_t len;
	DIR *dir;
	int fd;

	dir = opendir("/proc/self/task");
	if (!dir)
		return 0;
	while ((d = readdir(dir))) {
		if (d->d_name[0] < '0' || d->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%.20s/comm", d->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;	/* the worker exited meanwhile */
		len = read(fd, comm, sizeof(comm) - 1);
		close(fd);
		if (len > 0 && !strncmp(comm, "iou-wrk", 7))
			n++;
	}
	closedir(dir);
	return n;
}

void iowq_sample(struct engine *e)
{
	unsigned int n;

	if (!iowq_watched(e->job))
		return;
	n = count_iowq_workers();
	if (n > e->iowq_max)
		e->iowq_max = n;
}

void scribble_print(const struct engine *e)
{
	const struct scribble_state *sc = e->scribble;

	/* "async" is printed with the ring options (output.c) */
	printf(", \"defer_taskrun\": %s, \"scribble\": ",
	       e->job->defer_taskrun ? "true" : "false");
	if (sc)
		printf("{\"sqes\": %" PRIu64 ", \"executed\": %" PRIu64 ", \"len\": %" PRIu32 "}",
		       sc->sqes, sc->hits, sc->len);
	else
		fputs("null", stdout);
	fputs(", \"iowq_workers_max\": ", stdout);
	if (iowq_watched(e->job))
		printf("%u", e->iowq_max);
	else
		fputs("null", stdout);
}
