// SPDX-License-Identifier: GPL-2.0-only
//#define DEBUG
#include <linux/spinlock.h>
#include <linux/slab.h>
#include <linux/blkdev.h>
#include <linux/hdreg.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/interrupt.h>
#include <linux/virtio.h>
#include <linux/virtio_blk.h>
#include <linux/scatterlist.h>
#include <linux/string_helpers.h>
#include <linux/idr.h>
#include <linux/blk-mq.h>
#include <linux/blk-mq-virtio.h>
#include <linux/cdev.h>
#include <linux/io_uring/cmd.h>
#include <linux/ioprio.h>
#include <linux/numa.h>
#include <linux/vmalloc.h>
#include <uapi/linux/virtio_ring.h>

#define PART_BITS 4
#define VQ_NAME_LEN 16
#define MAX_DISCARD_SEGMENTS 256u

/* The maximum number of sg elements that fit into a virtqueue */
#define VIRTIO_BLK_MAX_SG_ELEMS 32768

#ifdef CONFIG_ARCH_NO_SG_CHAIN
#define VIRTIO_BLK_INLINE_SG_CNT	0
#else
#define VIRTIO_BLK_INLINE_SG_CNT	2
#endif

static unsigned int num_request_queues;
module_param(num_request_queues, uint, 0644);
MODULE_PARM_DESC(num_request_queues,
		 "Limit the number of request queues to use for blk device. "
		 "0 for no limit. "
		 "Values > nr_cpu_ids truncated to nr_cpu_ids.");

static unsigned int poll_queues;
module_param(poll_queues, uint, 0644);
MODULE_PARM_DESC(poll_queues, "The number of dedicated virtqueues for polling I/O");

static int major;
static DEFINE_IDA(vd_index_ida);

/*
 * Every disk also gets a generic character device, <disk>c0, for commands
 * that bypass the block layer's file operations (io_uring passthrough).
 */
#define VIRTBLK_CHR_MINORS	BIT(MINORBITS)
static dev_t virtblk_chr_devt;
static DEFINE_IDA(virtblk_chr_minor_ida);

static char *virtblk_chr_devnode(const struct device *dev, umode_t *mode)
{
	/* Raw access to the disk: root only unless udev relaxes it. */
	if (mode)
		*mode = 0600;
	return NULL;
}

static const struct class virtblk_chr_class = {
	.name		= "vblk-generic",
	.devnode	= virtblk_chr_devnode,
};

static struct workqueue_struct *virtblk_wq;

struct virtio_blk_vq {
	struct virtqueue *vq;
	spinlock_t lock;
	char name[VQ_NAME_LEN];
} ____cacheline_aligned_in_smp;

struct virtio_blk {
	/*
	 * This mutex must be held by anything that may run after
	 * virtblk_remove() sets vblk->vdev to NULL.
	 *
	 * blk-mq, virtqueue processing, and sysfs attribute code paths are
	 * shut down before vblk->vdev is set to NULL and therefore do not need
	 * to hold this mutex.
	 */
	struct mutex vdev_mutex;
	struct virtio_device *vdev;

	/* The disk structure for the kernel. */
	struct gendisk *disk;

	/* Block layer tags. */
	struct blk_mq_tag_set tag_set;

	/* Process context for config space updates */
	struct work_struct config_work;

	/* Ida index - used to track minor number allocations. */
	int index;

	/* num of vqs */
	int num_vqs;
	int io_queues[HCTX_MAX_TYPES];
	struct virtio_blk_vq *vqs;

	/* For zoned device */
	unsigned int zone_sectors;

	/* Ranges one WRITE_ZEROES request may carry, for passthrough */
	u32 max_write_zeroes_segs;

	/*
	 * Generic character device.  Its struct device holds a reference on
	 * the gendisk, so this structure outlives every open file of it.
	 */
	struct cdev cdev;
	struct device cdev_device;
};

struct virtblk_req {
	/* Out header */
	struct virtio_blk_outhdr out_hdr;

	/* In header */
	union {
		u8 status;

		/*
		 * The zone append command has an extended in header.
		 * The status field in zone_append_in_hdr must always
		 * be the last byte.
		 */
		struct {
			__virtio64 sector;
			u8 status;
		} zone_append;
	} in_hdr;

	size_t in_hdr_len;

	struct sg_table sg_table;
	struct scatterlist sg[];
};

static inline blk_status_t virtblk_result(u8 status)
{
	switch (status) {
	case VIRTIO_BLK_S_OK:
		return BLK_STS_OK;
	case VIRTIO_BLK_S_UNSUPP:
		return BLK_STS_NOTSUPP;
	case VIRTIO_BLK_S_ZONE_OPEN_RESOURCE:
		return BLK_STS_ZONE_OPEN_RESOURCE;
	case VIRTIO_BLK_S_ZONE_ACTIVE_RESOURCE:
		return BLK_STS_ZONE_ACTIVE_RESOURCE;
	case VIRTIO_BLK_S_IOERR:
	case VIRTIO_BLK_S_ZONE_UNALIGNED_WP:
	default:
		return BLK_STS_IOERR;
	}
}

static inline struct virtio_blk_vq *get_virtio_blk_vq(struct blk_mq_hw_ctx *hctx)
{
	struct virtio_blk *vblk = hctx->queue->queuedata;
	struct virtio_blk_vq *vq = &vblk->vqs[hctx->queue_num];

	return vq;
}

static int virtblk_add_req(struct virtqueue *vq, struct virtblk_req *vbr)
{
	struct scatterlist out_hdr, in_hdr, *sgs[3];
	unsigned int num_out = 0, num_in = 0;

	sg_init_one(&out_hdr, &vbr->out_hdr, sizeof(vbr->out_hdr));
	sgs[num_out++] = &out_hdr;

	if (vbr->sg_table.nents) {
		if (vbr->out_hdr.type & cpu_to_virtio32(vq->vdev, VIRTIO_BLK_T_OUT))
			sgs[num_out++] = vbr->sg_table.sgl;
		else
			sgs[num_out + num_in++] = vbr->sg_table.sgl;
	}

	sg_init_one(&in_hdr, &vbr->in_hdr.status, vbr->in_hdr_len);
	sgs[num_out + num_in++] = &in_hdr;

	return virtqueue_add_sgs(vq, sgs, num_out, num_in, vbr, GFP_ATOMIC);
}

static int virtblk_setup_discard_write_zeroes_erase(struct request *req, bool unmap)
{
	unsigned short segments = blk_rq_nr_discard_segments(req);
	unsigned short n = 0;
	struct virtio_blk_discard_write_zeroes *range;
	struct bio *bio;
	u32 flags = 0;

	if (unmap)
		flags |= VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

	range = kmalloc_array(segments, sizeof(*range), GFP_ATOMIC);
	if (!range)
		return -ENOMEM;

	/*
	 * Single max discard segment means multi-range discard isn't
	 * supported, and block layer only runs contiguity merge like
	 * normal RW request. So we can't reply on bio for retrieving
	 * each range info.
	 */
	if (queue_max_discard_segments(req->q) == 1) {
		range[0].flags = cpu_to_le32(flags);
		range[0].num_sectors = cpu_to_le32(blk_rq_sectors(req));
		range[0].sector = cpu_to_le64(blk_rq_pos(req));
		n = 1;
	} else {
		__rq_for_each_bio(bio, req) {
			u64 sector = bio->bi_iter.bi_sector;
			u32 num_sectors = bio->bi_iter.bi_size >> SECTOR_SHIFT;

			range[n].flags = cpu_to_le32(flags);
			range[n].num_sectors = cpu_to_le32(num_sectors);
			range[n].sector = cpu_to_le64(sector);
			n++;
		}
	}

	WARN_ON_ONCE(n != segments);

	bvec_set_virt(&req->special_vec, range, sizeof(*range) * segments);
	req->rq_flags |= RQF_SPECIAL_PAYLOAD;

	return 0;
}

static void virtblk_unmap_data(struct request *req, struct virtblk_req *vbr)
{
	if (blk_rq_nr_phys_segments(req))
		sg_free_table_chained(&vbr->sg_table,
				      VIRTIO_BLK_INLINE_SG_CNT);
}

static int virtblk_map_data(struct blk_mq_hw_ctx *hctx, struct request *req,
		struct virtblk_req *vbr)
{
	int err;

	if (!blk_rq_nr_phys_segments(req))
		return 0;

	vbr->sg_table.sgl = vbr->sg;
	err = sg_alloc_table_chained(&vbr->sg_table,
				     blk_rq_nr_phys_segments(req),
				     vbr->sg_table.sgl,
				     VIRTIO_BLK_INLINE_SG_CNT);
	if (unlikely(err))
		return -ENOMEM;

	return blk_rq_map_sg(hctx->queue, req, vbr->sg_table.sgl);
}

static void virtblk_cleanup_cmd(struct request *req)
{
	if (req->rq_flags & RQF_SPECIAL_PAYLOAD)
		kfree(bvec_virt(&req->special_vec));
}

static blk_status_t virtblk_setup_cmd(struct virtio_device *vdev,
				      struct request *req,
				      struct virtblk_req *vbr)
{
	size_t in_hdr_len = sizeof(vbr->in_hdr.status);
	bool unmap = false;
	u32 type;
	u64 sector = 0;

	if (!IS_ENABLED(CONFIG_BLK_DEV_ZONED) && op_is_zone_mgmt(req_op(req)))
		return BLK_STS_NOTSUPP;

	/* Set fields for all request types */
	vbr->out_hdr.ioprio = cpu_to_virtio32(vdev, req_get_ioprio(req));

