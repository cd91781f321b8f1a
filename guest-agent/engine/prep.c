// SPDX-License-Identifier: GPL-2.0-only
/*
 * vblk-engine SQE preparation for one I/O in a slot, on either path.
 *
 * Passthrough (char device): IORING_OP_URING_CMD with struct
 * virtblk_uring_cmd at sqe->cmd; the raw knobs (--type, --cmd-op, --flag,
 * --data-len, --bad-ptr) override fields verbatim after the normal values
 * are computed; --sector overrides the 512-byte sector the same way, and
 * --range-sector the sector of every discard/write-zeroes range, and
 * --range-num-sectors/--range-flags its other two fields.
 * --ioprio goes to the command's ioprio field on passthrough and to
 * sqe->ioprio on the block path, so one job runs on both.  Block path (block device or regular file, O_DIRECT):
 * READ/WRITE (READV/WRITEV with --vec, READ_FIXED/WRITE_FIXED with --fixed),
 * FSYNC for flush, FALLOCATE for write-zeroes and for discard on a regular
 * file, BLOCK_URING_CMD_DISCARD for discard on a block device.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/falloc.h>
#include <string.h>
#include <sys/ioctl.h>

#include "engine.h"

#ifndef BLOCK_URING_CMD_DISCARD
#define BLOCK_URING_CMD_DISCARD		_IO(0x12, 0)	/* linux/blkdev.h, 6.12 */
#endif

static const uint32_t kind_type[IO_KINDS] = {
	[IO_READ] = VBLK_T_IN, [IO_WRITE] = VBLK_T_OUT, [IO_FLUSH] = VBLK_T_FLUSH,
	[IO_GET_ID] = VBLK_T_GET_ID, [IO_DISCARD] = VBLK_T_DISCARD,
	[IO_WZEROES] = VBLK_T_WRITE_ZEROES,
};

static uint32_t to_le32(uint32_t v)
{
	return __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? v : __builtin_bswap32(v);
}

static uint64_t to_le64(uint64_t v)
{
	return __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? v : __builtin_bswap64(v);
}

/*
 * Cut [s->offset, s->offset + s->len) into s->nranges ranges in s->buf:
 * one range covers it all, several are bs bytes each (the last one may be
 * shorter).  Returns the list size in bytes.
 */
static uint32_t fill_ranges(const struct engine *e, struct slot *s)
{
	struct vblk_range *r = s->buf;
	uint64_t off = s->offset, left = s->len, n;
	uint64_t unit = s->nranges == 1 ? s->len : e->job->bs;
	bool unmap = e->job->unmap && s->kind == IO_WZEROES;
	uint32_t i;

	for (i = 0; i < s->nranges; i++) {
		n = left < unit ? left : unit;
		r[i].sector = to_le64(e->job->range_sector.set ?
				      e->job->range_sector.v : off / SECTOR_SIZE);
		r[i].num_sectors = to_le32(e->job->range_nr.set ? e->job->range_nr.v :
					   (uint32_t)(n / SECTOR_SIZE));
		r[i].flags = to_le32(e->job->range_flags.set ? e->job->range_flags.v :
				     unmap ? VBLK_WZ_FLAG_UNMAP : 0);
		off += n;
		left -= n;
	}
	return s->nranges * (uint32_t)sizeof(*r);
}

/*
 * Describe @len bytes of @buf with up to job->vec iovecs: equal pieces of
 * whole 512-byte units when the length allows, else of 8-byte units; the
 * last piece takes the rest.  Returns the number of iovecs used.
 */
static unsigned int split_iov(const struct engine *e, struct slot *s,
			      void *buf, uint32_t len)
{
	unsigned int n = e->job->vec, i;
	uint32_t unit = 8, per;

	if (len % SECTOR_SIZE == 0 && len / SECTOR_SIZE >= n)
		unit = SECTOR_SIZE;
	if (len / unit < n)
		n = len / unit ? len / unit : 1;
	per = len / unit / n * unit;
	for (i = 0; i < n; i++) {
		s->iov[i].iov_base = (char *)buf + (size_t)i * per;
		s->iov[i].iov_len = i + 1 < n ? per : len - per * (n - 1);
	}
	return n;
}

