















#include <linux/cdev.h>
#include <linux/io_uring/cmd.h>
#include <linux/ioprio.h>



















MODULE_PARM_DESC(num_request_queues,











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









































	/* Ranges one WRITE_ZEROES request may carry, for passthrough */
	u32 max_write_zeroes_segs;

	/*
	 * Generic character device.  Its struct device holds a reference on
	 * the gendisk, so this structure outlives every open file of it.
	 */
	struct cdev cdev;
	struct device cdev_device;



























static inline blk_status_t virtblk_result(u8 status)
{














}

static inline struct virtio_blk_vq *get_virtio_blk_vq(struct blk_mq_hw_ctx *hctx)
{




}

static int virtblk_add_req(struct virtqueue *vq, struct virtblk_req *vbr)
{

















}

static int virtblk_setup_discard_write_zeroes_erase(struct request *req, bool unmap)
{










































}

static void virtblk_unmap_data(struct request *req, struct virtblk_req *vbr)
{



}

static int virtblk_map_data(struct blk_mq_hw_ctx *hctx, struct request *req,

{














}

static void virtblk_cleanup_cmd(struct request *req)
{


}

static blk_status_t virtblk_setup_cmd(struct virtio_device *vdev,


{


























































	case REQ_OP_DRV_OUT:

		 * Out header has already been prepared by the caller (virtblk_get_id(),
		 * virtblk_submit_zone_report() or io_uring passthrough), nothing to do
		 * here.



















}






static inline u8 virtblk_vbr_status(struct virtblk_req *vbr)
{

}

static inline void virtblk_request_done(struct request *req)
{












}

static void virtblk_done(struct virtqueue *vq)
{























}

static void virtio_commit_rqs(struct blk_mq_hw_ctx *hctx)
{










}

static blk_status_t virtblk_fail_to_queue(struct request *req, int rc)
{









}

static blk_status_t virtblk_prep_rq(struct blk_mq_hw_ctx *hctx,



{















}

static blk_status_t virtio_queue_rq(struct blk_mq_hw_ctx *hctx,

{


































}

static bool virtblk_prep_rq_batch(struct request *req)
{




}

static void virtblk_add_req_batch(struct virtio_blk_vq *vq,

{























}

static void virtio_queue_rqs(struct rq_list *rqlist)
{





















}


static void *virtblk_alloc_report_buffer(struct virtio_blk *vblk,


{























}

static int virtblk_submit_zone_report(struct virtio_blk *vblk,


{























}

static int virtblk_parse_zone(struct virtio_blk *vblk,


{

































































}

static int virtblk_report_zones(struct gendisk *disk, sector_t sector,


{























































}

static int virtblk_read_zoned_limits(struct virtio_blk *vblk,

{


































































}






static inline int virtblk_read_zoned_limits(struct virtio_blk *vblk,

{



}




static int virtblk_get_id(struct gendisk *disk, char *id_str)
{
























}


static int virtblk_getgeo(struct block_device *bd, struct hd_geometry *geo)
{



























}

static void virtblk_free_disk(struct gendisk *disk)
{





}








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

}

static int minor_to_index(int minor)
{

}

static ssize_t serial_show(struct device *dev,

{















}




static void virtblk_update_capacity(struct virtio_blk *vblk, bool resize)
{


























}

static void virtblk_config_changed_work(struct work_struct *work)
{




}

static void virtblk_config_changed(struct virtio_device *vdev)
{



}

static int init_vq(struct virtio_blk *vblk)
{










































































}





static int virtblk_name_format(char *prefix, int index, char *buf, int buflen)
{




















}

static int virtblk_get_cache_mode(struct virtio_device *vdev)
{















}






cache_type_store(struct device *dev, struct device_attribute *attr,

{






















}


cache_type_show(struct device *dev, struct device_attribute *attr, char *buf)
{






}









static umode_t virtblk_attrs_are_visible(struct kobject *kobj,

{










}











static void virtblk_map_queues(struct blk_mq_tag_set *set)
{























}

static void virtblk_complete_batch(struct io_comp_batch *iob)
{







}

static int virtblk_poll(struct blk_mq_hw_ctx *hctx, struct io_comp_batch *iob)
{


























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








	.timeout	= virtblk_timeout,





static int virtblk_read_limits(struct virtio_blk *vblk,

{
























































































		virtio_cread(vdev, struct virtio_blk_config,
			     max_write_zeroes_seg, &v);
		vblk->max_write_zeroes_segs = clamp(v, 1U, MAX_DISCARD_SEGMENTS);




































































































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




















	vblk = kzalloc(sizeof(*vblk), GFP_KERNEL);





	vdev->priv = vblk;


















































































	err = virtblk_cdev_add(vblk);
	if (err) {
		/* The disk is live: unwind as remove does; that frees vblk. */
		virtblk_del_disk(vblk);
		return err;
	}
















}

static void virtblk_remove(struct virtio_device *vdev)
{


	/* No new opens; files already open keep vblk until they close. */
	virtblk_cdev_del(vblk);
	virtblk_del_disk(vblk);
}


static int virtblk_freeze(struct virtio_device *vdev)
{


















}

static int virtblk_restore(struct virtio_device *vdev)
{











}













}

























static int __init virtio_blk_init(void)
{












	error = alloc_chrdev_region(&virtblk_chr_devt, 0, VIRTBLK_CHR_MINORS,
				    "vblk-generic");



	error = class_register(&virtblk_chr_class);
	if (error)
		goto out_unregister_chrdev;

	error = register_virtio_driver(&virtio_blk);
	if (error)
		goto out_unregister_class;


out_unregister_class:
	class_unregister(&virtblk_chr_class);
out_unregister_chrdev:
	unregister_chrdev_region(virtblk_chr_devt, VIRTBLK_CHR_MINORS);





}

static void __exit virtio_blk_fini(void)
{

	class_unregister(&virtblk_chr_class);
	unregister_chrdev_region(virtblk_chr_devt, VIRTBLK_CHR_MINORS);

	ida_destroy(&virtblk_chr_minor_ida);

}