	switch (req_op(req)) {
	case REQ_OP_READ:
		type = VIRTIO_BLK_T_IN;
		sector = blk_rq_pos(req);
		break;
	case REQ_OP_WRITE:
		type = VIRTIO_BLK_T_OUT;
		sector = blk_rq_pos(req);
		break;
	case REQ_OP_FLUSH:
		type = VIRTIO_BLK_T_FLUSH;
		break;
	case REQ_OP_DISCARD:
		type = VIRTIO_BLK_T_DISCARD;
		break;
	case REQ_OP_WRITE_ZEROES:
		type = VIRTIO_BLK_T_WRITE_ZEROES;
		unmap = !(req->cmd_flags & REQ_NOUNMAP);
		break;
	case REQ_OP_SECURE_ERASE:
		type = VIRTIO_BLK_T_SECURE_ERASE;
		break;
	case REQ_OP_ZONE_OPEN:
		type = VIRTIO_BLK_T_ZONE_OPEN;
		sector = blk_rq_pos(req);
		break;
	case REQ_OP_ZONE_CLOSE:
		type = VIRTIO_BLK_T_ZONE_CLOSE;
		sector = blk_rq_pos(req);
		break;
	case REQ_OP_ZONE_FINISH:
		type = VIRTIO_BLK_T_ZONE_FINISH;
		sector = blk_rq_pos(req);
		break;
	case REQ_OP_ZONE_APPEND:
		type = VIRTIO_BLK_T_ZONE_APPEND;
		sector = blk_rq_pos(req);
		in_hdr_len = sizeof(vbr->in_hdr.zone_append);
		break;
	case REQ_OP_ZONE_RESET:
		type = VIRTIO_BLK_T_ZONE_RESET;
		sector = blk_rq_pos(req);
		break;
	case REQ_OP_ZONE_RESET_ALL:
		type = VIRTIO_BLK_T_ZONE_RESET_ALL;
		break;
	case REQ_OP_DRV_IN:
	case REQ_OP_DRV_OUT:
		/*
		 * Out header has already been prepared by the caller (virtblk_get_id(),
		 * virtblk_submit_zone_report() or io_uring passthrough), nothing to do
		 * here.
		 */
		return 0;
	default:
		WARN_ON_ONCE(1);
		return BLK_STS_IOERR;
	}

	/* Set fields for non-REQ_OP_DRV_IN request types */
	vbr->in_hdr_len = in_hdr_len;
	vbr->out_hdr.type = cpu_to_virtio32(vdev, type);
	vbr->out_hdr.sector = cpu_to_virtio64(vdev, sector);

	if (type == VIRTIO_BLK_T_DISCARD || type == VIRTIO_BLK_T_WRITE_ZEROES ||
	    type == VIRTIO_BLK_T_SECURE_ERASE) {
		if (virtblk_setup_discard_write_zeroes_erase(req, unmap))
			return BLK_STS_RESOURCE;
	}

	return 0;
}

/*
 * The status byte is always the last byte of the virtblk request
 * in-header. This helper fetches its value for all in-header formats
 * that are currently defined.
 */
static inline u8 virtblk_vbr_status(struct virtblk_req *vbr)
{
	return *((u8 *)&vbr->in_hdr + vbr->in_hdr_len - 1);
}

static inline void virtblk_request_done(struct request *req)
{
	struct virtblk_req *vbr = blk_mq_rq_to_pdu(req);
	blk_status_t status = virtblk_result(virtblk_vbr_status(vbr));
	struct virtio_blk *vblk = req->mq_hctx->queue->queuedata;

	virtblk_unmap_data(req, vbr);
	virtblk_cleanup_cmd(req);

	if (req_op(req) == REQ_OP_ZONE_APPEND)
		req->__sector = virtio64_to_cpu(vblk->vdev,
						vbr->in_hdr.zone_append.sector);

	blk_mq_end_request(req, status);
}

static void virtblk_done(struct virtqueue *vq)
{
	struct virtio_blk *vblk = vq->vdev->priv;
	bool req_done = false;
	int qid = vq->index;
	struct virtblk_req *vbr;
	unsigned long flags;
	unsigned int len;

	spin_lock_irqsave(&vblk->vqs[qid].lock, flags);
	do {
		virtqueue_disable_cb(vq);
		while ((vbr = virtqueue_get_buf(vblk->vqs[qid].vq, &len)) != NULL) {
			struct request *req = blk_mq_rq_from_pdu(vbr);

			if (likely(!blk_should_fake_timeout(req->q)))
				blk_mq_complete_request(req);
			req_done = true;
		}
	} while (!virtqueue_enable_cb(vq));

	/* In case queue is stopped waiting for more buffers. */
	if (req_done)
		blk_mq_start_stopped_hw_queues(vblk->disk->queue, true);
	spin_unlock_irqrestore(&vblk->vqs[qid].lock, flags);
}

static void virtio_commit_rqs(struct blk_mq_hw_ctx *hctx)
{
	struct virtio_blk *vblk = hctx->queue->queuedata;
	struct virtio_blk_vq *vq = &vblk->vqs[hctx->queue_num];
	bool kick;

	spin_lock_irq(&vq->lock);
	kick = virtqueue_kick_prepare(vq->vq);
	spin_unlock_irq(&vq->lock);

	if (kick)
		virtqueue_notify(vq->vq);
}

static blk_status_t virtblk_fail_to_queue(struct request *req, int rc)
{
	virtblk_cleanup_cmd(req);
	switch (rc) {
	case -ENOSPC:
		return BLK_STS_DEV_RESOURCE;
	case -ENOMEM:
		return BLK_STS_RESOURCE;
	default:
		return BLK_STS_IOERR;
	}
}

static blk_status_t virtblk_prep_rq(struct blk_mq_hw_ctx *hctx,
					struct virtio_blk *vblk,
					struct request *req,
					struct virtblk_req *vbr)
{
	blk_status_t status;
	int num;

	status = virtblk_setup_cmd(vblk->vdev, req, vbr);
	if (unlikely(status))
		return status;

	num = virtblk_map_data(hctx, req, vbr);
	if (unlikely(num < 0))
		return virtblk_fail_to_queue(req, -ENOMEM);
	vbr->sg_table.nents = num;

	blk_mq_start_request(req);

	return BLK_STS_OK;
}

static blk_status_t virtio_queue_rq(struct blk_mq_hw_ctx *hctx,
			   const struct blk_mq_queue_data *bd)
{
	struct virtio_blk *vblk = hctx->queue->queuedata;
	struct request *req = bd->rq;
	struct virtblk_req *vbr = blk_mq_rq_to_pdu(req);
	unsigned long flags;
	int qid = hctx->queue_num;
	bool notify = false;
	blk_status_t status;
	int err;

	status = virtblk_prep_rq(hctx, vblk, req, vbr);
	if (unlikely(status))
		return status;

	spin_lock_irqsave(&vblk->vqs[qid].lock, flags);
	err = virtblk_add_req(vblk->vqs[qid].vq, vbr);
	if (err) {
		virtqueue_kick(vblk->vqs[qid].vq);
		/* Don't stop the queue if -ENOMEM: we may have failed to
		 * bounce the buffer due to global resource outage.
		 */
		if (err == -ENOSPC)
			blk_mq_stop_hw_queue(hctx);
		spin_unlock_irqrestore(&vblk->vqs[qid].lock, flags);
		virtblk_unmap_data(req, vbr);
		return virtblk_fail_to_queue(req, err);
	}

	if (bd->last && virtqueue_kick_prepare(vblk->vqs[qid].vq))
		notify = true;
	spin_unlock_irqrestore(&vblk->vqs[qid].lock, flags);

	if (notify)
		virtqueue_notify(vblk->vqs[qid].vq);
	return BLK_STS_OK;
}

static bool virtblk_prep_rq_batch(struct request *req)
{
	struct virtio_blk *vblk = req->mq_hctx->queue->queuedata;
	struct virtblk_req *vbr = blk_mq_rq_to_pdu(req);

	return virtblk_prep_rq(req->mq_hctx, vblk, req, vbr) == BLK_STS_OK;
}

static void virtblk_add_req_batch(struct virtio_blk_vq *vq,
		struct rq_list *rqlist)
{
	struct request *req;
	unsigned long flags;
	bool kick;

	spin_lock_irqsave(&vq->lock, flags);

	while ((req = rq_list_pop(rqlist))) {
		struct virtblk_req *vbr = blk_mq_rq_to_pdu(req);
		int err;

		err = virtblk_add_req(vq->vq, vbr);
		if (err) {
			virtblk_unmap_data(req, vbr);
			virtblk_cleanup_cmd(req);
			blk_mq_requeue_request(req, true);
		}
	}

	kick = virtqueue_kick_prepare(vq->vq);
	spin_unlock_irqrestore(&vq->lock, flags);

	if (kick)
		virtqueue_notify(vq->vq);
}

static void virtio_queue_rqs(struct rq_list *rqlist)
{
	struct rq_list submit_list = { };
	struct rq_list requeue_list = { };
	struct virtio_blk_vq *vq = NULL;
	struct request *req;

	while ((req = rq_list_pop(rqlist))) {
		struct virtio_blk_vq *this_vq = get_virtio_blk_vq(req->mq_hctx);

		if (vq && vq != this_vq)
			virtblk_add_req_batch(vq, &submit_list);
		vq = this_vq;

		if (virtblk_prep_rq_batch(req))
			rq_list_add_tail(&submit_list, req);
		else
			rq_list_add_tail(&requeue_list, req);
	}

	if (vq)
		virtblk_add_req_batch(vq, &submit_list);
	*rqlist = requeue_list;
}

#ifdef CONFIG_BLK_DEV_ZONED
static void *virtblk_alloc_report_buffer(struct virtio_blk *vblk,
					  unsigned int nr_zones,
					  size_t *buflen)
{
	struct request_queue *q = vblk->disk->queue;
	size_t bufsize;
	void *buf;

	nr_zones = min_t(unsigned int, nr_zones,
			 get_capacity(vblk->disk) >> ilog2(vblk->zone_sectors));

	bufsize = sizeof(struct virtio_blk_zone_report) +
		nr_zones * sizeof(struct virtio_blk_zone_descriptor);
	bufsize = min_t(size_t, bufsize,
			queue_max_hw_sectors(q) << SECTOR_SHIFT);
	bufsize = min_t(size_t, bufsize, queue_max_segments(q) << PAGE_SHIFT);

	while (bufsize >= sizeof(struct virtio_blk_zone_report)) {
		buf = __vmalloc(bufsize, GFP_KERNEL | __GFP_NORETRY);
		if (buf) {
			*buflen = bufsize;
			return buf;
		}
		bufsize >>= 1;
	}

	return NULL;
}

