#!/usr/bin/env bash
# The working tree trimmed for a GPU machine, whose copy of the tree (tracked files and untracked,
# not-ignored ones) must stay under 60 MiB: the demo's graphs and weights (about 52 MB of the 104 MB
# tracked) move to a stash inside the git directory, and come back with `restore`. The golden
# fixtures the CUDA tests need stay, and so does the demo's CLIP tokenizer (1.5 MB), which the
# random-weight models of `star-deploy bench --random-weights` read. A trimmed tree skips the demo
# tests (benchmarks/gpu.sh device).
# Usage: benchmarks/device_tree.sh trim|restore|size
set -euo pipefail
cd "$(dirname "$0")/.."
stash="$(git rev-parse --git-path device-stash)"
limit=$((60 * 1024 * 1024))
trimmed=(
    star_deploy/demo/graphs
    star_deploy/demo/weights/star.safetensors
    star_deploy/demo/weights/vae.safetensors
    star_deploy/demo/weights/CLIP/text_encoder
)

tree_bytes() {
    # tracked files moved away are still listed: stat skips them
    { git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null || true; } |
        awk '{s += $1} END {print s + 0}'
}

check_size() {
    local bytes
    bytes="$(tree_bytes)"
    echo "working tree to copy: $((bytes / 1024 / 1024)) MiB (limit $((limit / 1024 / 1024)) MiB)"
    if ((bytes > limit)); then
        echo "too large for the device copy: trim it (benchmarks/device_tree.sh trim) or remove untracked files" >&2
        exit 1
    fi
}

trim() {
    if [[ -e "$stash" ]]; then
        echo "already trimmed ($stash exists): run benchmarks/device_tree.sh restore first" >&2
        exit 1
    fi
    for path in "${trimmed[@]}"; do
        mkdir -p "$stash/$(dirname "$path")"
        mv "$path" "$stash/$path"
    done
    check_size
}

restore() {
    if [[ ! -e "$stash" ]]; then
        echo "nothing to restore: $stash does not exist" >&2
        exit 1
    fi
    for path in "${trimmed[@]}"; do
        if [[ -e "$path" ]]; then
            echo "$path exists again (checked out?): move or delete it, then restore" >&2
            exit 1
        fi
    done
    for path in "${trimmed[@]}"; do
        mv "$stash/$path" "$path"
    done
    rm -rf "$stash"
    git status --short -- "${trimmed[@]}"
}

case "${1:-}" in
    trim) trim ;;
    restore) restore ;;
    size) check_size ;;
    *)
        echo "usage: benchmarks/device_tree.sh trim|restore|size" >&2
        exit 2
        ;;
esac
