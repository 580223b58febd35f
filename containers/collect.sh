#!/bin/sh
# Copy programs and the shared libraries `ldd` names for them into the tree OUT (e.g. /out), at the same paths,
# so a `FROM scratch` stage can run them: `collect.sh /out /usr/bin/redis-server /usr/bin/redis-cli`.
set -eu
out="$1"
shift
mkdir -p "$out/usr/local/bin"
for program in "$@"; do
    copy="$out/usr/local/bin/$(basename "$program")"
    install -m 0755 "$program" "$copy"  # out of a wheel it may have lost its mode bits
    # Lines read "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)";
    # a static program has none.
    ldd "$copy" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
        cp -L --parents "$lib" "$out/"
    done
done