static int virtblk_submit_zone_report(struct virtio_blk *vblk,
				       char *report_buf, size_t report_len,
				       sector_t sector)
{
	struct request_queue *q = vblk->disk->queue;
	struct request *req;
	struct virtblk_req *vbr;
	int err;

	req = blk_mq_alloc_request(q, REQ_OP_DRV_IN, 0);
	if (IS_ERR(req))
		return PTR_ERR(req);

	vbr = blk_mq_rq_to_pdu(req);
	vbr->in_hdr_len = sizeof(vbr->in_hdr.status);
	vbr->out_hdr.type = cpu_to_virtio32(vblk->vdev, VIRTIO_BLK_T_ZONE_REPORT);
	vbr->out_hdr.sector = cpu_to_virtio64(vblk->vdev, sector);

	err = blk_rq_map_kern(q, req, report_buf, report_len, GFP_KERNEL);
	if (err)
		goto out;

	blk_execute_rq(req, false);
	err = blk_status_to_errno(virtblk_result(vbr->in_hdr.status));
out:
	blk_mq_free_request(req);
	return err;
}

static int virtblk_parse_zone(struct virtio_blk *vblk,
			       struct virtio_blk_zone_descriptor *entry,
			       unsigned int idx, report_zones_cb cb, void *data)
{
	struct blk_zone zone = { };

	zone.start = virtio64_to_cpu(vblk->vdev, entry->z_start);
	if (zone.start + vblk->zone_sectors <= get_capacity(vblk->disk))
		zone.len = vblk->zone_sectors;
	else
		zone.len = get_capacity(vblk->disk) - zone.start;
	zone.capacity = virtio64_to_cpu(vblk->vdev, entry->z_cap);
	zone.wp = virtio64_to_cpu(vblk->vdev, entry->z_wp);

	switch (entry->z_type) {
	case VIRTIO_BLK_ZT_SWR:
		zone.type = BLK_ZONE_TYPE_SEQWRITE_REQ;
		break;
	case VIRTIO_BLK_ZT_SWP:
		zone.type = BLK_ZONE_TYPE_SEQWRITE_PREF;
		break;
	case VIRTIO_BLK_ZT_CONV:
		zone.type = BLK_ZONE_TYPE_CONVENTIONAL;
		break;
	default:
		dev_err(&vblk->vdev->dev, "zone %llu: invalid type %#x\n",
			zone.start, entry->z_type);
		return -EIO;
	}

	switch (entry->z_state) {
	case VIRTIO_BLK_ZS_EMPTY:
		zone.cond = BLK_ZONE_COND_EMPTY;
		break;
	case VIRTIO_BLK_ZS_CLOSED:
		zone.cond = BLK_ZONE_COND_CLOSED;
		break;
	case VIRTIO_BLK_ZS_FULL:
		zone.cond = BLK_ZONE_COND_FULL;
		zone.wp = zone.start + zone.len;
		break;
	case VIRTIO_BLK_ZS_EOPEN:
		zone.cond = BLK_ZONE_COND_EXP_OPEN;
		break;
	case VIRTIO_BLK_ZS_IOPEN:
		zone.cond = BLK_ZONE_COND_IMP_OPEN;
		break;
	case VIRTIO_BLK_ZS_NOT_WP:
		zone.cond = BLK_ZONE_COND_NOT_WP;
		break;
	case VIRTIO_BLK_ZS_RDONLY:
		zone.cond = BLK_ZONE_COND_READONLY;
		zone.wp = ULONG_MAX;
		break;
	case VIRTIO_BLK_ZS_OFFLINE:
		zone.cond = BLK_ZONE_COND_OFFLINE;
		zone.wp = ULONG_MAX;
		break;
	default:
		dev_err(&vblk->vdev->dev, "zone %llu: invalid condition %#x\n",
			zone.start, entry->z_state);
		return -EIO;
	}

	/*
	 * The callback below checks the validity of the reported
	 * entry data, no need to further validate it here.
	 */
	return cb(&zone, idx, data);
}

static int virtblk_report_zones(struct gendisk *disk, sector_t sector,
				 unsigned int nr_zones, report_zones_cb cb,
				 void *data)
{
	struct virtio_blk *vblk = disk->private_data;
	struct virtio_blk_zone_report *report;
	unsigned long long nz, i;
	size_t buflen;
	unsigned int zone_idx = 0;
	int ret;

	if (WARN_ON_ONCE(!vblk->zone_sectors))
		return -EOPNOTSUPP;

	report = virtblk_alloc_report_buffer(vblk, nr_zones, &buflen);
	if (!report)
		return -ENOMEM;

	mutex_lock(&vblk->vdev_mutex);

	if (!vblk->vdev) {
		ret = -ENXIO;
		goto fail_report;
	}

	while (zone_idx < nr_zones && sector < get_capacity(vblk->disk)) {
		memset(report, 0, buflen);

		ret = virtblk_submit_zone_report(vblk, (char *)report,
						 buflen, sector);
		if (ret)
			goto fail_report;

		nz = min_t(u64, virtio64_to_cpu(vblk->vdev, report->nr_zones),
			   nr_zones);
		if (!nz)
			break;

		for (i = 0; i < nz && zone_idx < nr_zones; i++) {
			ret = virtblk_parse_zone(vblk, &report->zones[i],
						 zone_idx, cb, data);
			if (ret)
				goto fail_report;

			sector = virtio64_to_cpu(vblk->vdev,
						 report->zones[i].z_start) +
				 vblk->zone_sectors;
			zone_idx++;
		}
	}

	if (zone_idx > 0)
		ret = zone_idx;
	else
		ret = -EINVAL;
fail_report:
	mutex_unlock(&vblk->vdev_mutex);
	kvfree(report);
	return ret;
}

static int virtblk_read_zoned_limits(struct virtio_blk *vblk,
		struct queue_limits *lim)
{
	struct virtio_device *vdev = vblk->vdev;
	u32 v, wg;

	dev_dbg(&vdev->dev, "probing host-managed zoned device\n");

	lim->features |= BLK_FEAT_ZONED;

	virtio_cread(vdev, struct virtio_blk_config,
		     zoned.max_open_zones, &v);
	lim->max_open_zones = v;
	dev_dbg(&vdev->dev, "max open zones = %u\n", v);

	virtio_cread(vdev, struct virtio_blk_config,
		     zoned.max_active_zones, &v);
	lim->max_active_zones = v;
	dev_dbg(&vdev->dev, "max active zones = %u\n", v);

	virtio_cread(vdev, struct virtio_blk_config,
		     zoned.write_granularity, &wg);
	if (!wg) {
		dev_warn(&vdev->dev, "zero write granularity reported\n");
		return -ENODEV;
	}
	lim->zone_write_granularity = wg;
	lim->physical_block_size = wg;
	lim->io_min = wg;

	dev_dbg(&vdev->dev, "write granularity = %u\n", wg);

	/*
	 * virtio ZBD specification doesn't require zones to be a power of
	 * two sectors in size, but the code in this driver expects that.
	 */
	virtio_cread(vdev, struct virtio_blk_config, zoned.zone_sectors,
		     &vblk->zone_sectors);
	if (vblk->zone_sectors == 0 || !is_power_of_2(vblk->zone_sectors)) {
		dev_err(&vdev->dev,
			"zoned device with non power of two zone size %u\n",
			vblk->zone_sectors);
		return -ENODEV;
	}
	lim->chunk_sectors = vblk->zone_sectors;
	dev_dbg(&vdev->dev, "zone sectors = %u\n", vblk->zone_sectors);

	if (virtio_has_feature(vdev, VIRTIO_BLK_F_DISCARD)) {
		dev_warn(&vblk->vdev->dev,
			 "ignoring negotiated F_DISCARD for zoned device\n");
		lim->max_hw_discard_sectors = 0;
	}

	virtio_cread(vdev, struct virtio_blk_config,
		     zoned.max_append_sectors, &v);
	if (!v) {
		dev_warn(&vdev->dev, "zero max_append_sectors reported\n");
		return -ENODEV;
	}
	if ((v << SECTOR_SHIFT) < wg) {
		dev_err(&vdev->dev,
			"write granularity %u exceeds max_append_sectors %u limit\n",
			wg, v);
		return -ENODEV;
	}
	lim->max_zone_append_sectors = v;
	dev_dbg(&vdev->dev, "max append sectors = %u\n", v);

	return 0;
}
#else
/*
 * Zoned block device support is not configured in this kernel, host-managed
 * zoned devices can't be supported.
 */
#define virtblk_report_zones       NULL
static inline int virtblk_read_zoned_limits(struct virtio_blk *vblk,
		struct queue_limits *lim)
{
	dev_err(&vblk->vdev->dev,
		"virtio_blk: zoned devices are not supported");
	return -EOPNOTSUPP;
}
#endif /* CONFIG_BLK_DEV_ZONED */

/* return id (s/n) string for *disk to *id_str
 */
static int virtblk_get_id(struct gendisk *disk, char *id_str)
{
	struct virtio_blk *vblk = disk->private_data;
	struct request_queue *q = vblk->disk->queue;
	struct request *req;
	struct virtblk_req *vbr;
	int err;

	req = blk_mq_alloc_request(q, REQ_OP_DRV_IN, 0);
	if (IS_ERR(req))
		return PTR_ERR(req);

	vbr = blk_mq_rq_to_pdu(req);
	vbr->in_hdr_len = sizeof(vbr->in_hdr.status);
	vbr->out_hdr.type = cpu_to_virtio32(vblk->vdev, VIRTIO_BLK_T_GET_ID);
	vbr->out_hdr.sector = 0;

	err = blk_rq_map_kern(q, req, id_str, VIRTIO_BLK_ID_BYTES, GFP_KERNEL);
	if (err)
		goto out;

	blk_execute_rq(req, false);
	err = blk_status_to_errno(virtblk_result(vbr->in_hdr.status));
out:
	blk_mq_free_request(req);
	return err;
}

