// SPDX-License-Identifier: GPL-2.0
/*
 * vblk_crashtest - make the kernel report one kind of bug on request.
 *
 * vblk-ci's console classifier is tested against console logs recorded from
 * real kernels.  This module produces them: writing a kind's name to
 * /sys/kernel/debug/vblk_crashtest/trigger makes the kernel print that kind
 * of report (and, with the appliance's panic_on_warn/oops=panic command line,
 * panic right after it).  Never load it anywhere but a throw-away test VM.
 *
 * Kinds: warning bug null-deref gpf kasan-uaf kfence-oob lockdep
 *        atomic-sleep might-sleep hung-task soft-lockup rcu-stall
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/debugfs.h>
#include <linux/delay.h>
#include <linux/kfence.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/uaccess.h>

static struct dentry *crashtest_dir;

/* Seconds the lockup and stall kinds keep their CPU; the detectors fire long before. */
static unsigned int spin_seconds = 120;
module_param(spin_seconds, uint, 0644);
MODULE_PARM_DESC(spin_seconds, "how long soft-lockup and rcu-stall keep the CPU");

/* Read through these so the compiler cannot prove anything about them. */
static int *volatile crashtest_null;
static unsigned long volatile crashtest_noncanonical = 0xdead000000000100UL;

static noinline void crashtest_warning(void)
{
	WARN_ON(1);
}

static noinline void crashtest_bug(void)
{
	BUG();
}

static noinline void crashtest_null_deref(void)
{
	pr_info("read through a NULL pointer: %d\n", *crashtest_null);
}

static noinline void crashtest_gpf(void)
{
	pr_info("read a non-canonical address: %lu\n",
		*(unsigned long *)crashtest_noncanonical);
}

static noinline void crashtest_kasan_uaf(void)
{
	char *volatile p = kmalloc(64, GFP_KERNEL);

	if (!p)
		return;
	kfree(p);
	pr_info("read freed memory: %d\n", p[8]);
}

/*
 * KFENCE hands out one sampled allocation per sample interval: allocate until
 * one comes from its pool, then read the guard page next to the object.  The
 * read is not instrumented, so KASAN (also on in the debug kernel) stays out.
 */
static __no_sanitize_address noinline char crashtest_guard_read(const char *p)
{
	/* A page-aligned object has its guard page to the left, else to the right. */
	return offset_in_page(p) ? p[32] : p[-1];
}

static noinline void crashtest_kfence_oob(void)
{
	int i;

	for (i = 0; i < 2000; i++) {
		char *p = kmalloc(32, GFP_KERNEL);

		if (!p)
			return;
		if (is_kfence_address(p)) {
			pr_info("read next to a KFENCE object: %d\n", crashtest_guard_read(p));
			kfree(p);
			return;
		}
		kfree(p);
		msleep(20);
	}
	pr_err("no KFENCE allocation in 2000 tries (is CONFIG_KFENCE on?)\n");
}

static DEFINE_MUTEX(crashtest_lock_a);
static DEFINE_MUTEX(crashtest_lock_b);

static noinline void crashtest_lockdep(void)
{
	/* A then B, later B then A: lockdep reports the inversion without a real deadlock. */
	mutex_lock(&crashtest_lock_a);
	mutex_lock(&crashtest_lock_b);
	mutex_unlock(&crashtest_lock_b);
	mutex_unlock(&crashtest_lock_a);

	mutex_lock(&crashtest_lock_b);
	mutex_lock(&crashtest_lock_a);
	mutex_unlock(&crashtest_lock_a);
	mutex_unlock(&crashtest_lock_b);
}

static DEFINE_SPINLOCK(crashtest_spinlock);

static noinline void crashtest_atomic_sleep(void)
{
	spin_lock(&crashtest_spinlock);
	msleep(1);
	spin_unlock(&crashtest_spinlock);
}

/* A mutex is a sleeping lock: CONFIG_DEBUG_ATOMIC_SLEEP reports taking one under a spinlock. */
static DEFINE_MUTEX(crashtest_sleeping_lock);

