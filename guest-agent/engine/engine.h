/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * vblk-engine internals shared by its source files.  See vblk-engine.c for
 * the overview and guest-agent/PROTOCOL.md for the command line and output.
 */
#ifndef VBLK_ENGINE_H
#define VBLK_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/uio.h>

#include <liburing.h>

/*
 * The user ABI of the passthrough driver; system headers do not carry it.
 * v3 (include/uapi/linux/virtio_blk_ioctl.h): ioctl-encoded cmd_ops,
 * _IOWR(0xB9, 0x00/0x01, struct virtblk_uring_cmd) = 0xc020b900/0xc020b901.
 * v2 used the plain integers 1 and 2.
 */
#ifndef VIRTBLK_URING_CMD_IO
#define VIRTBLK_URING_CMD_IO		_IOWR(0xB9, 0x00, struct vblk_uring_cmd)
#endif
#ifndef VIRTBLK_URING_CMD_IO_VEC
#define VIRTBLK_URING_CMD_IO_VEC	_IOWR(0xB9, 0x01, struct vblk_uring_cmd)
#endif
#define VBLK_T_IN			0	/* VIRTIO_BLK_T_IN */
#define VBLK_T_OUT			1	/* VIRTIO_BLK_T_OUT */
#define VBLK_T_FLUSH			4	/* VIRTIO_BLK_T_FLUSH */
#define VBLK_T_GET_ID			8	/* VIRTIO_BLK_T_GET_ID */
#define VBLK_T_DISCARD			11	/* VIRTIO_BLK_T_DISCARD */
#define VBLK_T_WRITE_ZEROES		13	/* VIRTIO_BLK_T_WRITE_ZEROES */
#define VBLK_WZ_FLAG_UNMAP		1U	/* VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP */
#define VBLK_ID_BYTES			20	/* VIRTIO_BLK_ID_BYTES */

#ifndef IORING_SETUP_SQE128
#define IORING_SETUP_SQE128		(1U << 10)
#endif
#ifndef IORING_SETUP_CQE32
#define IORING_SETUP_CQE32		(1U << 11)
#endif
#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL		(1U << 7)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER	(1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN	(1U << 13)
#endif
#ifndef IORING_URING_CMD_FIXED
#define IORING_URING_CMD_FIXED		(1U << 0)
#endif

/* Local names: a struct cannot be #ifndef-guarded against a system header. */
struct vblk_uring_cmd {
	uint32_t type;
	uint32_t ioprio;
	uint64_t sector;
	uint64_t data;
	uint32_t data_len;
	uint32_t flag;
};
_Static_assert(sizeof(struct vblk_uring_cmd) == 32, "uapi struct is 32 bytes");
_Static_assert(VIRTBLK_URING_CMD_IO == 0xc020b900u, "v3 cmd_op encoding");

/* struct virtio_blk_discard_write_zeroes, little-endian on the wire */
struct vblk_range {
	uint64_t sector;
	uint32_t num_sectors;
	uint32_t flags;
};
_Static_assert(sizeof(struct vblk_range) == 16, "virtio range is 16 bytes");

#define SQE_CMD_OFFSET		48	/* sqe->cmd within a 64/128-byte SQE */
#define SQE64_CMD_BYTES		16	/* what fits in a 64-byte SQE */
#define SECTOR_SIZE		512
#define BUF_ALIGN		4096
#define MAX_QD			4096
#define MAX_BS			(64ULL << 20)
#define MAX_VEC			4096
#define MAX_RANGES		4096
#define MAX_RESULTS		16
#define MAX_TARGETS		2
#define MAX_RES_VALUES		32	/* distinct cqe->res values counted */
#define MIX_MAX_BLOCKS		4	/* a mix I/O covers 1..4 blocks */
#define MIX_MAX_NBLOCKS		(1ULL << 26)
#define READ_POISON		0xa5

enum exit_code {
	EXIT_JOB_RAN	= 0,
	EXIT_RUNTIME	= 1,
	EXIT_USAGE	= 2,
	EXIT_SETUP	= 3,
};

enum job_op {
	OP_READ, OP_WRITE, OP_VERIFY, OP_FLUSH, OP_GET_ID, OP_DISCARD,
	OP_WZEROES, OP_MIX, OP_RANDREAD, OP_RANDWRITE, OP_COUNT,
};

/* What one SQE does; the same kinds on both paths. */
enum io_kind {
	IO_READ, IO_WRITE, IO_FLUSH, IO_GET_ID, IO_DISCARD, IO_WZEROES,
	IO_KINDS,
};

/* A raw override of one passthrough command field (refusal tests). */
struct raw_u32 {
	bool set;
	uint32_t v;
};

/* The same for the 64-bit sector field (--sector). */
struct raw_u64 {
	bool set;
	uint64_t v;
};

