// SPDX-License-Identifier: GPL-2.0-only
/*
 * vblk-engine allocation-failure injection (the coverage kernel's
 * CONFIG_FAIL_PAGE_ALLOC): writing N to /proc/thread-self/fail-nth makes the
 * Nth allocation this thread makes that passes the fault filters fail (the
 * `inject` suite sets fail_page_alloc's filters through debugfs).  Reading it
 * back gives how many of the N were left, so 0 means the fault was injected.
 *
 *   vblk-engine --load-module KO --from N --to M [--class NAME]
 *
 * loads KO (finit_module) with allocation N failing, for N = from..to, and
 * after each load checks what a failed or a successful module_init must
 * leave: a failed load leaves no trace of the driver (its class, char and
 * block majors gone), a successful one registered all three, and no disk
 * is half made (a vdX without its vdXc0).  A loaded module is unloaded
 * again.  The sweep stops early at the first load that made fewer than N
 * allocations: the module is then loaded, cleanly, and stays loaded.
 * Prints one JSON object; exit 0 when the sweep ran (problems are data).
 * --from N --to N with N larger than any load needs loads once, cleanly:
 * N - "left" is then how many allocations a load makes.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "engine.h"

#define FAIL_NTH_PATH	"/proc/thread-self/fail-nth"
#define MAX_PROBLEMS	8

int fail_nth_open(void)
{
	int fd = open(FAIL_NTH_PATH, O_RDWR | O_CLOEXEC);

	return fd < 0 ? -errno : fd;
}

int fail_nth_arm(int fd, unsigned int n)
{
	char buf[16];
	int len = snprintf(buf, sizeof(buf), "%u", n);

	if (pwrite(fd, buf, (size_t)len, 0) != len)
		return -errno;
	return 0;
}

/* Disarm; *left = how many allocations were still to come (0: injected). */
int fail_nth_disarm(int fd, unsigned int *left)
{
	char buf[16] = "";
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);

	if (pwrite(fd, "0", 1, 0) != 1 || n <= 0)
		return -EIO;
	*left = (unsigned int)strtoul(buf, NULL, 10);
	return 0;
}

/* Is there a line "<major> <name>" in /proc/devices? */
static bool have_major(const char *name)
{
	char line[128], want[64];
	bool found = false;
	FILE *f = fopen("/proc/devices", "r");

	if (!f)
		return false;
	snprintf(want, sizeof(want), " %s\n", name);
	while (fgets(line, sizeof(line), f))
		if (strstr(line, want))
			found = true;
	fclose(f);
	return found;
}

static bool exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

/* A vdX in /sys/block whose vdXc0 is missing from the class: its name, or NULL. */
static const char *half_made_disk(const char *class_dir)
{
	static char name[256];
	char path[512];
	struct dirent *d;
	DIR *dir = opendir("/sys/block");

	if (!dir)
		return NULL;
	while ((d = readdir(dir))) {
		if (strncmp(d->d_name, "vd", 2))
			continue;
		snprintf(path, sizeof(path), "%s/%sc0", class_dir, d->d_name);
		if (!exists(path)) {
			snprintf(name, sizeof(name), "%s", d->d_name);
			closedir(dir);
			return name;
		}
	}
	closedir(dir);
	return NULL;
}

struct sweep {
	char problems[MAX_PROBLEMS][200];
	unsigned int nproblems, runs, failed, loaded_injected;
	int errnos[MAX_RES_VALUES];
	unsigned int errno_count[MAX_RES_VALUES], nerrnos;
	unsigned int last_n;
	unsigned int left;	/* fail-nth left after the last load */
	bool clean;		/* the last load was made with no fault injected */
};

static void problem(struct sweep *sw, unsigned int n, const char *what)
{
	if (sw->nproblems < MAX_PROBLEMS)
		snprintf(sw->problems[sw->nproblems], sizeof(sw->problems[0]),
			 "fail-nth %u: %s", n, what);
	sw->nproblems++;
}

static void count_errno(struct sweep *sw, int err)
{
	unsigned int i;

	for (i = 0; i < sw->nerrnos; i++)
		if (sw->errnos[i] == err) {
			sw->errno_count[i]++;
			return;
		}
	if (sw->nerrnos < MAX_RES_VALUES) {
		sw->errnos[sw->nerrnos] = err;
		sw->errno_count[sw->nerrnos++] = 1;
	}
}