/* We provide getgeo only to please some old bootloader/partitioning tools */
static int virtblk_getgeo(struct block_device *bd, struct hd_geometry *geo)
{
	struct virtio_blk *vblk = bd->bd_disk->private_data;
	int ret = 0;

	mutex_lock(&vblk->vdev_mutex);

	if (!vblk->vdev) {
		ret = -ENXIO;
		goto out;
	}

	/* see if the host passed in geometry config */
	if (virtio_has_feature(vblk->vdev, VIRTIO_BLK_F_GEOMETRY)) {
		virtio_cread(vblk->vdev, struct virtio_blk_config,
			     geometry.cylinders, &geo->cylinders);
		virtio_cread(vblk->vdev, struct virtio_blk_config,
			     geometry.heads, &geo->heads);
		virtio_cread(vblk->vdev, struct virtio_blk_config,
			     geometry.sectors, &geo->sectors);
	} else {
		/* some standard values, similar to sd */
		geo->heads = 1 << 6;
		geo->sectors = 1 << 5;
		geo->cylinders = get_capacity(bd->bd_disk) >> 11;
	}
out:
	mutex_unlock(&vblk->vdev_mutex);
	return ret;
}

static void virtblk_free_disk(struct gendisk *disk)
{
	struct virtio_blk *vblk = disk->private_data;

	ida_free(&vd_index_ida, vblk->index);
	mutex_destroy(&vblk->vdev_mutex);
	kfree(vblk);
}

static const struct block_device_operations virtblk_fops = {
	.owner  	= THIS_MODULE,
	.getgeo		= virtblk_getgeo,
	.free_disk	= virtblk_free_disk,
	.report_zones	= virtblk_report_zones,
};

/* in_hdr.status until the device writes it: the request never reached it */
#define VIRTBLK_S_UNSET		0xff

/* How long a polled passthrough command waits before the kernel polls for it */
#define VIRTBLK_POLL_TIMEOUT	HZ

/* Overlays io_uring_cmd's pdu: what completion needs once the request is freed */
struct virtblk_uring_cmd_pdu {
	struct request *req;	/* in flight, for iopoll; NULL once completed */
	struct bio *bio;	/* user mapping to undo, or NULL */
	void *ranges;		/* kernel copy of a range list, or NULL */
	int status;
};

static struct virtblk_uring_cmd_pdu *
virtblk_uring_cmd_pdu(struct io_uring_cmd *ioucmd)
{
	return io_uring_cmd_to_pdu(ioucmd, struct virtblk_uring_cmd_pdu);
}

/* One passthrough command, read once from the shared SQE. */
struct virtblk_pt_cmd {
	u32 type;
	u32 ioprio;
	u64 sector;
	u64 data;
	u32 data_len;
	bool vec;
	bool fixed;
	bool compat;
};

/* How a passthrough type moves data; see virtblk_pt_type(). */
enum virtblk_pt_data {
	VIRTBLK_PT_BLOCKS,	/* whole logical blocks at cmd->sector */
	VIRTBLK_PT_NONE,	/* no data: data_len and sector must be 0 */
	VIRTBLK_PT_ID,		/* exactly VIRTIO_BLK_ID_BYTES into the buffer */
	VIRTBLK_PT_RANGES,	/* struct virtio_blk_discard_write_zeroes array */
};

/*
 * A compat ring's pointers are 32 bits: ignore the upper bits, as a 32-bit
 * kernel would.
 */
static void __user *virtblk_to_user_ptr(const struct virtblk_pt_cmd *c)
{
	u64 ptrval = c->data;

	if (c->compat)
		ptrval = lower_32_bits(ptrval);
	return (void __user *)(uintptr_t)ptrval;
}

/*
 * The commands that may pass through, and what each needs.  Reads need the
 * file open for reading; anything that changes the disk needs it open for
 * writing, as for NVMe's generic char device.  SECURE_ERASE and the zoned
 * commands are left out: the first is irreversible beyond the data a write
 * could change, the second would bypass the zone state the block layer
 * keeps for the disk.
 *
 * Returns 1 if the command changes the disk, 0 if it does not, or -errno.
 */
static int virtblk_pt_type(const struct virtblk_pt_cmd *c, fmode_t f_mode,
			   blk_opf_t *op, unsigned int *feature,
			   enum virtblk_pt_data *data)
{
	bool write = true;

	*feature = 0;
	switch (c->type) {
	case VIRTIO_BLK_T_IN:
		write = false;
		*op = REQ_OP_DRV_IN;
		*data = VIRTBLK_PT_BLOCKS;
		break;
	case VIRTIO_BLK_T_OUT:
		*op = REQ_OP_DRV_OUT;
		*data = VIRTBLK_PT_BLOCKS;
		break;
	case VIRTIO_BLK_T_FLUSH:
		*op = REQ_OP_DRV_OUT;
		*data = VIRTBLK_PT_NONE;
		*feature = VIRTIO_BLK_F_FLUSH;
		break;
	case VIRTIO_BLK_T_GET_ID:
		write = false;
		*op = REQ_OP_DRV_IN;
		*data = VIRTBLK_PT_ID;
		break;
	case VIRTIO_BLK_T_DISCARD:
		*op = REQ_OP_DRV_OUT;
		*data = VIRTBLK_PT_RANGES;
		*feature = VIRTIO_BLK_F_DISCARD;
		break;
	case VIRTIO_BLK_T_WRITE_ZEROES:
		*op = REQ_OP_DRV_OUT;
		*data = VIRTBLK_PT_RANGES;
		*feature = VIRTIO_BLK_F_WRITE_ZEROES;
		break;
	default:
		return -EINVAL;
	}

	if (!(f_mode & (write ? FMODE_WRITE : FMODE_READ)))
		return -EBADF;
	return write ? 1 : 0;
}

/* Checks that need no request: the shape of the command against its type. */
static int virtblk_pt_check_shape(struct virtio_blk *vblk,
				  const struct virtblk_pt_cmd *c,
				  enum virtblk_pt_data data)
{
	struct request_queue *q = vblk->disk->queue;
	unsigned int lbs_sectors = queue_logical_block_size(q) >> SECTOR_SHIFT;

	switch (data) {
	case VIRTBLK_PT_BLOCKS:
		if (!c->data_len || c->sector & (lbs_sectors - 1))
			return -EINVAL;
		if (c->vec && c->data_len > queue_max_segments(q))
			return -EINVAL;
		if (!c->vec && c->data_len > queue_max_hw_sectors(q) << SECTOR_SHIFT)
			return -EINVAL;
		/*
		 * The capacity is checked once the request is allocated: a
		 * removed disk has capacity 0, and its commands must get
		 * -ENODEV from the dying queue, not -ERANGE.
		 */
		return 0;
	case VIRTBLK_PT_NONE:
		return c->data_len || c->sector ? -EINVAL : 0;
	case VIRTBLK_PT_ID:
		if (c->vec || c->sector || c->data_len != VIRTIO_BLK_ID_BYTES)
			return -EINVAL;
		return 0;
	case VIRTBLK_PT_RANGES:
		/* The kernel checks each range, so it copies the list in. */
		if (c->vec || c->fixed || !c->data_len || c->data_len %
		    sizeof(struct virtio_blk_discard_write_zeroes))
			return -EINVAL;
		return 0;
	}
	return -EINVAL;
}

/* Copy in and check a DISCARD or WRITE_ZEROES range list. */
static void *virtblk_pt_get_ranges(struct virtio_blk *vblk,
				   const struct virtblk_pt_cmd *c)
{
	struct request_queue *q = vblk->disk->queue;
	bool wzeroes = c->type == VIRTIO_BLK_T_WRITE_ZEROES;
	unsigned int n = c->data_len / sizeof(struct virtio_blk_discard_write_zeroes);
	unsigned int lbs_mask = (queue_logical_block_size(q) >> SECTOR_SHIFT) - 1;
	u32 max_sectors = wzeroes ? q->limits.max_write_zeroes_sectors :
				    q->limits.max_hw_discard_sectors;
	u32 max_segs = wzeroes ? vblk->max_write_zeroes_segs :
				 queue_max_discard_segments(q);
	u32 flags_ok = wzeroes ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0;
	struct virtio_blk_discard_write_zeroes *ranges;
	unsigned int i;

	if (n > max_segs)
		return ERR_PTR(-EINVAL);

	ranges = memdup_user(virtblk_to_user_ptr(c), c->data_len);
	if (IS_ERR(ranges))
		return ranges;

	for (i = 0; i < n; i++) {
		u64 sector = le64_to_cpu(ranges[i].sector);
		u32 nr = le32_to_cpu(ranges[i].num_sectors);

		if (le32_to_cpu(ranges[i].flags) & ~flags_ok ||
		    !nr || nr > max_sectors || (sector | nr) & lbs_mask)
			goto out_inval;
		if (sector + nr > get_capacity(vblk->disk) || sector + nr < sector) {
			kfree(ranges);
			return ERR_PTR(-ERANGE);
		}
	}
	return ranges;

out_inval:
	kfree(ranges);
	return ERR_PTR(-EINVAL);
}

static void virtblk_uring_task_cb(struct io_uring_cmd *ioucmd,
				  unsigned int issue_flags)
{
	struct virtblk_uring_cmd_pdu *pdu = virtblk_uring_cmd_pdu(ioucmd);
	int ret;

	/*
	 * A bounced read is copied to the user's buffer only here: if that
	 * fails, the data never arrived and success must not be reported.
	 */
	if (pdu->bio) {
		ret = blk_rq_unmap_user(pdu->bio);
		if (ret && !pdu->status)
			pdu->status = ret;
	}
	kfree(pdu->ranges);
	io_uring_cmd_done(ioucmd, pdu->status, 0, issue_flags);
}

