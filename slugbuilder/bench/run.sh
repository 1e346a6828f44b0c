#!/usr/bin/env bash
# Benchmarks for the slugbuilder (issue 3). Prints medians and ratios:
#   1. build time of each example, cold cache (empty CACHE_DIR: pip/npm download from the
#      registries) and warm cache (the previous build's CACHE_DIR);
#   2. overhead of `slugbuilder build` over doing the same by hand with the same buildpack
#      scripts (cp -a, bin/detect in order, bin/compile, bin/release, then packing), warm
#      cache; packing by hand with `tar | gzip` (what a person would type) and with
#      `slugbuilder pack` (so the difference is the orchestration alone);
#   3. slug packing throughput of `slugbuilder pack` against `tar -c | gzip -6` on one tree.
#
# Usage: slugbuilder/bench/run.sh [RUNS]   (RUNS per measurement, default 5)
# Env: BENCH_TREE=DIR to pack (default: a copy of python3's standard library, without
#      site-packages); SLUGBUILDER=path to a built binary (default: a release build into
#      $CARGO_TARGET_DIR or /tmp/target-slugbuilder).
set -euo pipefail

runs=${1:-5}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
target=${CARGO_TARGET_DIR:-/tmp/target-slugbuilder}
if [[ -z "${SLUGBUILDER:-}" ]]; then
  (cd "$repo" && CARGO_TARGET_DIR=$target cargo build --quiet --release -p manifold-slugbuilder)
  SLUGBUILDER=$target/release/slugbuilder
