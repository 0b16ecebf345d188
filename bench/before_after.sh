#!/usr/bin/env bash
# bench/bench_llama.py at another commit and at this checkout, alternated, in one session, so that
# a refactor's before and after are ratios measured on the same machine in the same state.
#
#   bash bench/before_after.sh REF [PASSES] [bench_llama.py flags...]
#   bash bench/before_after.sh 74e5df8 2 --rounds=3
#   bash bench/before_after.sh 74e5df8 3 --precisions= --gen_rounds=3     # generation only
set -euo pipefail
ref=${1:?give the commit to compare against}; passes=${2:-2}; shift $(( $# >= 2 ? 2 : 1 ))
here=$(cd "$(dirname "$0")/.." && pwd)
before=$(mktemp -d)/before
git -C "$here" worktree add -q --detach "$before" "$ref"
trap 'git -C "$here" worktree remove --force "$before"' EXIT
for i in $(seq "$passes"); do
  echo "=== before ($ref), pass $i"; (cd "$before" && python bench/bench_llama.py "$@")
  echo "=== after (checkout), pass $i"; (cd "$here" && python bench/bench_llama.py "$@")
done