struct job {
	const char *path;
	const char *path2;		/* mix only */
	enum job_op op;
	uint64_t offset;
	uint64_t length;
	uint64_t bs;
	uint64_t seed;
	uint64_t ios;			/* --ios; 0 = not given */
	uint64_t runtime_ns;		/* --runtime; 0 = not given */
	uint64_t init_seed;		/* mix: --init-seed */
	unsigned int qd;
	unsigned int vec;		/* iovecs per I/O; 0 = one buffer */
	unsigned int ranges;		/* ranges per discard/write-zeroes */
	unsigned int batch_submit;
	unsigned int batch_complete;
	struct raw_u32 type, cmd_op, flag, data_len;
	uint32_t uid, gid;		/* --uid/--gid: run as this user */
	bool have_ids;
	bool have_length;
	bool have_init_seed;
	bool bench;			/* benchmark mode (read/write/rand*) */
	bool sqe64;
	bool expect_error;
	bool rdonly;
	bool wronly;			/* O_WRONLY: reads through it are NVMe-style allowed */
	bool iopoll;
	bool fixed;
	bool bad_ptr;
	bool unmap;
	bool with_trim;
	bool zero;			/* verify expects zeroes */
	bool buffered;			/* bench: block path without O_DIRECT */
	bool have_rwmix;
	unsigned int rwmix_read;	/* bench: % of I/Os that read (--rwmix-read) */
	unsigned int progress_fd;	/* --progress-fd; 0 = no progress lines */
	unsigned int progress_ms;	/* --progress-ms; 0 = 200 */
	struct raw_u32 ioprio;		/* --ioprio: cmd.ioprio / sqe->ioprio */
	struct raw_u64 sector;		/* --sector: raw passthrough sector */
	struct raw_u64 range_sector;	/* --range-sector: raw sector of every range */
	unsigned int link;		/* --link: LINK_NONE, LINK_FLUSH, LINK_READ */
	bool scribble;			/* --scribble: overwrite SQEs after submit */
	bool async_sqe;			/* --async: IOSQE_ASYNC on every SQE */
	bool defer_taskrun;		/* --defer-taskrun: SINGLE_ISSUER|DEFER_TASKRUN */
	bool sqpoll;			/* --sqpoll: IORING_SETUP_SQPOLL ring */
	bool compat_ring;		/* --compat-ring: see compat.c */
	struct raw_u32 range_nr;	/* --range-num-sectors: raw num_sectors of every range */
	struct raw_u32 range_flags;	/* --range-flags: raw flags of every range */
	bool protect_buf;		/* --protect-buf: buffer read-only between submit and reap */
	bool fail_nth_sweep;		/* --fail-nth-sweep: see failnth.c */
};

struct target {
	const char *path;
	int fd;
	bool passthru;			/* char device: IORING_OP_URING_CMD */
	bool blkdev;			/* block device (else regular file) */
};

struct slot {
	void *buf;
	struct iovec *iov;		/* job->vec entries, or NULL */
	unsigned int buf_index;		/* registered buffer index (--fixed) */
	/* the I/O in flight in this slot */
	enum io_kind kind;
	unsigned int tgt;		/* index into engine.tgt */
	uint64_t seq;			/* I/O number within the job */
	uint64_t offset;		/* absolute byte offset on the target */
	uint32_t len;			/* bytes covered */
	uint32_t nranges;		/* discard/write-zeroes ranges */
	uint64_t wseed;			/* mix: pattern seed of this write */
	uint64_t t_submit;		/* bench: when it was submitted */
	bool after_mark;		/* bench: prepared after SIGUSR1 */
	void *canary;			/* --scribble: target of the scribbled SQE */
};

/* How often each cqe->res value came back (the first MAX_RES_VALUES values). */
struct res_counts {
	unsigned int n;
	int res[MAX_RES_VALUES];
	uint64_t count[MAX_RES_VALUES];
	uint64_t other;			/* completions with a value not in the table */
};

struct stats {
	uint64_t ios;
	uint64_t bytes;
	uint64_t errors;
	uint64_t mismatches;
	uint64_t elapsed_ns;
	bool have_error;
	uint64_t error_key;		/* ordering of first_error */
	uint64_t error_offset;
	uint64_t error_seq;
	int error_res;
	unsigned int error_tgt;
	enum io_kind error_kind;
	bool have_mismatch;
	uint64_t mismatch_key;
	uint64_t mismatch_offset;
	uint64_t mismatch_seq;
	unsigned int mismatch_tgt;
	uint64_t mismatch_expected;
	uint64_t mismatch_got;
	int results[MAX_RESULTS];
	struct res_counts res_counts;
	struct res_counts res_after_mark;	/* bench: I/Os prepared after the mark */
};

struct mix_state;
struct bench_state;
struct link_state;
struct scribble_state;

enum link_kind { LINK_NONE, LINK_FLUSH, LINK_READ };