static enum rq_end_io_ret virtblk_uring_cmd_end_io(struct request *req,
						   blk_status_t err)
{
	struct io_uring_cmd *ioucmd = req->end_io_data;
	struct virtblk_uring_cmd_pdu *pdu = virtblk_uring_cmd_pdu(ioucmd);
	u8 status = virtblk_vbr_status(blk_mq_rq_to_pdu(req));

	/*
	 * The request is freed when this returns, so the status is copied
	 * out now.  The device's own status wins: batched polled completions
	 * pass err == 0 even when the device failed the request.
	 */
	if (status == VIRTBLK_S_UNSET)
		pdu->status = err ? blk_status_to_errno(err) : -EIO;
	else if (status != VIRTIO_BLK_S_OK)
		pdu->status = status;
	else
		pdu->status = blk_status_to_errno(err);

	/* iopoll must not poll through a request that may be reused. */
	WRITE_ONCE(pdu->req, NULL);

	/*
	 * Even a polled completion goes through task work: another ring
	 * polling the same queue may have reaped it, and only task work
	 * posts the CQE to the ring that owns the command.
	 */
	io_uring_cmd_do_in_task_lazy(ioucmd, virtblk_uring_task_cb);
	return RQ_END_IO_FREE;
}

static int virtblk_map_user_request(struct request *req,
				    const struct virtblk_pt_cmd *c,
				    struct io_uring_cmd *ioucmd)
{
	struct iov_iter iter;
	int ret;

	if (c->fixed) {
		ret = io_uring_cmd_import_fixed(c->data, c->data_len,
						rq_data_dir(req), &iter, ioucmd);
		if (ret < 0)
			return ret;
		return blk_rq_map_user_iov(req->q, req, NULL, &iter,
					   GFP_KERNEL);
	}

	return blk_rq_map_user_io(req, NULL, virtblk_to_user_ptr(c),
				  c->data_len, GFP_KERNEL, c->vec, 0, false,
				  rq_data_dir(req));
}

/* Attach the command's data to @req; on failure nothing stays mapped. */
static int virtblk_pt_map(struct virtio_blk *vblk, struct request *req,
			  const struct virtblk_pt_cmd *c,
			  enum virtblk_pt_data data,
			  struct io_uring_cmd *ioucmd)
{
	struct virtblk_uring_cmd_pdu *pdu = virtblk_uring_cmd_pdu(ioucmd);
	unsigned int lbs = queue_logical_block_size(req->q);
	void *ranges;
	int ret;

	switch (data) {
	case VIRTBLK_PT_NONE:
		return 0;
	case VIRTBLK_PT_RANGES:
		ranges = virtblk_pt_get_ranges(vblk, c);
		if (IS_ERR(ranges))
			return PTR_ERR(ranges);
		ret = blk_rq_map_kern(req->q, req, ranges, c->data_len,
				      GFP_KERNEL);
		if (ret) {
			kfree(ranges);
			return ret;
		}
		pdu->ranges = ranges;
		return 0;
	case VIRTBLK_PT_ID:
	case VIRTBLK_PT_BLOCKS:
		break;
	}

	ret = virtblk_map_user_request(req, c, ioucmd);
	if (ret)
		return ret;
	pdu->bio = req->bio;
	if (data == VIRTBLK_PT_ID)
		return 0;

	/* The device takes whole logical blocks, inside the disk. */
	if (blk_rq_bytes(req) & (lbs - 1))
		ret = -EINVAL;
	else if (c->sector + (blk_rq_bytes(req) >> SECTOR_SHIFT) >
		 get_capacity(vblk->disk))
		ret = -ERANGE;
	if (ret) {
		blk_rq_unmap_user(pdu->bio);
		pdu->bio = NULL;
	}
	return ret;
}

static int virtblk_uring_cmd_io(struct virtio_blk *vblk,
				struct io_uring_cmd *ioucmd,
				unsigned int issue_flags, bool vec)
{
	const struct virtblk_uring_cmd *cmd = io_uring_sqe_cmd(ioucmd->sqe);
	struct virtblk_uring_cmd_pdu *pdu = virtblk_uring_cmd_pdu(ioucmd);
	struct request_queue *q = vblk->disk->queue;
	blk_mq_req_flags_t blk_flags = 0;
	enum virtblk_pt_data data;
	struct virtblk_pt_cmd c;
	unsigned int feature;
	struct virtblk_req *vbr;
	struct request *req;
	blk_opf_t op;
	int ret;

	/* The SQE is shared with userspace: read every field once. */
	c.type = READ_ONCE(cmd->type);
	c.ioprio = READ_ONCE(cmd->ioprio);
	c.sector = READ_ONCE(cmd->sector);
	c.data = READ_ONCE(cmd->data);
	c.data_len = READ_ONCE(cmd->data_len);
	c.vec = vec;
	c.fixed = ioucmd->flags & IORING_URING_CMD_FIXED;
	c.compat = issue_flags & IO_URING_F_COMPAT;

	/* Reserved: refusing it now lets a later kernel give it a meaning. */
	if (READ_ONCE(cmd->flag))
		return -EINVAL;

	ret = virtblk_pt_type(&c, ioucmd->file->f_mode, &op, &feature, &data);
	if (ret < 0)
		return ret;
	if (ret && get_disk_ro(vblk->disk))
		return -EROFS;

	/* Registered buffers are one contiguous range: no iovec array. */
	if (c.vec && c.fixed)
		return -EINVAL;
	ret = virtblk_pt_check_shape(vblk, &c, data);
	if (ret)
		return ret;

	ret = ioprio_check_cap(c.ioprio);
	if (ret)
		return ret;

	op |= REQ_ALLOC_CACHE;
	if (issue_flags & IO_URING_F_NONBLOCK) {
		op |= REQ_NOWAIT;
		blk_flags = BLK_MQ_REQ_NOWAIT;
	}
	/* Lands on a poll queue if there is one, else completes by IRQ. */
	if (issue_flags & IO_URING_F_IOPOLL)
		op |= REQ_POLLED;

	req = blk_mq_alloc_request(q, op, blk_flags);
	if (IS_ERR(req))
		return PTR_ERR(req);

	/*
	 * vblk->vdev stays valid from here: remove waits in del_gendisk()
	 * until this request is freed.
	 */
	if (feature && !virtio_has_feature(vblk->vdev, feature)) {
		ret = -EOPNOTSUPP;
		goto out_free_req;
	}

	pdu->bio = NULL;
	pdu->ranges = NULL;
	ret = virtblk_pt_map(vblk, req, &c, data, ioucmd);
	if (ret)
		goto out_free_req;

	vbr = blk_mq_rq_to_pdu(req);
	vbr->in_hdr_len = sizeof(vbr->in_hdr.status);
	vbr->in_hdr.status = VIRTBLK_S_UNSET;
	vbr->out_hdr.type = cpu_to_virtio32(vblk->vdev, c.type);
	vbr->out_hdr.ioprio = cpu_to_virtio32(vblk->vdev, c.ioprio);
	vbr->out_hdr.sector = cpu_to_virtio64(vblk->vdev, c.sector);

	WRITE_ONCE(pdu->req, req);
	/* See virtblk_timeout(): the fallback poller for polled commands. */
	if (op & REQ_POLLED)
		req->timeout = VIRTBLK_POLL_TIMEOUT;
	req->end_io_data = ioucmd;
	req->end_io = virtblk_uring_cmd_end_io;
	blk_execute_rq_nowait(req, false);
	return -EIOCBQUEUED;

out_free_req:
	blk_mq_free_request(req);
	return ret;
}

static int virtblk_chr_uring_cmd(struct io_uring_cmd *ioucmd,
				 unsigned int issue_flags)
{
	struct virtio_blk *vblk = container_of(file_inode(ioucmd->file)->i_cdev,
					       struct virtio_blk, cdev);

	BUILD_BUG_ON(sizeof(struct virtblk_uring_cmd) != 32);

	/* struct virtblk_uring_cmd does not fit in a 64-byte SQE. */
	if (!(issue_flags & IO_URING_F_SQE128))
		return -EOPNOTSUPP;

	switch (ioucmd->cmd_op) {
	case VIRTBLK_URING_CMD_IO:
		return virtblk_uring_cmd_io(vblk, ioucmd, issue_flags, false);
	case VIRTBLK_URING_CMD_IO_VEC:
		return virtblk_uring_cmd_io(vblk, ioucmd, issue_flags, true);
	default:
		return -ENOTTY;
	}
}

static int virtblk_chr_uring_cmd_iopoll(struct io_uring_cmd *ioucmd,
					struct io_comp_batch *iob,
					unsigned int poll_flags)
{
	struct virtblk_uring_cmd_pdu *pdu = virtblk_uring_cmd_pdu(ioucmd);
	struct request *req = READ_ONCE(pdu->req);

	/*
	 * Requests without a poll queue complete by interrupt; there is
	 * nothing to poll for them.  blk_rq_poll() holds the queue usage
	 * counter while it polls.
	 */
	if (req && blk_rq_is_poll(req))
		return blk_rq_poll(req, iob, poll_flags);
	return 0;
}

static const struct file_operations virtblk_chr_fops = {
	.owner			= THIS_MODULE,
	.uring_cmd		= virtblk_chr_uring_cmd,
	.uring_cmd_iopoll	= virtblk_chr_uring_cmd_iopoll,
};

static void virtblk_cdev_release(struct device *dev)
{
	struct virtio_blk *vblk = container_of(dev, struct virtio_blk,
					       cdev_device);

	ida_free(&virtblk_chr_minor_ida, MINOR(dev->devt));
	/* May free vblk, and with it @dev: nothing may follow. */
	put_disk(vblk->disk);
}

static int virtblk_cdev_add(struct virtio_blk *vblk)
{
	struct device *dev = &vblk->cdev_device;
	int minor, err;

	minor = ida_alloc_max(&virtblk_chr_minor_ida, VIRTBLK_CHR_MINORS - 1,
			      GFP_KERNEL);
	if (minor < 0)
		return minor;

	/*
	 * Open files pin the cdev, the cdev pins its device, and the device
	 * pins the disk, which owns vblk: hot-unplug cannot free anything an
	 * open file still points at.
	 */
	get_device(disk_to_dev(vblk->disk));
	device_initialize(dev);
	dev->devt = MKDEV(MAJOR(virtblk_chr_devt), minor);
	dev->class = &virtblk_chr_class;
	dev->parent = &vblk->vdev->dev;
	dev->release = virtblk_cdev_release;
	err = dev_set_name(dev, "%sc0", vblk->disk->disk_name);
	if (err)
		goto out_put;

	cdev_init(&vblk->cdev, &virtblk_chr_fops);
	vblk->cdev.owner = THIS_MODULE;
	err = cdev_device_add(&vblk->cdev, dev);
	if (err)
		goto out_put;
	return 0;

out_put:
	/* The release callback frees the minor and the disk reference. */
	put_device(dev);
	return err;
}

