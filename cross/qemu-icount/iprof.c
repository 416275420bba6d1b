/*
 * iprof: a qemu-user TCG plugin that counts how often each translated block of guest code
 * runs, with the function symbol it starts in (the program's own symbol table as qemu loaded
 * it, so the program must not be stripped; inlined code counts for its caller). Used by
 * bench/arm_profile.py (make profile-arm) to say where the guest instructions of
 * bench/arm_bench.py go.
 *
 *   qemu-aarch64 -plugin libiprof.so,out=FILE PROGRAM ARGS...
 *
 * FILE then holds one line per translated block that ran: "EXECUTIONS INSNS VADDR SYMBOL"
 * (a block translated twice has two lines). Each count is added by inline generated code to
 * the block's own counter, without atomics: exact only while one guest thread runs. Same
 * QEMU 7.2 plugin API (version 1) as icount.c.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
struct qemu_info_t;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 = 0 };

extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
extern struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb,
                                                        size_t idx);
extern const char *qemu_plugin_insn_symbol(const struct qemu_plugin_insn *insn);
extern void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb,
                                                     enum qemu_plugin_op op, void *ptr,
                                                     uint64_t imm);
extern void qemu_plugin_register_vcpu_tb_trans_cb(
    qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb *));
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id,
                                           void (*cb)(qemu_plugin_id_t, void *), void *udata);

EXPORT int qemu_plugin_version = 1;

struct block {
    uint64_t execs;
    uint64_t vaddr;
    uint64_t insns;
    const char *sym;
    struct block *next;
};

static struct block *blocks;
static char *out_path;

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    struct block *b = calloc(1, sizeof *b);
    if (!b) {
        return;
    }
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->insns = qemu_plugin_tb_n_insns(tb);
    b->sym = qemu_plugin_insn_symbol(qemu_plugin_tb_get_insn(tb, 0));
    b->next = blocks;
    blocks = b;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->execs, 1);
}

static void on_guest_exit(qemu_plugin_id_t id, void *udata)
{
    (void)id;
    (void)udata;
    FILE *f = fopen(out_path, "w");
    if (!f) {
        fprintf(stderr, "iprof: cannot write %s\n", out_path);
        return;
    }
    for (struct block *b = blocks; b; b = b->next) {
        if (b->execs) {
            fprintf(f, "%llu %llu %llx %s\n", (unsigned long long)b->execs,
                    (unsigned long long)b->insns, (unsigned long long)b->vaddr,
                    b->sym ? b->sym : "?");
        }
    }
    fclose(f);
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const struct qemu_info_t *info, int argc,
                               char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0 && argv[i][4] != '\0') {
            out_path = strdup(argv[i] + 4);
        } else {
            fprintf(stderr, "iprof: unknown argument '%s' (expected out=FILE)\n", argv[i]);
            return 1;
        }
    }
    if (!out_path) {
        fprintf(stderr, "iprof: missing out=FILE\n");
        return 1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_guest_exit, NULL);
    return 0;
}