struct engine {
	const struct job *job;
	struct target tgt[MAX_TARGETS];
	unsigned int ntgt;
	bool ring_ready;
	bool sqe128;
	struct io_uring ring;
	size_t buf_size;
	struct slot *slots;
	struct slot **free_slots;
	unsigned int nr_free;
	void *bad_addr;			/* a PROT_NONE page, kept mapped (--bad-ptr) */
	struct stats st;
	bool have_id;
	char id[VBLK_ID_BYTES + 1];
	struct mix_state *mix;
	struct bench_state *bench;
	bool closed;			/* ring and targets closed before printing */
	int close_errno;		/* first close() failure, 0 if none */
	struct link_state *link;	/* --link */
	struct scribble_state *scribble;	/* --scribble */
	unsigned int iowq_max;		/* most io-wq workers seen at once */
	struct io_uring sq_owner;	/* --compat-ring --sqpoll: the 64-bit SQPOLL ring */
	bool sq_owner_ready;
	/* --fail-nth-sweep: cqe->res with the Nth allocation failed, N = 1.. */
	int *fail_nth_res;
	unsigned int fail_nth_n;	/* sweep points run */
	int fail_nth_submit;		/* first io_uring_enter error under injection, 0 if none */
};

extern const char *const op_names[OP_COUNT];
extern const char *const kind_names[IO_KINDS];

/* args.c */
int parse_args(int argc, char **argv, struct job *job);
void usage_error(const char *fmt, const char *arg);

/* setup.c */
int engine_setup(struct engine *e, const struct job *job);
void engine_close(struct engine *e);
void engine_teardown(struct engine *e);
void setup_error(const char *what, const char *path, int err);
void runtime_error(const struct engine *e, int err);

/* prep.c */
void prep_io(struct engine *e, struct io_uring_sqe *sqe, struct slot *s);
bool io_ok(const struct engine *e, const struct slot *s, int res);
uint32_t io_bytes(const struct slot *s);

/* util (vblk-engine.c) */
uint64_t splitmix64(uint64_t x);
uint64_t pattern_word(uint64_t seed, uint64_t offset);
void fill_pattern(uint64_t *w, uint64_t offset, uint32_t len, uint64_t seed);
uint64_t now_ns(void);
uint64_t xorshift64s(uint64_t *state);
void record_error(struct stats *st, const struct slot *s, uint64_t key, int res);
void record_mismatch(struct stats *st, const struct slot *s, uint64_t key,
		     uint64_t off, uint64_t expected, uint64_t got);
void count_res(struct res_counts *rc, int res);

/* basic.c: write/read/verify/flush/get-id/discard/write-zeroes */
int basic_run(struct engine *e);
void basic_print(const struct engine *e);

/* mix.c */
int mix_setup(struct engine *e);
void mix_teardown(struct engine *e);
int mix_run(struct engine *e);
void mix_print(const struct engine *e);

/* bench.c */
int bench_setup(struct engine *e);
void bench_teardown(struct engine *e);
int bench_run(struct engine *e);
void bench_print(const struct engine *e);

/* output.c */
void print_json_string(const char *s);
void print_json_ascii(const char *s);
void print_result_head(const struct engine *e);
void print_res_counts(const char *name, const struct res_counts *rc);
int print_result_tail(void);

/* progress.c: periodic progress lines for fault schedules */
void progress_prepared(struct engine *e);

/* prep.c: the command alone, no flags/user_data/progress (scribbles) */
void prep_sqe(struct engine *e, struct io_uring_sqe *sqe, struct slot *s);

/* scribble.c: --scribble, and counting io-wq workers (--scribble/--async/--link) */
int scribble_setup(struct engine *e, unsigned int cap);
int scribble_add_canary(struct engine *e, struct slot *s);
void scribble_teardown(struct engine *e);
void scribble_note(struct engine *e, struct io_uring_sqe *sqe, const struct slot *s);
void scribble_submitted(struct engine *e);
bool scribble_check(struct engine *e, const struct slot *s);
void iowq_sample(struct engine *e);
bool iowq_watched(const struct job *job);
void scribble_print(const struct engine *e);

/* link.c: --link flush|read, linked chains of two SQEs */
int link_setup(struct engine *e);
void link_teardown(struct engine *e);
int link_run(struct engine *e);
void link_print(const struct engine *e);
/* failnth.c: allocation-failure injection through /proc/thread-self/fail-nth */
int fail_nth_open(void);
int fail_nth_arm(int fd, unsigned int n);
int fail_nth_disarm(int fd, unsigned int *left);
int load_module_main(int argc, char **argv);
/* compat.c: --compat-ring, a compat ring in a 64-bit process (x86-64) */
bool compat_ring_supported(void);
int compat_ring_init(struct engine *e, unsigned int entries, struct io_uring_params *p);
void *low_alloc(size_t len);
void low_free(void *p, size_t len);
void pack_iov32(struct iovec *iov, unsigned int n);

/* fuzz.c: vblk-engine --program (the vblk-ci fuzz executor) */
int fuzz_main(int argc, char **argv);

#endif /* VBLK_ENGINE_H */
