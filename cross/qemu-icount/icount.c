/*
 * icount: a qemu-user TCG plugin that counts the guest instructions a program executes and
 * writes the total to a file when the program exits (the program's own stdout is untouched).
 *
 *   qemu-aarch64 -plugin cross/qemu-icount/libicount.so,out=FILE PROGRAM ARGS...
 *
 * FILE then holds two lines: "insns N" and "vcpus M" (guest threads seen). The count is added
 * inline by generated code at the start of each translated block (its instruction count,
 * taken at translation), so a block left early by an exception is counted whole; that is rare
 * and the same in every run. The counter is one shared integer updated without atomics, so it
 * is exact only while one guest thread runs at a time: the reader must check "vcpus 1".
 *
 * Written against QEMU's public plugin API as of QEMU 7.2 (API version 1). Debian ships no
 * qemu-plugin.h, so the few declarations used are repeated here; their types follow that API.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_info_t;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 = 0 };

/* Provided by the qemu executable (it exports them for plugins). */
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb,
                                                     enum qemu_plugin_op op, void *ptr,
                                                     uint64_t imm);
extern void qemu_plugin_register_vcpu_tb_trans_cb(
    qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb *));
extern void qemu_plugin_register_vcpu_init_cb(qemu_plugin_id_t id,
                                              void (*cb)(qemu_plugin_id_t, unsigned int));
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id,
                                           void (*cb)(qemu_plugin_id_t, void *), void *udata);

/* The loader refuses a plugin that does not say which API version it was written for. */
EXPORT int qemu_plugin_version = 1;

static uint64_t insns;
static unsigned vcpus;  /* written by qemu under its plugin lock */
static char *out_path;

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns,
                                             qemu_plugin_tb_n_insns(tb));
}

static void on_vcpu_init(qemu_plugin_id_t id, unsigned int index)
{
    (void)id;
    (void)index;
    vcpus++;
}

static void on_guest_exit(qemu_plugin_id_t id, void *udata)
{
    (void)id;
    (void)udata;
    FILE *f = fopen(out_path, "w");
    if (!f || fprintf(f, "insns %llu\nvcpus %u\n", (unsigned long long)insns, vcpus) < 0 ||
        fclose(f) != 0) {
        fprintf(stderr, "icount: cannot write %s\n", out_path);
    }
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const struct qemu_info_t *info, int argc,
                               char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0 && argv[i][4] != '\0') {
            out_path = strdup(argv[i] + 4);
        } else {
            fprintf(stderr, "icount: unknown argument '%s' (expected out=FILE)\n", argv[i]);
            return 1;
        }
    }
    if (!out_path) {
        fprintf(stderr, "icount: missing out=FILE\n");
        return 1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_vcpu_init_cb(id, on_vcpu_init);
    qemu_plugin_register_atexit_cb(id, on_guest_exit, NULL);
    return 0;
}