/*
 * --vec and --fixed shape every I/O of a basic job (so the kernel's refusal
 * of them for FLUSH/GET_ID/DISCARD/WRITE_ZEROES can be tested); in a mix or
 * a benchmark they only shape reads and writes.
 */
static bool data_io(const struct engine *e, const struct slot *s)
{
	return (e->job->op != OP_MIX && !e->job->bench) ||
	       s->kind == IO_READ || s->kind == IO_WRITE;
}

static bool use_vec(const struct engine *e, const struct slot *s)
{
	return e->job->vec && data_io(e, s);
}

static bool use_fixed(const struct engine *e, const struct slot *s)
{
	return e->job->fixed && data_io(e, s);
}

/* data and data_len of the command before any raw override. */
static void pt_data(const struct engine *e, struct slot *s, uint64_t *data,
		    uint32_t *len)
{
	switch (s->kind) {
	case IO_FLUSH:
		*data = 0;
		*len = 0;
		return;
	case IO_GET_ID:
		*len = VBLK_ID_BYTES;
		break;
	case IO_DISCARD:
	case IO_WZEROES:
		*len = fill_ranges(e, s);
		break;
	default:
		*len = s->len;
		break;
	}
	*data = (uint64_t)(uintptr_t)s->buf;
	if (use_vec(e, s)) {
		*len = split_iov(e, s, s->buf, *len);
		*data = (uint64_t)(uintptr_t)s->iov;
		if (e->job->compat_ring)
			pack_iov32(s->iov, *len);
	}
}

/* FLUSH and GET_ID carry no sector: --offset / 512 goes there (0 by default). */
static uint64_t pt_sector(const struct slot *s)
{
	if (s->kind == IO_DISCARD || s->kind == IO_WZEROES)
		return 0;
	return s->offset / SECTOR_SIZE;
}

static void pt_overrides(const struct engine *e, struct vblk_uring_cmd *cmd,
			 uint32_t *cmd_op)
{
	const struct job *job = e->job;

	if (job->bad_ptr)
		cmd->data = (uint64_t)(uintptr_t)e->bad_addr;
	if (job->type.set)
		cmd->type = job->type.v;
	if (job->data_len.set)
		cmd->data_len = job->data_len.v;
	if (job->flag.set)
		cmd->flag = job->flag.v;
	if (job->cmd_op.set)
		*cmd_op = job->cmd_op.v;
	if (job->sector.set)
		cmd->sector = job->sector.v;
}

static void prep_passthru(struct engine *e, struct io_uring_sqe *sqe,
			  struct slot *s)
{
	struct vblk_uring_cmd cmd;
	size_t cmd_bytes = e->sqe128 ? sizeof(cmd) : SQE64_CMD_BYTES;
	uint32_t cmd_op = use_vec(e, s) ? VIRTBLK_URING_CMD_IO_VEC : VIRTBLK_URING_CMD_IO;

	memset(&cmd, 0, sizeof(cmd));
	cmd.type = kind_type[s->kind];
	cmd.sector = pt_sector(s);
	cmd.ioprio = e->job->ioprio.v;	/* 0 without --ioprio */
	pt_data(e, s, &cmd.data, &cmd.data_len);
	pt_overrides(e, &cmd, &cmd_op);

	memset(sqe, 0, e->sqe128 ? 128 : 64);
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = e->tgt[s->tgt].fd;
	sqe->cmd_op = cmd_op;
	if (use_fixed(e, s)) {
		sqe->uring_cmd_flags = IORING_URING_CMD_FIXED;
		sqe->buf_index = (uint16_t)s->buf_index;
	}
	/* With 64-byte SQEs only 16 bytes fit: the kernel must refuse it. */
	memcpy((unsigned char *)sqe + SQE_CMD_OFFSET, &cmd, cmd_bytes);
}

static void prep_block_rw(struct engine *e, struct io_uring_sqe *sqe,
			  struct slot *s, int fd)
{
	bool wr = s->kind == IO_WRITE;
	void *buf = e->job->bad_ptr ? e->bad_addr : s->buf;
	unsigned int n;