static void virtblk_cdev_del(struct virtio_blk *vblk)
{
	cdev_device_del(&vblk->cdev, &vblk->cdev_device);
	put_device(&vblk->cdev_device);
}

static int index_to_minor(int index)
{
	return index << PART_BITS;
}

static int minor_to_index(int minor)
{
	return minor >> PART_BITS;
}

static ssize_t serial_show(struct device *dev,
			   struct device_attribute *attr, char *buf)
{
	struct gendisk *disk = dev_to_disk(dev);
	int err;

	/* sysfs gives us a PAGE_SIZE buffer */
	BUILD_BUG_ON(PAGE_SIZE < VIRTIO_BLK_ID_BYTES);

	buf[VIRTIO_BLK_ID_BYTES] = '\0';
	err = virtblk_get_id(disk, buf);
	if (!err)
		return strlen(buf);

	if (err == -EIO) /* Unsupported? Make it empty. */
		return 0;

	return err;
}

static DEVICE_ATTR_RO(serial);

/* The queue's logical block size must be set before calling this */
static void virtblk_update_capacity(struct virtio_blk *vblk, bool resize)
{
	struct virtio_device *vdev = vblk->vdev;
	struct request_queue *q = vblk->disk->queue;
	char cap_str_2[10], cap_str_10[10];
	unsigned long long nblocks;
	u64 capacity;

	/* Host must always specify the capacity. */
	virtio_cread(vdev, struct virtio_blk_config, capacity, &capacity);

	nblocks = DIV_ROUND_UP_ULL(capacity, queue_logical_block_size(q) >> 9);

	string_get_size(nblocks, queue_logical_block_size(q),
			STRING_UNITS_2, cap_str_2, sizeof(cap_str_2));
	string_get_size(nblocks, queue_logical_block_size(q),
			STRING_UNITS_10, cap_str_10, sizeof(cap_str_10));

	dev_notice(&vdev->dev,
		   "[%s] %s%llu %d-byte logical blocks (%s/%s)\n",
		   vblk->disk->disk_name,
		   resize ? "new size: " : "",
		   nblocks,
		   queue_logical_block_size(q),
		   cap_str_10,
		   cap_str_2);

	set_capacity_and_notify(vblk->disk, capacity);
}

static void virtblk_config_changed_work(struct work_struct *work)
{
	struct virtio_blk *vblk =
		container_of(work, struct virtio_blk, config_work);

	virtblk_update_capacity(vblk, true);
}

static void virtblk_config_changed(struct virtio_device *vdev)
{
	struct virtio_blk *vblk = vdev->priv;

	queue_work(virtblk_wq, &vblk->config_work);
}

static int init_vq(struct virtio_blk *vblk)
{
	int err;
	unsigned short i;
	struct virtqueue_info *vqs_info;
	struct virtqueue **vqs;
	unsigned short num_vqs;
	unsigned short num_poll_vqs;
	struct virtio_device *vdev = vblk->vdev;
	struct irq_affinity desc = { 0, };

	err = virtio_cread_feature(vdev, VIRTIO_BLK_F_MQ,
				   struct virtio_blk_config, num_queues,
				   &num_vqs);
	if (err)
		num_vqs = 1;

	if (!err && !num_vqs) {
		dev_err(&vdev->dev, "MQ advertised but zero queues reported\n");
		return -EINVAL;
	}

	num_vqs = min_t(unsigned int,
			min_not_zero(num_request_queues, nr_cpu_ids),
			num_vqs);

	num_poll_vqs = min_t(unsigned int, poll_queues, num_vqs - 1);

	vblk->io_queues[HCTX_TYPE_DEFAULT] = num_vqs - num_poll_vqs;
	vblk->io_queues[HCTX_TYPE_READ] = 0;
	vblk->io_queues[HCTX_TYPE_POLL] = num_poll_vqs;

	dev_info(&vdev->dev, "%d/%d/%d default/read/poll queues\n",
				vblk->io_queues[HCTX_TYPE_DEFAULT],
				vblk->io_queues[HCTX_TYPE_READ],
				vblk->io_queues[HCTX_TYPE_POLL]);

	vblk->vqs = kmalloc_array(num_vqs, sizeof(*vblk->vqs), GFP_KERNEL);
	if (!vblk->vqs)
		return -ENOMEM;

	vqs_info = kcalloc(num_vqs, sizeof(*vqs_info), GFP_KERNEL);
	vqs = kmalloc_array(num_vqs, sizeof(*vqs), GFP_KERNEL);
	if (!vqs_info || !vqs) {
		err = -ENOMEM;
		goto out;
	}

	for (i = 0; i < num_vqs - num_poll_vqs; i++) {
		vqs_info[i].callback = virtblk_done;
		snprintf(vblk->vqs[i].name, VQ_NAME_LEN, "req.%u", i);
		vqs_info[i].name = vblk->vqs[i].name;
	}

	for (; i < num_vqs; i++) {
		snprintf(vblk->vqs[i].name, VQ_NAME_LEN, "req_poll.%u", i);
		vqs_info[i].name = vblk->vqs[i].name;
	}

	/* Discover virtqueues and write information to configuration.  */
	err = virtio_find_vqs(vdev, num_vqs, vqs, vqs_info, &desc);
	if (err)
		goto out;

	for (i = 0; i < num_vqs; i++) {
		spin_lock_init(&vblk->vqs[i].lock);
		vblk->vqs[i].vq = vqs[i];
	}
	vblk->num_vqs = num_vqs;

out:
	kfree(vqs);
	kfree(vqs_info);
	if (err)
		kfree(vblk->vqs);
	return err;
}

/*
 * Legacy naming scheme used for virtio devices.  We are stuck with it for
 * virtio blk but don't ever use it for any new driver.
 */
static int virtblk_name_format(char *prefix, int index, char *buf, int buflen)
{
	const int base = 'z' - 'a' + 1;
	char *begin = buf + strlen(prefix);
	char *end = buf + buflen;
	char *p;
	int unit;

	p = end - 1;
	*p = '\0';
	unit = base;
	do {
		if (p == begin)
			return -EINVAL;
		*--p = 'a' + (index % unit);
		index = (index / unit) - 1;
	} while (index >= 0);

	memmove(begin, p, end - p);
	memcpy(buf, prefix, strlen(prefix));

	return 0;
}

static int virtblk_get_cache_mode(struct virtio_device *vdev)
{
	u8 writeback;
	int err;

	err = virtio_cread_feature(vdev, VIRTIO_BLK_F_CONFIG_WCE,
				   struct virtio_blk_config, wce,
				   &writeback);

	/*
	 * If WCE is not configurable and flush is not available,
	 * assume no writeback cache is in use.
	 */
	if (err)
		writeback = virtio_has_feature(vdev, VIRTIO_BLK_F_FLUSH);

	return writeback;
}

static const char *const virtblk_cache_types[] = {
	"write through", "write back"
};

static ssize_t
cache_type_store(struct device *dev, struct device_attribute *attr,
		 const char *buf, size_t count)
{
	struct gendisk *disk = dev_to_disk(dev);
	struct virtio_blk *vblk = disk->private_data;
	struct virtio_device *vdev = vblk->vdev;
	struct queue_limits lim;
	int i;

	BUG_ON(!virtio_has_feature(vblk->vdev, VIRTIO_BLK_F_CONFIG_WCE));
	i = sysfs_match_string(virtblk_cache_types, buf);
	if (i < 0)
		return i;

	virtio_cwrite8(vdev, offsetof(struct virtio_blk_config, wce), i);

	lim = queue_limits_start_update(disk->queue);
	if (virtblk_get_cache_mode(vdev))
		lim.features |= BLK_FEAT_WRITE_CACHE;
	else
		lim.features &= ~BLK_FEAT_WRITE_CACHE;
	i = queue_limits_commit_update_frozen(disk->queue, &lim);
	if (i)
		return i;
	return count;
}

static ssize_t
cache_type_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct gendisk *disk = dev_to_disk(dev);
	struct virtio_blk *vblk = disk->private_data;
	u8 writeback = virtblk_get_cache_mode(vblk->vdev);

	BUG_ON(writeback >= ARRAY_SIZE(virtblk_cache_types));
	return sysfs_emit(buf, "%s\n", virtblk_cache_types[writeback]);
}

static DEVICE_ATTR_RW(cache_type);

static struct attribute *virtblk_attrs[] = {
	&dev_attr_serial.attr,
	&dev_attr_cache_type.attr,
	NULL,
};

static umode_t virtblk_attrs_are_visible(struct kobject *kobj,
		struct attribute *a, int n)
{
	struct device *dev = kobj_to_dev(kobj);
	struct gendisk *disk = dev_to_disk(dev);
	struct virtio_blk *vblk = disk->private_data;
	struct virtio_device *vdev = vblk->vdev;

	if (a == &dev_attr_cache_type.attr &&
	    !virtio_has_feature(vdev, VIRTIO_BLK_F_CONFIG_WCE))
		return S_IRUGO;

	return a->mode;
}

static const struct attribute_group virtblk_attr_group = {
	.attrs = virtblk_attrs,
	.is_visible = virtblk_attrs_are_visible,
};

static const struct attribute_group *virtblk_attr_groups[] = {
	&virtblk_attr_group,
	NULL,
};

static void virtblk_map_queues(struct blk_mq_tag_set *set)
{
	struct virtio_blk *vblk = set->driver_data;
	int i, qoff;

	for (i = 0, qoff = 0; i < set->nr_maps; i++) {
		struct blk_mq_queue_map *map = &set->map[i];

		map->nr_queues = vblk->io_queues[i];
		map->queue_offset = qoff;
		qoff += map->nr_queues;

		if (map->nr_queues == 0)
			continue;

		/*
		 * Regular queues have interrupts and hence CPU affinity is
		 * defined by the core virtio code, but polling queues have
		 * no interrupts so we let the block layer assign CPU affinity.
		 */
		if (i == HCTX_TYPE_POLL)
			blk_mq_map_queues(&set->map[i]);
		else
			blk_mq_virtio_map_queues(&set->map[i], vblk->vdev, 0);
	}
}

