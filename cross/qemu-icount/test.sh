#!/usr/bin/env bash
# Checks the icount plugin counts exactly: a static ARM program spins a two-instruction loop
# N times (inline assembly, so the compiler cannot change it); the counts for two values of N
# with the same number of digits must differ by exactly 2 x their difference, on aarch64 and
# armv7. Also: a bad plugin argument must stop qemu. Usage: test.sh PLUGIN.so
set -euo pipefail
plugin=$(realpath "$1")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/loop.c" <<'C'
#include <stdlib.h>
int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], 0, 10) : 1;
    __asm__ volatile("1: subs %0, %0, #1\n\tbne 1b" : "+r"(n) : : "cc");
    return 0;
}
C
count() {  # qemu program N -> instructions
    "$1" -plugin "$plugin,out=$work/count" "$2" "$3"
    grep -qx "vcpus 1" "$work/count" || { echo "FAIL: expected one guest thread" >&2; exit 1; }
    sed -n 's/^insns //p' "$work/count"
}
for t in "aarch64 aarch64-linux-gnu-gcc qemu-aarch64" "armv7 arm-linux-gnueabihf-gcc qemu-arm"; do
    set -- $t
    "$2" -O1 -static -o "$work/loop-$1" "$work/loop.c"
    small=$(count "$3" "$work/loop-$1" 100000)
    large=$(count "$3" "$work/loop-$1" 300000)
    if [ $((large - small)) -ne 400000 ]; then
        echo "FAIL $1: counts $small and $large differ by $((large - small)), not 400000" >&2
        exit 1
    fi
    echo "icount $1: $small and $large instructions, difference exactly 2 x 200000"
done
if qemu-aarch64 -plugin "$plugin,bogus=1" "$work/loop-aarch64" 1 2>/dev/null; then
    echo "FAIL: qemu ran with a bad plugin argument" >&2
    exit 1
fi
echo "icount: ok"