	if (e->job->vec) {
		/* --bad-ptr: the iovec array itself is unmapped, as on passthrough */
		const struct iovec *iov = e->job->bad_ptr ? e->bad_addr : s->iov;

		n = split_iov(e, s, s->buf, s->len);
		if (e->job->compat_ring)
			pack_iov32(s->iov, n);
		if (wr)
			io_uring_prep_writev(sqe, fd, iov, n, s->offset);
		else
			io_uring_prep_readv(sqe, fd, iov, n, s->offset);
	} else if (e->job->fixed) {
		if (wr)
			io_uring_prep_write_fixed(sqe, fd, buf, s->len, s->offset,
						  (int)s->buf_index);
		else
			io_uring_prep_read_fixed(sqe, fd, buf, s->len, s->offset,
						 (int)s->buf_index);
	} else if (wr) {
		io_uring_prep_write(sqe, fd, buf, s->len, s->offset);
	} else {
		io_uring_prep_read(sqe, fd, buf, s->len, s->offset);
	}
}

/* BLOCK_URING_CMD_DISCARD (Linux 6.12): start in addr, length in addr3. */
static void prep_block_discard(struct engine *e, struct io_uring_sqe *sqe,
			       const struct slot *s, int fd)
{
	memset(sqe, 0, e->sqe128 ? 128 : 64);
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = fd;
	sqe->cmd_op = BLOCK_URING_CMD_DISCARD;
	sqe->addr = s->offset;
	sqe->addr3 = s->len;
}

static void prep_block(struct engine *e, struct io_uring_sqe *sqe,
		       struct slot *s)
{
	const struct target *t = &e->tgt[s->tgt];
	int punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
	int zero = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;

	switch (s->kind) {
	case IO_READ:
	case IO_WRITE:
		prep_block_rw(e, sqe, s, t->fd);
		return;
	case IO_FLUSH:
		io_uring_prep_fsync(sqe, t->fd, 0);
		return;
	case IO_DISCARD:
		if (t->blkdev)
			prep_block_discard(e, sqe, s, t->fd);
		else
			io_uring_prep_fallocate(sqe, t->fd, punch, s->offset, s->len);
		return;
	case IO_WZEROES:
		io_uring_prep_fallocate(sqe, t->fd, e->job->unmap ? punch : zero,
					s->offset, s->len);
		return;
	case IO_GET_ID:	/* refused at setup; a no-op if it ever got here */
	case IO_KINDS:
		break;
	}
	io_uring_prep_nop(sqe);
}

/* The command for the I/O in @s, without flags or user_data (scribbles too). */
void prep_sqe(struct engine *e, struct io_uring_sqe *sqe, struct slot *s)
{
	if (e->tgt[s->tgt].passthru) {
		prep_passthru(e, sqe, s);
	} else {
		prep_block(e, sqe, s);
		/* checked at setup to fit in 16 bits */
		sqe->ioprio = (uint16_t)e->job->ioprio.v;
	}
}

void prep_io(struct engine *e, struct io_uring_sqe *sqe, struct slot *s)
{
	prep_sqe(e, sqe, s);
	/* --async: issued from an io-wq worker, never inline in io_uring_enter */
	if (e->job->async_sqe)
		sqe->flags |= IOSQE_ASYNC;
	io_uring_sqe_set_data(sqe, s);
	progress_prepared(e);
}

/* Did the I/O in @s succeed with completion result @res? */
bool io_ok(const struct engine *e, const struct slot *s, int res)
{
	if (e->tgt[s->tgt].passthru)
		return res == 0;
	if (s->kind == IO_READ || s->kind == IO_WRITE)
		return res >= 0 && (uint32_t)res == s->len;
	return res == 0;
}

/* Bytes a successful I/O in @s accounts for. */
uint32_t io_bytes(const struct slot *s)
{
	switch (s->kind) {
	case IO_FLUSH:
		return 0;
	case IO_GET_ID:
		return VBLK_ID_BYTES;
	default:
		return s->len;
	}
}