static void virtblk_complete_batch(struct io_comp_batch *iob)
{
	struct request *req;

	rq_list_for_each(&iob->req_list, req) {
		virtblk_unmap_data(req, blk_mq_rq_to_pdu(req));
		virtblk_cleanup_cmd(req);
	}
	blk_mq_end_request_batch(iob);
}

static int virtblk_poll(struct blk_mq_hw_ctx *hctx, struct io_comp_batch *iob)
{
	struct virtio_blk *vblk = hctx->queue->queuedata;
	struct virtio_blk_vq *vq = get_virtio_blk_vq(hctx);
	struct virtblk_req *vbr;
	unsigned long flags;
	unsigned int len;
	int found = 0;

	spin_lock_irqsave(&vq->lock, flags);

	while ((vbr = virtqueue_get_buf(vq->vq, &len)) != NULL) {
		struct request *req = blk_mq_rq_from_pdu(vbr);
		u8 status = virtblk_vbr_status(vbr);

		found++;
		if (!blk_mq_complete_request_remote(req) &&
		    !blk_mq_add_to_batch(req, iob, status != VIRTIO_BLK_S_OK,
					 virtblk_complete_batch))
			virtblk_request_done(req);
	}

	if (found)
		blk_mq_start_stopped_hw_queues(vblk->disk->queue, true);

	spin_unlock_irqrestore(&vq->lock, flags);

	return found;
}

/*
 * A request on a poll queue completes only when someone polls that queue.
 * If the ring that owns a command stops polling (its task is stopped, or
 * it waits for other completions), nothing else would, and del_gendisk()
 * would wait forever on hot-unplug.  Poll here, as NVMe's timeout handler
 * does; a request that is merely slow gets its timer re-armed.
 */
static enum blk_eh_timer_return virtblk_timeout(struct request *req)
{
	struct blk_mq_hw_ctx *hctx = req->mq_hctx;

	if (hctx->type == HCTX_TYPE_POLL) {
		virtblk_poll(hctx, NULL);
		if (blk_mq_rq_state(req) != MQ_RQ_IN_FLIGHT)
			return BLK_EH_DONE;
	}
	return BLK_EH_RESET_TIMER;
}

static const struct blk_mq_ops virtio_mq_ops = {
	.queue_rq	= virtio_queue_rq,
	.queue_rqs	= virtio_queue_rqs,
	.commit_rqs	= virtio_commit_rqs,
	.complete	= virtblk_request_done,
	.map_queues	= virtblk_map_queues,
	.poll		= virtblk_poll,
	.timeout	= virtblk_timeout,
};

static unsigned int virtblk_queue_depth;
module_param_named(queue_depth, virtblk_queue_depth, uint, 0444);

static int virtblk_read_limits(struct virtio_blk *vblk,
		struct queue_limits *lim)
{
	struct virtio_device *vdev = vblk->vdev;
	u32 v, max_size, sg_elems, opt_io_size;
	u32 max_discard_segs = 0;
	u32 discard_granularity = 0;
	u16 min_io_size;
	u8 physical_block_exp, alignment_offset;
	size_t max_dma_size;
	int err;

	/* We need to know how many segments before we allocate. */
	err = virtio_cread_feature(vdev, VIRTIO_BLK_F_SEG_MAX,
				   struct virtio_blk_config, seg_max,
				   &sg_elems);

	/* We need at least one SG element, whatever they say. */
	if (err || !sg_elems)
		sg_elems = 1;

	/* Prevent integer overflows and honor max vq size */
	sg_elems = min_t(u32, sg_elems, VIRTIO_BLK_MAX_SG_ELEMS - 2);

	/* We can handle whatever the host told us to handle. */
	lim->max_segments = sg_elems;

	/* No real sector limit. */
	lim->max_hw_sectors = UINT_MAX;

	max_dma_size = virtio_max_dma_size(vdev);
	max_size = max_dma_size > U32_MAX ? U32_MAX : max_dma_size;

	/* Host can optionally specify maximum segment size and number of
	 * segments. */
	err = virtio_cread_feature(vdev, VIRTIO_BLK_F_SIZE_MAX,
				   struct virtio_blk_config, size_max, &v);
	if (!err)
		max_size = min(max_size, v);

	lim->max_segment_size = max_size;

	/* Host can optionally specify the block size of the device */
	virtio_cread_feature(vdev, VIRTIO_BLK_F_BLK_SIZE,
				   struct virtio_blk_config, blk_size,
				   &lim->logical_block_size);

	/* Use topology information if available */
	err = virtio_cread_feature(vdev, VIRTIO_BLK_F_TOPOLOGY,
				   struct virtio_blk_config, physical_block_exp,
				   &physical_block_exp);
	if (!err && physical_block_exp)
		lim->physical_block_size =
			lim->logical_block_size * (1 << physical_block_exp);

	err = virtio_cread_feature(vdev, VIRTIO_BLK_F_TOPOLOGY,
				   struct virtio_blk_config, alignment_offset,
				   &alignment_offset);
	if (!err && alignment_offset)
		lim->alignment_offset =
			lim->logical_block_size * alignment_offset;

	err = virtio_cread_feature(vdev, VIRTIO_BLK_F_TOPOLOGY,
				   struct virtio_blk_config, min_io_size,
				   &min_io_size);
	if (!err && min_io_size)
		lim->io_min = lim->logical_block_size * min_io_size;

	err = virtio_cread_feature(vdev, VIRTIO_BLK_F_TOPOLOGY,
				   struct virtio_blk_config, opt_io_size,
				   &opt_io_size);
	if (!err && opt_io_size)
		lim->io_opt = lim->logical_block_size * opt_io_size;

	if (virtio_has_feature(vdev, VIRTIO_BLK_F_DISCARD)) {
		virtio_cread(vdev, struct virtio_blk_config,
			     discard_sector_alignment, &discard_granularity);

		virtio_cread(vdev, struct virtio_blk_config,
			     max_discard_sectors, &v);
		lim->max_hw_discard_sectors = v ? v : UINT_MAX;

		virtio_cread(vdev, struct virtio_blk_config, max_discard_seg,
			     &max_discard_segs);
	}

	if (virtio_has_feature(vdev, VIRTIO_BLK_F_WRITE_ZEROES)) {
		virtio_cread(vdev, struct virtio_blk_config,
			     max_write_zeroes_sectors, &v);
		lim->max_write_zeroes_sectors = v ? v : UINT_MAX;

		virtio_cread(vdev, struct virtio_blk_config,
			     max_write_zeroes_seg, &v);
		vblk->max_write_zeroes_segs = clamp(v, 1U, MAX_DISCARD_SEGMENTS);
	}

	/* The discard and secure erase limits are combined since the Linux
	 * block layer uses the same limit for both commands.
	 *
	 * If both VIRTIO_BLK_F_SECURE_ERASE and VIRTIO_BLK_F_DISCARD features
	 * are negotiated, we will use the minimum between the limits.
	 *
	 * discard sector alignment is set to the minimum between discard_sector_alignment
	 * and secure_erase_sector_alignment.
	 *
	 * max discard sectors is set to the minimum between max_discard_seg and
	 * max_secure_erase_seg.
	 */
	if (virtio_has_feature(vdev, VIRTIO_BLK_F_SECURE_ERASE)) {

		virtio_cread(vdev, struct virtio_blk_config,
			     secure_erase_sector_alignment, &v);

		/* secure_erase_sector_alignment should not be zero, the device should set a
		 * valid number of sectors.
		 */
		if (!v) {
			dev_err(&vdev->dev,
				"virtio_blk: secure_erase_sector_alignment can't be 0\n");
			return -EINVAL;
		}

		discard_granularity = min_not_zero(discard_granularity, v);

		virtio_cread(vdev, struct virtio_blk_config,
			     max_secure_erase_sectors, &v);

		/* max_secure_erase_sectors should not be zero, the device should set a
		 * valid number of sectors.
		 */
		if (!v) {
			dev_err(&vdev->dev,
				"virtio_blk: max_secure_erase_sectors can't be 0\n");
			return -EINVAL;
		}

		lim->max_secure_erase_sectors = v;

		virtio_cread(vdev, struct virtio_blk_config,
			     max_secure_erase_seg, &v);

		/* max_secure_erase_seg should not be zero, the device should set a
		 * valid number of segments
		 */
		if (!v) {
			dev_err(&vdev->dev,
				"virtio_blk: max_secure_erase_seg can't be 0\n");
			return -EINVAL;
		}

		max_discard_segs = min_not_zero(max_discard_segs, v);
	}

	if (virtio_has_feature(vdev, VIRTIO_BLK_F_DISCARD) ||
	    virtio_has_feature(vdev, VIRTIO_BLK_F_SECURE_ERASE)) {
		/* max_discard_seg and discard_granularity will be 0 only
		 * if max_discard_seg and discard_sector_alignment fields in the virtio
		 * config are 0 and VIRTIO_BLK_F_SECURE_ERASE feature is not negotiated.
		 * In this case, we use default values.
		 */
		if (!max_discard_segs)
			max_discard_segs = sg_elems;

		lim->max_discard_segments =
			min(max_discard_segs, MAX_DISCARD_SEGMENTS);

		if (discard_granularity)
			lim->discard_granularity =
				discard_granularity << SECTOR_SHIFT;
		else
			lim->discard_granularity = lim->logical_block_size;
	}

	if (virtio_has_feature(vdev, VIRTIO_BLK_F_ZONED)) {
		u8 model;

		virtio_cread(vdev, struct virtio_blk_config, zoned.model, &model);
		switch (model) {
		case VIRTIO_BLK_Z_NONE:
		case VIRTIO_BLK_Z_HA:
			/* treat host-aware devices as non-zoned */
			return 0;
		case VIRTIO_BLK_Z_HM:
			err = virtblk_read_zoned_limits(vblk, lim);
			if (err)
				return err;
			break;
		default:
			dev_err(&vdev->dev, "unsupported zone model %d\n", model);
			return -EINVAL;
		}
	}

