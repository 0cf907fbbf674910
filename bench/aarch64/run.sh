#!/bin/sh
# edgegemma's kernel tests and a reference-text check on aarch64, under qemu-user emulation (issue 25).
#
#   sudo nice -n 19 bench/aarch64/run.sh            # build the arm64 root once (cached), then run everything
#   bench/aarch64/run.sh build                      # only build the root
#   bench/aarch64/run.sh tests [pytest args]        # only the kernel tests
#   bench/aarch64/run.sh embed [texts]              # only numba vs numpy on reference texts (default 12)
#   bench/aarch64/run.sh threads                    # which Numba threading layer, all cores, concurrent launches
#
# Needs root (debootstrap, chroot, mounts) and `apt-get install qemu-user-static debootstrap binfmt-support`.
# The root is a Debian arm64 system with Python, numpy, numba, sentencepiece and gguf from PyPI, cached in
# $EDGEGEMMA_ARM_CACHE (default ~/.cache/edgegemma/aarch64); the repository is copied in at every run (the working
# tree, uncommitted changes included) and installed there. The model file and the reference embeddings come from
# EDGEGEMMA_ARM_GGUF (default: $EDGEGEMMA_HOME/bench-gguf/q4_0.gguf, made by `python -m bench.run` or
# `edgegemma convert`) and EDGEGEMMA_REFERENCE (default ../shared/reference); without them `embed` is skipped.
# Environment passed into the root: NUMBA_THREADING_LAYER, NUMBA_NUM_THREADS (default 2).
#
# Threads on a board without libgomp (this root has none, as a minimal Raspberry Pi OS): Numba's omp layer needs the
# system's libgomp.so.1 (its wheel does not bundle it) and PyPI has no tbb wheel for aarch64, so Numba takes the
# workqueue layer, which does run on every core (NUMBA_NUM_THREADS defaults to the core count) but aborts the process
# when two Python threads launch parallel kernels at once (edgegemma's server runs the model on one thread: fine; a
# program encoding from several threads is not). `apt install libgomp1` gives the omp layer, which allows that.
set -eu

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${EDGEGEMMA_ARM_CACHE:-$HOME/.cache/edgegemma/aarch64}
SUITE=${EDGEGEMMA_ARM_SUITE:-bookworm}  # Python 3.11, as the x86 environment
MIRROR=${EDGEGEMMA_ARM_MIRROR:-http://deb.debian.org/debian}
ROOT=$CACHE/root-$SUITE
# The x86 environment's versions, so that a difference is the architecture's.
PACKAGES="numpy==2.4.6 numba==0.68.1 sentencepiece==0.2.3 gguf==0.19.0 tqdm safetensors pytest setuptools>=68 wheel"
HOME_EG=${EDGEGEMMA_HOME:-$HOME/.cache/edgegemma}
GGUF=${EDGEGEMMA_ARM_GGUF:-$HOME_EG/bench-gguf/q4_0.gguf}
REFERENCE=${EDGEGEMMA_REFERENCE:-$REPO/../shared/reference}

die() { echo "bench/aarch64/run.sh: $*" >&2; exit 1; }

need_tools() {
    [ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot and bind mounts)"
    for tool in debootstrap chroot qemu-aarch64-static; do
        command -v $tool >/dev/null || die "no $tool: apt-get install qemu-user-static debootstrap binfmt-support"
    done
    # The kernel runs arm64 binaries through qemu only once binfmt_misc knows it (in a container: mount it first).
    if [ "$(uname -m)" != aarch64 ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
            || die "cannot mount binfmt_misc"
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
        [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || die "qemu-aarch64 is not registered with binfmt_misc (update-binfmts --enable qemu-aarch64)"
    fi
}

build() {
    [ -e "$ROOT/.complete" ] && return 0
    echo "building the arm64 root in $ROOT (once; minutes under emulation) ..." >&2
    mkdir -p "$CACHE"
    if [ ! -e "$ROOT.partial/.debootstrapped" ]; then  # the long step (~20 min): kept if a later one fails
        rm -rf "$ROOT.partial"
        # No libgomp: as on a Raspberry Pi OS Lite image without it, Numba has to find another threading layer.
        debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
            "$SUITE" "$ROOT.partial" "$MIRROR"
        touch "$ROOT.partial/.debootstrapped"
    fi
    cp /etc/resolv.conf "$ROOT.partial/etc/resolv.conf"
    # The host's trust store, so that pip inside reaches PyPI through whatever TLS proxy the host trusts.
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT.partial/etc/host-ca-certificates.crt"
    [ -x "$ROOT.partial/opt/venv/bin/python" ] || chroot "$ROOT.partial" /usr/bin/python3 -m venv /opt/venv
    chroot "$ROOT.partial" /usr/bin/env -i HOME=/root PATH=/usr/bin:/bin LANG=C.UTF-8 \
        ${HTTPS_PROXY:+HTTPS_PROXY=$HTTPS_PROXY} ${https_proxy:+https_proxy=$https_proxy} \
        /opt/venv/bin/pip install --no-cache-dir --cert /etc/host-ca-certificates.crt --only-binary=:all: \
        --disable-pip-version-check $PACKAGES
    touch "$ROOT.partial/.complete"
    mv "$ROOT.partial" "$ROOT"
}

mounted=""
mount_all() {
    for d in proc dev sys; do
        mkdir -p "$ROOT/$d"
        case $d in proc) mount -t proc proc "$ROOT/proc" ;; *) mount --rbind "/$d" "$ROOT/$d" ;; esac
        mounted="$ROOT/$d $mounted"
    done
    rm -rf "$ROOT/data" && mkdir -p "$ROOT/data"
    if [ -f "$GGUF" ] && [ -d "$REFERENCE" ]; then
        cp "$GGUF" "$ROOT/data/model.gguf"
        mkdir -p "$ROOT/data/reference" && mount --bind "$REFERENCE" "$ROOT/data/reference"
        mounted="$ROOT/data/reference $mounted"
    fi
}
unmount_all() { for m in $mounted; do umount -l "$m" 2>/dev/null || true; done; mounted=""; }
trap unmount_all EXIT INT TERM

install_repo() {
    # The working tree as it is (tracked and untracked files, not ignored ones), installed into the root's venv.
    rm -rf "$ROOT/src" && mkdir -p "$ROOT/src"
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - 2>/dev/null) | tar -xf - -C "$ROOT/src"
    # Editable, as in the x86 checkout: the tests import the repository's folders from /src, where kernels/ is not
    # inside edgegemma/ (setuptools' package-dir mapping, which the editable finder provides).
    chroot "$ROOT" /opt/venv/bin/pip install --quiet --no-deps --no-build-isolation --no-index -e /src >/dev/null
}