static noinline void crashtest_might_sleep(void)
{
	spin_lock(&crashtest_spinlock);
	mutex_lock(&crashtest_sleeping_lock);
	mutex_unlock(&crashtest_sleeping_lock);
	spin_unlock(&crashtest_spinlock);
}

/* The blocking kinds run in a kthread so the writer (the guest agent) gets its reply. */
static DECLARE_COMPLETION(crashtest_never);

static int crashtest_hung_task_fn(void *unused)
{
	wait_for_completion(&crashtest_never);
	return 0;
}

static noinline void crashtest_spin(void)
{
	unsigned long end = jiffies + spin_seconds * HZ;

	while (time_before(jiffies, end))
		cpu_relax();
}

static int crashtest_soft_lockup_fn(void *unused)
{
	preempt_disable();
	crashtest_spin();
	preempt_enable();
	return 0;
}

static int crashtest_rcu_stall_fn(void *unused)
{
	rcu_read_lock();
	preempt_disable();
	crashtest_spin();
	preempt_enable();
	rcu_read_unlock();
	return 0;
}

static void crashtest_kthread(int (*fn)(void *), const char *name)
{
	struct task_struct *t = kthread_run(fn, NULL, "%s", name);

	if (IS_ERR(t))
		pr_err("cannot start %s: %ld\n", name, PTR_ERR(t));
}

static void crashtest_hung_task(void)
{
	crashtest_kthread(crashtest_hung_task_fn, "crashtest_hung");
}

static void crashtest_soft_lockup(void)
{
	crashtest_kthread(crashtest_soft_lockup_fn, "crashtest_spin");
}

static void crashtest_rcu_stall(void)
{
	crashtest_kthread(crashtest_rcu_stall_fn, "crashtest_rcu");
}

static const struct {
	const char *name;
	void (*fn)(void);
} crashtest_kinds[] = {
	{ "warning", crashtest_warning },
	{ "bug", crashtest_bug },
	{ "null-deref", crashtest_null_deref },
	{ "gpf", crashtest_gpf },
	{ "kasan-uaf", crashtest_kasan_uaf },
	{ "kfence-oob", crashtest_kfence_oob },
	{ "lockdep", crashtest_lockdep },
	{ "atomic-sleep", crashtest_atomic_sleep },
	{ "might-sleep", crashtest_might_sleep },
	{ "hung-task", crashtest_hung_task },
	{ "soft-lockup", crashtest_soft_lockup },
	{ "rcu-stall", crashtest_rcu_stall },
};

static ssize_t crashtest_trigger_write(struct file *file, const char __user *ubuf,
				       size_t count, loff_t *ppos)
{
	char kind[32];
	size_t len = min(count, sizeof(kind) - 1);
	int i;

	if (copy_from_user(kind, ubuf, len))
		return -EFAULT;
	kind[len] = '\0';
	strim(kind);

	for (i = 0; i < ARRAY_SIZE(crashtest_kinds); i++) {
		if (!strcmp(kind, crashtest_kinds[i].name)) {
			pr_info("triggering %s\n", kind);
			crashtest_kinds[i].fn();
			return count;
		}
	}
	return -EINVAL;
}

static const struct file_operations crashtest_trigger_fops = {
	.owner = THIS_MODULE,
	.write = crashtest_trigger_write,
	.llseek = noop_llseek,
};

static int __init crashtest_init(void)
{
	crashtest_dir = debugfs_create_dir("vblk_crashtest", NULL);
	debugfs_create_file("trigger", 0200, crashtest_dir, NULL, &crashtest_trigger_fops);
	return 0;
}

static void __exit crashtest_exit(void)
{
	debugfs_remove_recursive(crashtest_dir);
}

module_init(crashtest_init);
module_exit(crashtest_exit);

MODULE_DESCRIPTION("Make the kernel report one kind of bug on request (vblk-ci tests)");
MODULE_LICENSE("GPL");