static void print_sweep(const struct sweep *sw, const char *ko, unsigned int from,
			unsigned int to)
{
	unsigned int i;

	printf("{\"mode\": \"load-module\", \"module\": ");
	print_json_string(ko);
	printf(", \"from\": %u, \"to\": %u, \"runs\": %u, \"last_n\": %u, \"left\": %u, "
	       "\"clean\": %s, \"refused\": %u, \"loaded_with_fault\": %u, \"errnos\": {",
	       from, to, sw->runs, sw->last_n, sw->left, sw->clean ? "true" : "false", sw->failed,
	       sw->loaded_injected);
	for (i = 0; i < sw->nerrnos; i++)
		printf("%s\"%d\": %u", i ? ", " : "", sw->errnos[i], sw->errno_count[i]);
	printf("}, \"problem_count\": %u, \"problems\": [", sw->nproblems);
	for (i = 0; i < sw->nproblems && i < MAX_PROBLEMS; i++) {
		if (i)
			fputs(", ", stdout);
		print_json_string(sw->problems[i]);
	}
	printf("]}\n");
}

static int usage(const char *msg)
{
	fprintf(stderr, "vblk-engine --load-module KO --from N --to M [--class NAME] "
		"[--name MODULE]: %s\n", msg);
	return EXIT_USAGE;
}

int load_module_main(int argc, char **argv)
{
	const char *ko = NULL, *cls = "vblk-generic", *mod = "virtio_blk";
	const char *chr = "vblk-generic", *blk = "virtblk";
	unsigned long from = 0, to = 0;
	char class_dir[128], buf[128];
	struct sweep sw = { 0 };
	unsigned int n, left;
	int i, ffd, kfd, ret, err;

	for (i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--load-module"))
			ko = argv[i + 1];
		else if (!strcmp(argv[i], "--from"))
			from = strtoul(argv[i + 1], NULL, 0);
		else if (!strcmp(argv[i], "--to"))
			to = strtoul(argv[i + 1], NULL, 0);
		else if (!strcmp(argv[i], "--class"))
			cls = argv[i + 1];
		else if (!strcmp(argv[i], "--name"))
			mod = argv[i + 1];
		else
			return usage(argv[i]);
	}
	if (i != argc || !ko || !from || to < from || to - from > 100000)
		return usage("need KO and 1 <= --from <= --to");
	snprintf(class_dir, sizeof(class_dir), "/sys/class/%s", cls);
	ffd = fail_nth_open();
	if (ffd < 0) {
		fprintf(stderr, "vblk-engine: %s: %s\n", FAIL_NTH_PATH, strerror(-ffd));
		return EXIT_SETUP;
	}
	kfd = open(ko, O_RDONLY | O_CLOEXEC);
	if (kfd < 0) {
		fprintf(stderr, "vblk-engine: %s: %s\n", ko, strerror(errno));
		return EXIT_SETUP;
	}
	for (n = (unsigned int)from; n <= to; n++) {
		if (fail_nth_arm(ffd, n))
			return EXIT_SETUP;
		ret = (int)syscall(SYS_finit_module, kfd, "", 0);
		err = ret ? errno : 0;
		if (fail_nth_disarm(ffd, &left))
			return EXIT_SETUP;
		sw.runs++;
		sw.last_n = n;
		sw.clean = left != 0;
		sw.left = left;
		if (ret) {
			sw.failed++;
			count_errno(&sw, err);
			if (err != ENOMEM) {
				snprintf(buf, sizeof(buf), "load refused with errno %d (%s), expected ENOMEM",
					 err, strerror(err));
				problem(&sw, n, buf);
			}
			if (exists(class_dir) || have_major(chr) || have_major(blk)) {
				snprintf(buf, sizeof(buf), "failed load left %s%s%s behind",
					 exists(class_dir) ? "the class " : "",
					 have_major(chr) ? "the char major " : "",
					 have_major(blk) ? "the block major" : "");
				problem(&sw, n, buf);
			}
			if (sw.clean) {
				problem(&sw, n, "a load with no fault injected failed");
				break;
			}
			continue;
		}
		if (!sw.clean)
			sw.loaded_injected++;
		if (!exists(class_dir) || !have_major(chr) || !have_major(blk))
			problem(&sw, n, "loaded, but the class or a major is missing");
		if (half_made_disk(class_dir))
			problem(&sw, n, "a disk in /sys/block has no char device node in the class");
		if (sw.clean)	/* the sweep is over: leave it loaded */
			break;
		if (syscall(SYS_delete_module, mod, O_NONBLOCK)) {
			snprintf(buf, sizeof(buf), "unload failed: %s", strerror(errno));
			problem(&sw, n, buf);
			break;
		}
		if (exists(class_dir) || have_major(chr) || have_major(blk))
			problem(&sw, n, "unload left the class or a major behind");
	}
	close(kfd);
	close(ffd);
	print_sweep(&sw, ko, (unsigned int)from, to);
	return fflush(stdout) ? EXIT_RUNTIME : EXIT_JOB_RAN;
}
