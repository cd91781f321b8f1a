// SPDX-License-Identifier: GPL-2.0-only
/*
 * vblk-engine --program: the guest executor of `vblk-ci fuzz`.
 *
 * Reads a program (a line-based list of uring_cmd steps, every field of
 * struct virtblk_uring_cmd and of the SQE settable) and runs it on one
 * passthrough char device, printing one JSON line per step with cqe->res
 * and, for successful reads, what the data was.  The format and the output
 * are in guest-agent/PROTOCOL.md ("Fuzz programs").
 *
 * It shares only the pattern (pattern_word) with the rest of the engine:
 * the host model recomputes it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"

#define FZ_MAX_CHAIN		8
#define FZ_STEP_BYTES		(256U << 10)	/* data per step, at most */
#define FZ_SLACK		8192U		/* misaligned start, gaps */
#define FZ_SLOT_BYTES		(FZ_STEP_BYTES + FZ_SLACK)
#define FZ_FIXED_BYTES		(FZ_MAX_CHAIN * FZ_STEP_BYTES)
#define FZ_MAX_IOV		1100		/* over UIO_MAXIOV on purpose */
#define FZ_MAX_RANGES		64
#define FZ_MISALIGN		8		/* bytes a misaligned buffer is off */
#define FZ_IOV_GAP		64		/* bytes between misaligned iovecs */
#define FZ_POISON		0xa5a5a5a5a5a5a5a5ULL
#define FZ_LINE_MAX		65536

enum fz_buf { BUF_ALIGNED, BUF_MISALIGNED, BUF_UNMAPPED, BUF_NULL, BUF_FIXED, BUF_FIXED_OOB };

static const char *const fz_buf_names[] = {
	[BUF_ALIGNED] = "aligned", [BUF_MISALIGNED] = "misaligned",
	[BUF_UNMAPPED] = "unmapped", [BUF_NULL] = "null",
	[BUF_FIXED] = "fixed", [BUF_FIXED_OOB] = "fixed-oob",
};

struct fz_step {
	unsigned int index;		/* step number in the program, from 0 */
	uint32_t cmd_op, type, ioprio, flag;
	uint64_t sector;
	uint32_t len;			/* bytes of the single buffer */
	bool have_data_len;
	uint32_t data_len;		/* raw override of cmd->data_len */
	enum fz_buf buf;
	unsigned int niov;
	uint32_t *iov_len;		/* niov lengths, or NULL */
	unsigned int nranges;
	struct vblk_range ranges[FZ_MAX_RANGES];
	uint64_t seed;			/* write pattern seed */
	bool link, async;
	/* filled at prep time */
	unsigned char *data;		/* gathered data (reads are decoded from it) */
	uint32_t bytes;			/* gathered length */
	struct iovec *iov;
};

struct fz {
	const char *dev;
	int fd;
	bool ring_ready;
	bool sqe128, iopoll, sqpoll;
	bool scribble;			/* overwrite SQEs once submitted */
	unsigned int entries;
	struct io_uring ring;
	unsigned char *slots;		/* FZ_MAX_CHAIN data slots */
	unsigned char *fixed;		/* registered buffer */
	struct iovec *iovs;		/* FZ_MAX_CHAIN x FZ_MAX_IOV */
	void *bad_addr;
	unsigned int timeout_ms;
	struct fz_step chain[FZ_MAX_CHAIN];
	unsigned int nchain;
	unsigned int lineno;
	bool opened;			/* a ring or open line ran: too late for a user line */
};

static void fz_die(const struct fz *f, const char *msg, const char *arg)
{
	fprintf(stderr, "vblk-engine --program: line %u: %s%s%s\n", f->lineno, msg,
		arg ? ": " : "", arg ? arg : "");
	exit(EXIT_USAGE);
}

static uint64_t fz_num(const struct fz *f, const char *s)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s || *end)
		fz_die(f, "not a number", s);
	return v;
}

static uint32_t fz_u32(const struct fz *f, const char *s)
{
	uint64_t v = fz_num(f, s);

	if (v > UINT32_MAX)
		fz_die(f, "over 32 bits", s);
	return (uint32_t)v;
}