fi
buildpacks=$repo/buildpacks
work=$(mktemp -d /tmp/slugbuilder-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
export STACK=bookworm

now_ms() { echo $(($(date +%s%N) / 1000000)); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : int((a[NR/2] + a[NR/2+1]) / 2)}'; }

# slugbuilder build, prints its wall time in ms.
sb_build() { # src cache out
  local t0
  t0=$(now_ms)
  "$SLUGBUILDER" build "$1" --out "$3" --cache-dir "$2" --buildpacks-dir "$buildpacks" >/dev/null
  echo $(($(now_ms) - t0))
}

# The same build by hand with the same scripts, prints its wall time in ms.
by_hand() { # src cache out tar|pack
  local t0 build env bp name
  t0=$(now_ms)
  build=$work/hand-build
  env=$work/hand-env
  rm -rf "$build" "$env" "$work/hand-bp"
  mkdir -p "$env" "$build"
  cp -a "$1/." "$build/"
  for name in python nodejs generic; do
    if "$buildpacks/$name/bin/detect" "$build" >/dev/null; then break; fi
  done
  cp -a "$buildpacks/$name" "$work/hand-bp"
  bp=$work/hand-bp
  "$bp/bin/compile" "$build" "$2" "$env" >/dev/null
  "$bp/bin/release" "$build" >/dev/null
  if [[ $4 == tar ]]; then
    # The slug as GNU tar makes it: ./app/...
    mkdir -p "$work/hand-root"
    ln -sfn "$build" "$work/hand-root/app"
    tar -C "$work/hand-root" -chf - ./app | gzip -6 >"$3"
  else
    "$SLUGBUILDER" pack "$build" --out "$3" >/dev/null
  fi
  echo $(($(now_ms) - t0))
}

printf '%-44s %8s\n' "measurement (median of $runs)" "ms"
for example in python-web node-web; do
  src=$repo/examples/$example
  cold=()
  for _ in $(seq "$runs"); do
    rm -rf "$work/cache"
    cold+=("$(sb_build "$src" "$work/cache" "$work/slug.tgz")")
  done
  warm=()
  for _ in $(seq "$runs"); do
    warm+=("$(sb_build "$src" "$work/cache" "$work/slug.tgz")")
  done
  # Interleaved, all with the warm cache, so drift hits them alike.
  sb=()
  hand_tar=()
  hand_pack=()
  for _ in $(seq "$runs"); do
    sb+=("$(sb_build "$src" "$work/cache" "$work/slug.tgz")")
    hand_tar+=("$(by_hand "$src" "$work/cache" "$work/hand.tgz" tar)")
    hand_pack+=("$(by_hand "$src" "$work/cache" "$work/hand.tgz" pack)")
  done
  c=$(printf '%s\n' "${cold[@]}" | median)
  w=$(printf '%s\n' "${warm[@]}" | median)
  s=$(printf '%s\n' "${sb[@]}" | median)
  ht=$(printf '%s\n' "${hand_tar[@]}" | median)
  hp=$(printf '%s\n' "${hand_pack[@]}" | median)
  printf '%-44s %8s\n' "$example build, cold cache" "$c"
  printf '%-44s %8s   (warm/cold %.2f)\n' "$example build, warm cache" "$w" "$(echo "$w / $c" | bc -l)"
  printf '%-44s %8s\n' "$example slugbuilder build (interleaved runs)" "$s"
  printf '%-44s %8s   (slugbuilder %+d ms, %+.1f%%)\n' "$example by hand, tar | gzip" "$ht" \
    "$((s - ht))" "$(echo "($s - $ht) * 100 / $ht" | bc -l)"
  printf '%-44s %8s   (slugbuilder %+d ms, %+.1f%%)\n' "$example by hand, slugbuilder pack" "$hp" \
    "$((s - hp))" "$(echo "($s - $hp) * 100 / $hp" | bc -l)"
done

tree=${BENCH_TREE:-}
if [[ -z "$tree" ]]; then
  stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
  tree=$work/tree
  mkdir -p "$tree"
  tar -C "$stdlib" --exclude=./site-packages -cf - . | tar -C "$tree" -xf -
fi
bytes=$(du -sb --apparent-size "$tree" | cut -f1)
files=$(find "$tree" | wc -l)
mkdir -p "$work/pack-root"
ln -sfn "$tree" "$work/pack-root/app"
tar -C "$work/pack-root" -chf - ./app >/dev/null # warm the page cache
sbp=()
sb1=()
tgz=()
for _ in $(seq "$runs"); do
  t0=$(now_ms)
  "$SLUGBUILDER" pack "$tree" --out "$work/pack.tgz" >/dev/null
  sbp+=($(($(now_ms) - t0)))
  t0=$(now_ms)
  "$SLUGBUILDER" pack "$tree" --out "$work/pack1.tgz" --threads 1 >/dev/null
  sb1+=($(($(now_ms) - t0)))
  t0=$(now_ms)
  tar -C "$work/pack-root" -chf - ./app | gzip -6 >"$work/tar.tgz"
  tgz+=($(($(now_ms) - t0)))
done
p=$(printf '%s\n' "${sbp[@]}" | median)
p1=$(printf '%s\n' "${sb1[@]}" | median)
g=$(printf '%s\n' "${tgz[@]}" | median)
mb=$(echo "$bytes / 1048576" | bc -l)
printf '\npacking %.0f MiB in %s files (%s)\n' "$mb" "$files" "$tree"
printf '%-34s %10s ms  %7.1f MiB/s  %s bytes\n' "slugbuilder pack ($(nproc) cores)" "$p" \
  "$(echo "$mb * 1000 / $p" | bc -l)" "$(stat -c %s "$work/pack.tgz")"
printf '%-34s %10s ms  %7.1f MiB/s  %s bytes\n' "slugbuilder pack --threads 1" "$p1" \
  "$(echo "$mb * 1000 / $p1" | bc -l)" "$(stat -c %s "$work/pack1.tgz")"
printf '%-34s %10s ms  %7.1f MiB/s  %s bytes\n' "tar -c | gzip -6" "$g" \
  "$(echo "$mb * 1000 / $g" | bc -l)" "$(stat -c %s "$work/tar.tgz")"
printf '%-34s %10.2f\n' "speed-up over tar | gzip" "$(echo "$g / $p" | bc -l)"