in_root() {
    chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/opt/venv/bin:/usr/bin:/bin LANG=C.UTF-8 \
        NUMBA_NUM_THREADS="${NUMBA_NUM_THREADS:-2}" ${NUMBA_THREADING_LAYER:+NUMBA_THREADING_LAYER=$NUMBA_THREADING_LAYER} \
        NUMBA_CACHE_DIR=/root/numba-cache "$@"
}

run_tests() {
    echo "== kernel tests (tests/test_kernels.py) under aarch64 emulation" >&2
    start=$(date +%s)
    in_root sh -c 'cd /src && python -m pytest -q -p no:cacheprovider tests/test_kernels.py "$@"' pytest "$@" || status=1
    echo "kernel tests: $(( $(date +%s) - start )) s" >&2
}

run_embed() {
    if [ ! -f "$ROOT/data/model.gguf" ]; then
        echo "embed check skipped: no $GGUF or no $REFERENCE (set EDGEGEMMA_ARM_GGUF, EDGEGEMMA_REFERENCE)" >&2
        return 0
    fi
    echo "== numba vs numpy on reference texts under aarch64 emulation" >&2
    start=$(date +%s)
    in_root python /src/bench/aarch64/embed_check.py /data/model.gguf /data/reference "${1:-12}" || status=1
    echo "embed check: $(( $(date +%s) - start )) s" >&2
}

need_tools
build
status=0
what=${1:-all}
[ $# -gt 0 ] && shift
case $what in
    build) ;;
    tests) mount_all; install_repo; run_tests "$@" ;;
    embed) mount_all; install_repo; run_embed "$@" ;;
    threads) mount_all; install_repo; in_root python /src/bench/aarch64/threads_check.py ;;
    all) mount_all; install_repo; run_tests; run_embed; in_root python /src/bench/aarch64/threads_check.py ;;
    *) die "unknown step '$what' (build, tests, embed, threads, all)" ;;
esac
exit $status