/* x = splitmix64(y) -> y: every step of splitmix64 is invertible. */
static uint64_t unsplitmix64(uint64_t x)
{
	x ^= x >> 31;
	x ^= x >> 62;
	x *= 0x319642b2d24d8ec3ULL;	/* inverse of 0x94d049bb133111eb */
	x ^= x >> 27;
	x ^= x >> 54;
	x *= 0x96de1b173f119089ULL;	/* inverse of 0xbf58476d1ce4e5b9 */
	x ^= x >> 30;
	x ^= x >> 60;
	return x - 0x9e3779b97f4a7c15ULL;
}

/* -------------------------------------------------------------- ring, fd */

static void fz_close_ring(struct fz *f)
{
	if (f->ring_ready)
		io_uring_queue_exit(&f->ring);
	f->ring_ready = false;
}

static void fz_ring(struct fz *f)
{
	struct io_uring_params p;
	struct iovec iov;
	int ret;

	fz_close_ring(f);
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQE32;
	if (f->sqe128)
		p.flags |= IORING_SETUP_SQE128;
	if (f->iopoll)
		p.flags |= IORING_SETUP_IOPOLL;
	if (f->sqpoll) {
		p.flags |= IORING_SETUP_SQPOLL;
		p.sq_thread_idle = 100;
	}
	ret = io_uring_queue_init_params(f->entries, &f->ring, &p);
	if (ret < 0) {
		setup_error("io_uring setup failed for", f->dev, -ret);
		exit(EXIT_SETUP);
	}
	f->ring_ready = true;
	iov.iov_base = f->fixed;
	iov.iov_len = FZ_FIXED_BYTES;
	ret = io_uring_register_buffers(&f->ring, &iov, 1);
	if (ret < 0) {
		setup_error("cannot register buffers for", f->dev, -ret);
		exit(EXIT_SETUP);
	}
}

static void fz_open(struct fz *f, const char *mode)
{
	int flags;

	if (!strcmp(mode, "rw"))
		flags = O_RDWR;
	else if (!strcmp(mode, "ro"))
		flags = O_RDONLY;
	else if (!strcmp(mode, "wo"))
		flags = O_WRONLY;
	else
		fz_die(f, "open mode is rw, ro or wo", mode);
	/* Registered files are not used: sqe->fd is this fd. */
	if (f->fd >= 0)
		close(f->fd);
	f->fd = open(f->dev, flags | O_CLOEXEC);
	if (f->fd < 0) {
		setup_error("cannot open", f->dev, errno);
		exit(EXIT_SETUP);
	}
}

/* ------------------------------------------------------------------ parse */

