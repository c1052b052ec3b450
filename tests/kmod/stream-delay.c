// SPDX-License-Identifier: GPL-2.0
/*
 * stream-delay: a test-only module that makes calls of one function sleep
 * before they run, to hold a race window of dm-stream open for as long as
 * a test needs.  Nothing of dm-stream knows about it.
 *
 * An ftrace callback on the function (found by name, so it may be in a
 * module loaded earlier) sends an armed call to stall_call() instead, the
 * way livepatch redirects a call; stall_call() sleeps, then calls the
 * function from its start, where the callback lets a call from this module
 * through.  The function must be one that may sleep (stream_fetch_retire
 * takes a mutex) and take at most six integer arguments.  Sleeping rather
 * than spinning keeps the CPU free for the work the test waits on (a
 * bound workqueue of dm-delay, for instance).
 *
 * Parameters (/sys/module/stream_delay/parameters/):
 *   func      load time: the function to stall (stream_fetch_retire)
 *   delay_ms  how long each stalled call sleeps (1000)
 *   count     how many of the next calls to stall; write it to arm
 *   stalled   calls stalled so far (read only)
 *   stalling  1 while a call is stalled (read only)
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/delay.h>
#include <linux/ftrace.h>
#include <linux/kallsyms.h>
#include <linux/module.h>
#include <linux/spinlock.h>
#include <linux/string.h>

static char *func = "stream_fetch_retire";
module_param(func, charp, 0444);
MODULE_PARM_DESC(func, "Function to stall");

static unsigned int delay_ms = 1000;
module_param(delay_ms, uint, 0644);
MODULE_PARM_DESC(delay_ms, "Milliseconds each stalled call waits");

/* count, stalled and stalling: written under stall_lock by the callback */
static DEFINE_SPINLOCK(stall_lock);
static int count;
module_param(count, int, 0644);
MODULE_PARM_DESC(count, "Number of the next calls to stall");

static int stalled;
module_param(stalled, int, 0444);
MODULE_PARM_DESC(stalled, "Calls stalled so far");

static int stalling;
module_param(stalling, int, 0444);
MODULE_PARM_DESC(stalling, "1 while a call is stalled");

typedef unsigned long (*func_t)(unsigned long, unsigned long, unsigned long,
			       unsigned long, unsigned long, unsigned long);

/* Where the function calls ftrace: set by the callback, the same each time */
static unsigned long traced_ip;

/* Instead of the function, for an armed call: sleep, then run it. */
static unsigned long stall_call(unsigned long a1, unsigned long a2,
				unsigned long a3, unsigned long a4,
				unsigned long a5, unsigned long a6)
{
	char sym[KSYM_SYMBOL_LEN], *plus, *slash;
	unsigned long off;
	func_t start;

	WRITE_ONCE(stalling, 1);
	msleep(READ_ONCE(delay_ms));
	WRITE_ONCE(stalling, 0);
	/*
	 * The function's start is its fentry call, or the ENDBR before it
	 * when IBT is on: back by the call's offset in the symbol.
	 */
	sprint_symbol(sym, READ_ONCE(traced_ip));	/* "f+0x4/0x90 [m]" */
	plus = strchr(sym, '+');
	slash = plus ? strchr(plus, '/') : NULL;
	if (slash)
		*slash = '\0';
	if (WARN_ON(!slash || kstrtoul(plus + 1, 0, &off)))
		off = 0;
	start = (func_t)(READ_ONCE(traced_ip) - off);
	return start(a1, a2, a3, a4, a5, a6);
}

static void stall(unsigned long ip, unsigned long parent_ip,
		  struct ftrace_ops *op, struct ftrace_regs *fregs)
{
	struct pt_regs *regs = ftrace_get_regs(fregs);
	unsigned long flags;
	bool go = false;

	/* stall_call()'s own call of the function runs it */
	if (!regs || within_module(parent_ip, THIS_MODULE))
		return;
	spin_lock_irqsave(&stall_lock, flags);
	if (count > 0) {
		count--;
		stalled++;
		go = true;
	}
	spin_unlock_irqrestore(&stall_lock, flags);
	if (go) {
		WRITE_ONCE(traced_ip, ip);
		regs->ip = (unsigned long)stall_call;
	}
}

static struct ftrace_ops stall_ops = {
	.func = stall,
	.flags = FTRACE_OPS_FL_SAVE_REGS | FTRACE_OPS_FL_IPMODIFY |
		 FTRACE_OPS_FL_RECURSION,
};

static int __init stream_delay_init(void)
{
	int r;

	r = ftrace_set_filter(&stall_ops, func, strlen(func), 0);
	if (r) {
		pr_err("cannot trace %s: %d\n", func, r);
		return r;
	}
	r = register_ftrace_function(&stall_ops);
	if (r) {
		pr_err("cannot register for %s: %d\n", func, r);
		ftrace_free_filter(&stall_ops);
		return r;
	}
	pr_info("stalling calls of %s on demand\n", func);
	return 0;
}

/* Unload only once nothing can be in stall_call(): after the target is gone. */
static void __exit stream_delay_exit(void)
{
	unregister_ftrace_function(&stall_ops);
	ftrace_free_filter(&stall_ops);
}

module_init(stream_delay_init);
module_exit(stream_delay_exit);
MODULE_DESCRIPTION("dm-stream tests: stall a function to hold a race open");
MODULE_LICENSE("GPL");
