// SPDX-License-Identifier: GPL-2.0-only
/*
 * Progress lines for the host's fault schedules (--progress-fd/--progress-ms).
 *
 * While a job runs, one JSON line at most every --progress-ms goes to the
 * given fd: how many I/Os were prepared and completed so far, how many are in
 * flight, and the cqe->res values counted.  The line is written from the
 * submission path (prep_io), so a job whose I/Os stop completing stops
 * reporting: the host reads that as "no progress", which is the truth.
 * Writes never block the engine: a full pipe drops the line.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include "engine.h"

static uint64_t prepared;
static uint64_t last_ns;
static uint64_t seq;

static uint64_t completed(const struct res_counts *rc)
{
	uint64_t n = rc->other;
	unsigned int i;

	for (i = 0; i < rc->n; i++)
		n += rc->count[i];
	return n;
}

static void emit(const struct engine *e, uint64_t now)
{
	const struct res_counts *rc = &e->st.res_counts;
	uint64_t done = completed(rc);
	char line[1024];
	int len, n;
	unsigned int i;

	len = snprintf(line, sizeof(line),
		       "{\"seq\": %llu, \"t_ns\": %llu, \"prepared\": %llu, "
		       "\"completions\": %llu, \"in_flight\": %llu, \"res\": {",
		       (unsigned long long)seq++, (unsigned long long)now,
		       (unsigned long long)prepared, (unsigned long long)done,
		       (unsigned long long)(prepared > done ? prepared - done : 0));
	for (i = 0; i < rc->n && len > 0 && (size_t)len < sizeof(line) - 64; i++)
		len += snprintf(line + len, sizeof(line) - (size_t)len, "%s\"%d\": %llu",
				i ? ", " : "", rc->res[i], (unsigned long long)rc->count[i]);
	if (len <= 0 || (size_t)len >= sizeof(line) - 48)
		return;
	len += snprintf(line + len, sizeof(line) - (size_t)len, "}, \"other\": %llu}\n",
			(unsigned long long)rc->other);
	n = (int)write((int)e->job->progress_fd, line, (size_t)len);
	(void)n;	/* EAGAIN (the reader is behind) or EPIPE: the line is lost */
}

void progress_prepared(struct engine *e)
{
	uint64_t now, every;

	if (!e->job->progress_fd)
		return;
	prepared++;
	now = now_ns();
	every = (uint64_t)(e->job->progress_ms ? e->job->progress_ms : 200) * 1000000ULL;
	if (last_ns && now - last_ns < every)
		return;
	if (!last_ns) {
		int fl = fcntl((int)e->job->progress_fd, F_GETFL);

		if (fl >= 0)
			fcntl((int)e->job->progress_fd, F_SETFL, fl | O_NONBLOCK);
	}
	last_ns = now;
	emit(e, now);
}