	return 0;
}

/*
 * Tear down a disk that device_add_disk() made live.  The final put_disk()
 * frees vblk and its index through virtblk_free_disk(), possibly later if
 * the character device is still open.
 */
static void virtblk_del_disk(struct virtio_blk *vblk)
{
	struct virtio_device *vdev = vblk->vdev;

	/* Make sure no work handler is accessing the device. */
	flush_work(&vblk->config_work);

	/* Waits for every request in flight, passthrough ones included. */
	del_gendisk(vblk->disk);
	blk_mq_free_tag_set(&vblk->tag_set);

	mutex_lock(&vblk->vdev_mutex);

	/* Stop all the virtqueues. */
	virtio_reset_device(vdev);

	/* Virtqueues are stopped, nothing can use vblk->vdev anymore. */
	vblk->vdev = NULL;

	vdev->config->del_vqs(vdev);
	kfree(vblk->vqs);

	mutex_unlock(&vblk->vdev_mutex);

	put_disk(vblk->disk);
}

static int virtblk_probe(struct virtio_device *vdev)
{
	struct virtio_blk *vblk;
	struct queue_limits lim = {
		.features		= BLK_FEAT_ROTATIONAL,
		.logical_block_size	= SECTOR_SIZE,
	};
	int err, index;
	unsigned int queue_depth;

	if (!vdev->config->get) {
		dev_err(&vdev->dev, "%s failure: config access disabled\n",
			__func__);
		return -EINVAL;
	}

	err = ida_alloc_range(&vd_index_ida, 0,
			      minor_to_index(1 << MINORBITS) - 1, GFP_KERNEL);
	if (err < 0)
		goto out;
	index = err;

	vblk = kzalloc(sizeof(*vblk), GFP_KERNEL);
	if (!vblk) {
		err = -ENOMEM;
		goto out_free_index;
	}

	vdev->priv = vblk;
	mutex_init(&vblk->vdev_mutex);

	vblk->vdev = vdev;

	INIT_WORK(&vblk->config_work, virtblk_config_changed_work);

	err = init_vq(vblk);
	if (err)
		goto out_free_vblk;

	/* Default queue sizing is to fill the ring. */
	if (!virtblk_queue_depth) {
		queue_depth = vblk->vqs[0].vq->num_free;
		/* ... but without indirect descs, we use 2 descs per req */
		if (!virtio_has_feature(vdev, VIRTIO_RING_F_INDIRECT_DESC))
			queue_depth /= 2;
	} else {
		queue_depth = virtblk_queue_depth;
	}

	memset(&vblk->tag_set, 0, sizeof(vblk->tag_set));
	vblk->tag_set.ops = &virtio_mq_ops;
	vblk->tag_set.queue_depth = queue_depth;
	vblk->tag_set.numa_node = NUMA_NO_NODE;
	vblk->tag_set.flags = BLK_MQ_F_SHOULD_MERGE;
	vblk->tag_set.cmd_size =
		sizeof(struct virtblk_req) +
		sizeof(struct scatterlist) * VIRTIO_BLK_INLINE_SG_CNT;
	vblk->tag_set.driver_data = vblk;
	vblk->tag_set.nr_hw_queues = vblk->num_vqs;
	vblk->tag_set.nr_maps = 1;
	if (vblk->io_queues[HCTX_TYPE_POLL])
		vblk->tag_set.nr_maps = 3;

	err = blk_mq_alloc_tag_set(&vblk->tag_set);
	if (err)
		goto out_free_vq;

	err = virtblk_read_limits(vblk, &lim);
	if (err)
		goto out_free_tags;

	if (virtblk_get_cache_mode(vdev))
		lim.features |= BLK_FEAT_WRITE_CACHE;

	vblk->disk = blk_mq_alloc_disk(&vblk->tag_set, &lim, vblk);
	if (IS_ERR(vblk->disk)) {
		err = PTR_ERR(vblk->disk);
		goto out_free_tags;
	}

	virtblk_name_format("vd", index, vblk->disk->disk_name, DISK_NAME_LEN);

	vblk->disk->major = major;
	vblk->disk->first_minor = index_to_minor(index);
	vblk->disk->minors = 1 << PART_BITS;
	vblk->disk->private_data = vblk;
	vblk->disk->fops = &virtblk_fops;
	vblk->index = index;

	/* If disk is read-only in the host, the guest should obey */
	if (virtio_has_feature(vdev, VIRTIO_BLK_F_RO))
		set_disk_ro(vblk->disk, 1);

	virtblk_update_capacity(vblk, false);
	virtio_device_ready(vdev);

	/*
	 * All steps that follow use the VQs therefore they need to be
	 * placed after the virtio_device_ready() call above.
	 */
	if (IS_ENABLED(CONFIG_BLK_DEV_ZONED) &&
	    (lim.features & BLK_FEAT_ZONED)) {
		err = blk_revalidate_disk_zones(vblk->disk);
		if (err)
			goto out_cleanup_disk;
	}

	err = device_add_disk(&vdev->dev, vblk->disk, virtblk_attr_groups);
	if (err)
		goto out_cleanup_disk;

	err = virtblk_cdev_add(vblk);
	if (err) {
		/* The disk is live: unwind as remove does; that frees vblk. */
		virtblk_del_disk(vblk);
		return err;
	}

	return 0;

out_cleanup_disk:
	put_disk(vblk->disk);
out_free_tags:
	blk_mq_free_tag_set(&vblk->tag_set);
out_free_vq:
	vdev->config->del_vqs(vdev);
	kfree(vblk->vqs);
out_free_vblk:
	kfree(vblk);
out_free_index:
	ida_free(&vd_index_ida, index);
out:
	return err;
}

static void virtblk_remove(struct virtio_device *vdev)
{
	struct virtio_blk *vblk = vdev->priv;

	/* No new opens; files already open keep vblk until they close. */
	virtblk_cdev_del(vblk);
	virtblk_del_disk(vblk);
}

#ifdef CONFIG_PM_SLEEP
static int virtblk_freeze(struct virtio_device *vdev)
{
	struct virtio_blk *vblk = vdev->priv;
	struct request_queue *q = vblk->disk->queue;

	/* Ensure no requests in virtqueues before deleting vqs. */
	blk_mq_freeze_queue(q);
	blk_mq_quiesce_queue_nowait(q);
	blk_mq_unfreeze_queue(q);

	/* Ensure we don't receive any more interrupts */
	virtio_reset_device(vdev);

	/* Make sure no work handler is accessing the device. */
	flush_work(&vblk->config_work);

	vdev->config->del_vqs(vdev);
	kfree(vblk->vqs);

	return 0;
}

static int virtblk_restore(struct virtio_device *vdev)
{
	struct virtio_blk *vblk = vdev->priv;
	int ret;

	ret = init_vq(vdev->priv);
	if (ret)
		return ret;

	virtio_device_ready(vdev);
	blk_mq_unquiesce_queue(vblk->disk->queue);

	return 0;
}
#endif

static const struct virtio_device_id id_table[] = {
	{ VIRTIO_ID_BLOCK, VIRTIO_DEV_ANY_ID },
	{ 0 },
};

static unsigned int features_legacy[] = {
	VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_GEOMETRY,
	VIRTIO_BLK_F_RO, VIRTIO_BLK_F_BLK_SIZE,
	VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_CONFIG_WCE,
	VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES,
	VIRTIO_BLK_F_SECURE_ERASE,
}
;
static unsigned int features[] = {
	VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_GEOMETRY,
	VIRTIO_BLK_F_RO, VIRTIO_BLK_F_BLK_SIZE,
	VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_CONFIG_WCE,
	VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES,
	VIRTIO_BLK_F_SECURE_ERASE, VIRTIO_BLK_F_ZONED,
};

static struct virtio_driver virtio_blk = {
	.feature_table			= features,
	.feature_table_size		= ARRAY_SIZE(features),
	.feature_table_legacy		= features_legacy,
	.feature_table_size_legacy	= ARRAY_SIZE(features_legacy),
	.driver.name			= KBUILD_MODNAME,
	.id_table			= id_table,
	.probe				= virtblk_probe,
	.remove				= virtblk_remove,
	.config_changed			= virtblk_config_changed,
#ifdef CONFIG_PM_SLEEP
	.freeze				= virtblk_freeze,
	.restore			= virtblk_restore,
#endif
};

static int __init virtio_blk_init(void)
{
	int error;

	virtblk_wq = alloc_workqueue("virtio-blk", 0, 0);
	if (!virtblk_wq)
		return -ENOMEM;

	major = register_blkdev(0, "virtblk");
	if (major < 0) {
		error = major;
		goto out_destroy_workqueue;
	}

	error = alloc_chrdev_region(&virtblk_chr_devt, 0, VIRTBLK_CHR_MINORS,
				    "vblk-generic");
	if (error)
		goto out_unregister_blkdev;

	error = class_register(&virtblk_chr_class);
	if (error)
		goto out_unregister_chrdev;

	error = register_virtio_driver(&virtio_blk);
	if (error)
		goto out_unregister_class;
	return 0;

out_unregister_class:
	class_unregister(&virtblk_chr_class);
out_unregister_chrdev:
	unregister_chrdev_region(virtblk_chr_devt, VIRTBLK_CHR_MINORS);
out_unregister_blkdev:
	unregister_blkdev(major, "virtblk");
out_destroy_workqueue:
	destroy_workqueue(virtblk_wq);
	return error;
}

static void __exit virtio_blk_fini(void)
{
	unregister_virtio_driver(&virtio_blk);
	class_unregister(&virtblk_chr_class);
	unregister_chrdev_region(virtblk_chr_devt, VIRTBLK_CHR_MINORS);
	unregister_blkdev(major, "virtblk");
	ida_destroy(&virtblk_chr_minor_ida);
	destroy_workqueue(virtblk_wq);
}
module_init(virtio_blk_init);
module_exit(virtio_blk_fini);

MODULE_DEVICE_TABLE(virtio, id_table);
MODULE_DESCRIPTION("Virtio block driver");
MODULE_LICENSE("GPL");