static void fz_parse_iov(struct fz *f, struct fz_step *s, char *v)
{
	static uint32_t lens[FZ_MAX_CHAIN][FZ_MAX_IOV];
	char *tok, *save = NULL;

	s->iov_len = lens[f->nchain];
	s->niov = 0;
	for (tok = strtok_r(v, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *x = strchr(tok, 'x');
		uint64_t count = 1, i;
		uint32_t len;

		if (x) {
			*x = '\0';
			count = fz_num(f, x + 1);
		}
		len = fz_u32(f, tok);
		for (i = 0; i < count; i++) {
			if (s->niov == FZ_MAX_IOV)
				fz_die(f, "too many iovecs", NULL);
			s->iov_len[s->niov++] = len;
		}
	}
}

static void fz_parse_ranges(struct fz *f, struct fz_step *s, char *v)
{
	char *tok, *save = NULL;

	s->nranges = 0;
	for (tok = strtok_r(v, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *a = strchr(tok, ':'), *b;

		if (!a || !(b = strchr(a + 1, ':')))
			fz_die(f, "a range is SECTOR:NUM:FLAGS", tok);
		*a = *b = '\0';
		if (s->nranges == FZ_MAX_RANGES)
			fz_die(f, "too many ranges", NULL);
		/* little-endian on the wire; the guest is x86 */
		s->ranges[s->nranges].sector = fz_num(f, tok);
		s->ranges[s->nranges].num_sectors = fz_u32(f, a + 1);
		s->ranges[s->nranges].flags = fz_u32(f, b + 1);
		s->nranges++;
	}
}

static enum fz_buf fz_buf_kind(const struct fz *f, const char *v)
{
	unsigned int i;

	for (i = 0; i < sizeof(fz_buf_names) / sizeof(fz_buf_names[0]); i++)
		if (!strcmp(v, fz_buf_names[i]))
			return (enum fz_buf)i;
	fz_die(f, "unknown buffer kind", v);
	return BUF_ALIGNED;
}

static void fz_parse_step(struct fz *f, struct fz_step *s, char *rest, unsigned int index)
{
	char *tok, *save = NULL;

	memset(s, 0, sizeof(*s));
	s->index = index;
	s->cmd_op = VIRTBLK_URING_CMD_IO;
	for (tok = strtok_r(rest, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
		char *v = strchr(tok, '=');

		if (!v)
			fz_die(f, "a step field is KEY=VALUE", tok);
		*v++ = '\0';
		if (!strcmp(tok, "op"))
			s->cmd_op = fz_u32(f, v);
		else if (!strcmp(tok, "type"))
			s->type = fz_u32(f, v);
		else if (!strcmp(tok, "ioprio"))
			s->ioprio = fz_u32(f, v);
		else if (!strcmp(tok, "flag"))
			s->flag = fz_u32(f, v);
		else if (!strcmp(tok, "sector"))
			s->sector = fz_num(f, v);
		else if (!strcmp(tok, "len"))
			s->len = fz_u32(f, v);
		else if (!strcmp(tok, "data_len")) {
			s->have_data_len = true;
			s->data_len = fz_u32(f, v);
		} else if (!strcmp(tok, "buf"))
			s->buf = fz_buf_kind(f, v);
		else if (!strcmp(tok, "iov"))
			fz_parse_iov(f, s, v);
		else if (!strcmp(tok, "ranges"))
			fz_parse_ranges(f, s, v);
		else if (!strcmp(tok, "seed"))
			s->seed = fz_num(f, v);
		else if (!strcmp(tok, "link"))
			s->link = fz_num(f, v) != 0;
		else if (!strcmp(tok, "async"))
			s->async = fz_num(f, v) != 0;
		else
			fz_die(f, "unknown step field", tok);
	}
	if (s->len > FZ_STEP_BYTES)
		fz_die(f, "len over 256 KiB", NULL);
}

/* ------------------------------------------------------------------- prep */

static uint64_t fz_total_iov(const struct fz_step *s)
{
	uint64_t n = 0;
	unsigned int i;

	for (i = 0; i < s->niov; i++)
		n += s->iov_len[i];
	return n;
}

/* Fill the gathered buffer with what a write carries. */
static void fz_fill(struct fz_step *s)
{
	uint32_t i;

	if (s->nranges) {
		memcpy(s->data, s->ranges, s->bytes);
		return;
	}
	if (s->type == VBLK_T_OUT) {
		for (i = 0; i + 8 <= s->bytes; i += 8) {
			uint64_t w = pattern_word(s->seed, s->sector * SECTOR_SIZE + i);

			memcpy(s->data + i, &w, 8);
		}
		return;
	}
	memset(s->data, 0xa5, s->bytes);
}

/*
 * Lay the step's buffer out in its slot (or the registered buffer) and
 * return the command's data pointer.
 */
static uint64_t fz_layout(struct fz *f, struct fz_step *s, unsigned int pos)
{
	unsigned char *base = f->slots + (size_t)pos * FZ_SLOT_BYTES;
	unsigned int i;
	size_t off;

	if (s->buf == BUF_FIXED || s->buf == BUF_FIXED_OOB)
		base = f->fixed + (size_t)pos * FZ_STEP_BYTES;
	if (s->buf == BUF_MISALIGNED)
		base += FZ_MISALIGN;

	if (s->niov) {
		uint64_t total = fz_total_iov(s);

		if (total > FZ_STEP_BYTES)
			total = 0;	/* too big for the slot: lengths go as given, no data */
		s->iov = f->iovs + (size_t)pos * FZ_MAX_IOV;
		s->bytes = (uint32_t)total;
		s->data = malloc(s->bytes ? s->bytes : 1);
		if (!s->data) {
			setup_error("out of memory for", f->dev, ENOMEM);
			exit(EXIT_SETUP);
		}
		fz_fill(s);
		for (i = 0, off = 0; i < s->niov; i++) {
			s->iov[i].iov_len = s->iov_len[i];
			if (!total) {
				s->iov[i].iov_base = base;
				continue;
			}
			s->iov[i].iov_base = base + off;
			off += s->iov_len[i];
			/* gaps only while they fit in the slot's slack */
			if (s->buf == BUF_MISALIGNED && s->niov <= 64)
				off += FZ_IOV_GAP;
		}
		/* scatter the gathered data into the iovecs */
		if (total) {
			uint64_t g = 0;

			for (i = 0; i < s->niov; i++) {
				memcpy(s->iov[i].iov_base, s->data + g, s->iov_len[i]);
				g += s->iov_len[i];
			}
		}
		if (s->buf == BUF_UNMAPPED)
			return (uint64_t)(uintptr_t)f->bad_addr;
		if (s->buf == BUF_NULL)
			return 0;
		return (uint64_t)(uintptr_t)s->iov;
	}

	s->bytes = s->nranges ? s->nranges * sizeof(struct vblk_range) : s->len;
	s->data = base;
	if (s->buf == BUF_FIXED_OOB)	/* runs past the end of the registered buffer */
		s->data = f->fixed + FZ_FIXED_BYTES - SECTOR_SIZE;
	if (s->buf != BUF_UNMAPPED && s->buf != BUF_NULL && s->buf != BUF_FIXED_OOB)
		fz_fill(s);
	if (s->buf == BUF_UNMAPPED)
		return (uint64_t)(uintptr_t)f->bad_addr;
	if (s->buf == BUF_NULL)
		return 0;
	return (uint64_t)(uintptr_t)s->data;
}

static void fz_prep(struct fz *f, struct io_uring_sqe *sqe, struct fz_step *s, unsigned int pos)
{
	struct vblk_uring_cmd cmd;

	memset(&cmd, 0, sizeof(cmd));
	cmd.type = s->type;
	cmd.ioprio = s->ioprio;
	cmd.sector = s->sector;
	cmd.flag = s->flag;
	cmd.data = fz_layout(f, s, pos);
	if (s->niov)
		cmd.data_len = s->niov;
	else
		cmd.data_len = s->bytes;
	if (s->have_data_len)
		cmd.data_len = s->data_len;

	memset(sqe, 0, f->sqe128 ? 128 : 64);
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = f->fd;
	sqe->cmd_op = s->cmd_op;
	sqe->user_data = pos;
	if (s->buf == BUF_FIXED || s->buf == BUF_FIXED_OOB) {
		sqe->uring_cmd_flags = IORING_URING_CMD_FIXED;
		sqe->buf_index = 0;
	}
	if (s->link)
		sqe->flags |= IOSQE_IO_LINK;
	if (s->async)
		sqe->flags |= IOSQE_ASYNC;
	memcpy((unsigned char *)sqe + SQE_CMD_OFFSET, &cmd,
	       f->sqe128 ? sizeof(cmd) : SQE64_CMD_BYTES);
}

/* ----------------------------------------------------------------- output */

/* Gather what a vectored read brought back into s->data. */
static void fz_gather(struct fz_step *s)
{
	uint64_t g = 0;
	unsigned int i;

	if (!s->niov || !s->bytes)
		return;
	for (i = 0; i < s->niov; i++) {
		memcpy(s->data + g, s->iov[i].iov_base, s->iov_len[i]);
		g += s->iov_len[i];
	}
}

/*
 * One tag per 512-byte sector: 0 all zero, -2 untouched poison, the seed
 * whose pattern the sector holds exactly, or -1 anything else.  Runs of
 * equal tags are printed as [count, tag].
 */
static int64_t fz_tag(const unsigned char *p, uint64_t off)
{
	uint64_t w[SECTOR_SIZE / 8], seed;
	unsigned int i;
	bool zero = true, poison = true;

	memcpy(w, p, sizeof(w));
	for (i = 0; i < SECTOR_SIZE / 8; i++) {
		zero &= w[i] == 0;
		poison &= w[i] == FZ_POISON;
	}
	if (zero)
		return 0;
	if (poison)
		return -2;
	seed = unsplitmix64(w[0]) ^ (off / 8);
	if (!seed || seed > INT64_MAX)
		return -1;
	for (i = 1; i < SECTOR_SIZE / 8; i++)
		if (w[i] != pattern_word(seed, off + i * 8))
			return -1;
	return (int64_t)seed;
}

static void fz_print_data(const struct fz_step *s)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	uint32_t i, n = s->bytes / SECTOR_SIZE;
	int64_t run_tag = 0;
	uint32_t run = 0;
	bool first = true;

	for (i = 0; i < s->bytes; i++)
		h = (h ^ s->data[i]) * 0x100000001b3ULL;
	printf(",\"bytes\":%u,\"hash\":\"0x%016llx\",\"sectors\":[", s->bytes,
	       (unsigned long long)h);
	for (i = 0; i < n; i++) {
		int64_t t = fz_tag(s->data + (size_t)i * SECTOR_SIZE,
				   (s->sector + i) * SECTOR_SIZE);

		if (run && t == run_tag) {
			run++;
			continue;
		}
		if (run) {
			printf("%s[%u,%lld]", first ? "" : ",", run, (long long)run_tag);
			first = false;
		}
		run_tag = t;
		run = 1;
	}
	if (run)
		printf("%s[%u,%lld]", first ? "" : ",", run, (long long)run_tag);
	printf("]");
}

static void fz_print_step(const struct fz_step *s, int res, bool hang)
{
	printf("{\"i\":%u", s->index);
	if (hang) {
		printf(",\"hang\":true}\n");
		fflush(stdout);
		return;
	}
	printf(",\"res\":%d", res);
	if (res == 0 && s->type == VBLK_T_IN && s->buf != BUF_UNMAPPED &&
	    s->buf != BUF_NULL && s->buf != BUF_FIXED_OOB && s->bytes)
		fz_print_data(s);
	if (res == 0 && s->type == VBLK_T_GET_ID && s->data && !s->niov) {
		char id[VBLK_ID_BYTES + 1];

		memcpy(id, s->data, VBLK_ID_BYTES);
		id[VBLK_ID_BYTES] = '\0';
		printf(",\"id\":");
		print_json_ascii(id);
	}
	printf("}\n");
	fflush(stdout);
}

/* ------------------------------------------------------------------- run */

static void fz_ring_error(const struct fz *f, int err)
{
	fprintf(stderr, "vblk-engine --program: io_uring_enter failed on %s: %s\n",
		f->dev, strerror(err));
}

static int fz_wait(struct fz *f, struct io_uring_cqe **cqe, uint64_t deadline)
{
	struct __kernel_timespec ts;
	int ret;

	for (;;) {
		ret = io_uring_peek_cqe(&f->ring, cqe);
		if (!ret)
			return 0;
		if (now_ns() > deadline)
			return -ETIME;
		if (f->iopoll) {
			/* min_complete 0: one polling pass, never an unbounded loop */
			ret = io_uring_enter(f->ring.ring_fd, 0, 0, IORING_ENTER_GETEVENTS, NULL);
			if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
				return ret;
			continue;
		}
		ts.tv_sec = 0;
		ts.tv_nsec = 100 * 1000 * 1000;
		ret = io_uring_wait_cqe_timeout(&f->ring, cqe, &ts);
		if (!ret)
			return 0;
		if (ret != -ETIME && ret != -EINTR)
			return ret;
	}
}

static void fz_run_chain(struct fz *f)
{
	struct io_uring_sqe *sqes[FZ_MAX_CHAIN];
	int res[FZ_MAX_CHAIN];
	bool done[FZ_MAX_CHAIN] = { false };
	unsigned int i, got = 0;
	uint64_t deadline;
	int ret;

	if (!f->nchain)
		return;
	if (!f->ring_ready)
		fz_die(f, "a step before any ring line", NULL);
	if (f->fd < 0)
		fz_die(f, "a step before any open line", NULL);
	for (i = 0; i < f->nchain; i++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&f->ring);

		if (!sqe)
			fz_die(f, "chain longer than the ring", NULL);
		fz_prep(f, sqe, &f->chain[i], i);
		sqes[i] = sqe;
	}
	ret = io_uring_submit(&f->ring);
	if (ret < 0) {
		fz_ring_error(f, -ret);
		exit(EXIT_RUNTIME);
	}
	if (f->scribble) {
		/*
		 * Once the kernel has consumed them the SQ slots are the
		 * application's again: a command must not read its SQE later
		 * (linked, IOSQE_ASYNC, -EAGAIN retries).  With SQPOLL the
		 * slots are consumed when the SQ head passes them.
		 */
		while (f->sqpoll && io_uring_sq_ready(&f->ring))
			;
		for (i = 0; i < f->nchain; i++)
			memset(sqes[i], 0xa5, f->sqe128 ? 128 : 64);
	}
	deadline = now_ns() + (uint64_t)f->timeout_ms * 1000000ULL;
	while (got < f->nchain) {
		struct io_uring_cqe *cqe;

		ret = fz_wait(f, &cqe, deadline);
		if (ret == -ETIME) {
			for (i = 0; i < f->nchain; i++)
				if (!done[i])
					fz_print_step(&f->chain[i], 0, true);
			/* the ring cannot be torn down with a command stuck in it */
			_exit(4);
		}
		if (ret < 0) {
			fz_ring_error(f, -ret);
			exit(EXIT_RUNTIME);
		}
		i = (unsigned int)cqe->user_data;
		if (i < f->nchain && !done[i]) {
			done[i] = true;
			res[i] = cqe->res;
			got++;
		}
		io_uring_cqe_seen(&f->ring, cqe);
	}
	for (i = 0; i < f->nchain; i++) {
		struct fz_step *s = &f->chain[i];

		if (s->niov && res[i] == 0)
			fz_gather(s);
		fz_print_step(s, res[i], false);
		if (s->niov)
			free(s->data);
	}
	f->nchain = 0;
}

/*
 * user uid=N gid=N: become that user for the rest of the program (no
 * supplementary groups, no capabilities), before the ring and the fd exist.
 */
static void fz_user_line(struct fz *f, char *rest)
{
	char *tok, *save = NULL;
	bool have_uid = false, have_gid = false;
	uint32_t uid = 0, gid = 0;

	if (f->opened)
		fz_die(f, "a user line must come before any ring or open line", NULL);
	for (tok = strtok_r(rest, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
		char *v = strchr(tok, '=');

		if (!v)
			fz_die(f, "a user field is KEY=VALUE", tok);
		*v++ = '\0';
		if (!strcmp(tok, "uid")) {
			uid = fz_u32(f, v);
			have_uid = true;
		} else if (!strcmp(tok, "gid")) {
			gid = fz_u32(f, v);
			have_gid = true;
		} else {
			fz_die(f, "unknown user field", tok);
		}
	}
	if (!have_uid || !have_gid || uid == UINT32_MAX || gid == UINT32_MAX)
		fz_die(f, "a user line is 'user uid=N gid=N'", NULL);
	if (setgroups(0, NULL) || setgid((gid_t)gid) || setuid((uid_t)uid)) {
		fprintf(stderr, "vblk-engine --program: cannot become uid %u gid %u: %s\n",
			uid, gid, strerror(errno));
		exit(EXIT_SETUP);
	}
}

static void fz_ring_line(struct fz *f, char *rest)
{
	char *tok, *save = NULL;

	f->sqe128 = true;
	f->iopoll = f->sqpoll = f->scribble = false;
	f->entries = 16;
	for (tok = strtok_r(rest, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
		char *v = strchr(tok, '=');

		if (!v)
			fz_die(f, "a ring field is KEY=VALUE", tok);
		*v++ = '\0';
		if (!strcmp(tok, "sqe"))
			f->sqe128 = fz_num(f, v) == 128;
		else if (!strcmp(tok, "iopoll"))
			f->iopoll = fz_num(f, v) != 0;
		else if (!strcmp(tok, "sqpoll"))
			f->sqpoll = fz_num(f, v) != 0;
		else if (!strcmp(tok, "scribble"))
			f->scribble = fz_num(f, v) != 0;
		else if (!strcmp(tok, "entries"))
			f->entries = fz_u32(f, v);
		else
			fz_die(f, "unknown ring field", tok);
	}
	if (f->entries < FZ_MAX_CHAIN || f->entries > 4096)
		fz_die(f, "ring entries must be 8..4096", NULL);
	fz_ring(f);
}

static void fz_line(struct fz *f, char *line, unsigned int *nsteps)
{
	char *word = line, *rest;

	while (*word == ' ' || *word == '\t')
		word++;
	if (!*word || *word == '#')
		return;
	rest = word + strcspn(word, " \t");
	if (*rest)
		*rest++ = '\0';
	if (!strcmp(word, "step")) {
		struct fz_step *s;

		if (f->nchain == FZ_MAX_CHAIN)
			fz_die(f, "linked chain longer than 8 steps", NULL);
		s = &f->chain[f->nchain];
		fz_parse_step(f, s, rest, (*nsteps)++);
		f->nchain++;
		if (!s->link)
			fz_run_chain(f);
		return;
	}
	fz_run_chain(f);	/* a chain still open runs before the next directive */
	if (!strcmp(word, "user")) {
		fz_user_line(f, rest);
	} else if (!strcmp(word, "ring")) {
		f->opened = true;
		fz_ring_line(f, rest);
	} else if (!strcmp(word, "open")) {
		f->opened = true;
		fz_open(f, strncmp(rest, "mode=", 5) ? rest : rest + 5);
	} else {
		fz_die(f, "unknown directive", word);
	}
}

static void *fz_alloc(const struct fz *f, size_t n)
{
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		setup_error("cannot map buffers for", f->dev, errno);
		exit(EXIT_SETUP);
	}
	return p;
}

/* vblk-engine --program FILE|- --dev PATH [--timeout-ms N] */
int fuzz_main(int argc, char **argv)
{
	static struct fz f;
	const char *program = NULL;
	char *line;
	FILE *in;
	unsigned int nsteps = 0;
	int i;

	f.fd = -1;
	f.timeout_ms = 20000;
	f.lineno = 0;
	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--program") && i + 1 < argc)
			program = argv[++i];
		else if (!strcmp(argv[i], "--dev") && i + 1 < argc)
			f.dev = argv[++i];
		else if (!strcmp(argv[i], "--timeout-ms") && i + 1 < argc)
			f.timeout_ms = fz_u32(&f, argv[++i]);
		else
			fz_die(&f, "usage: vblk-engine --program FILE|- --dev PATH [--timeout-ms N]",
			       argv[i]);
	}
	if (!program || !f.dev)
		fz_die(&f, "usage: vblk-engine --program FILE|- --dev PATH [--timeout-ms N]", NULL);
	in = strcmp(program, "-") ? fopen(program, "r") : stdin;
	if (!in) {
		setup_error("cannot open", program, errno);
		return EXIT_SETUP;
	}
	f.slots = fz_alloc(&f, (size_t)FZ_MAX_CHAIN * FZ_SLOT_BYTES);
	f.fixed = fz_alloc(&f, FZ_FIXED_BYTES);
	f.iovs = calloc((size_t)FZ_MAX_CHAIN * FZ_MAX_IOV, sizeof(struct iovec));
	/*
	 * The "unmapped" buffer is a PROT_NONE page kept mapped: a page that was
	 * munmap()ped can come back as the next ring's SQ array, and a read into
	 * it would corrupt the ring instead of failing with -EFAULT.
	 */
	f.bad_addr = mmap(NULL, BUF_ALIGN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!f.iovs || f.bad_addr == MAP_FAILED) {
		setup_error("cannot set up buffers for", f.dev, errno);
		return EXIT_SETUP;
	}
	line = malloc(FZ_LINE_MAX);
	if (!line)
		return EXIT_SETUP;
	while (fgets(line, FZ_LINE_MAX, in)) {
		f.lineno++;
		line[strcspn(line, "\r\n")] = '\0';
		fz_line(&f, line, &nsteps);
	}
	fz_run_chain(&f);
	fz_close_ring(&f);
	if (f.fd >= 0)
		close(f.fd);
	free(line);
	return EXIT_JOB_RAN;
}
