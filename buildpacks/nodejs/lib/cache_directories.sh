# shellcheck shell=bash
# package.json's `cacheDirectories` (or `cache_directories`), as Heroku's Node.js buildpack
# keeps them: the listed paths of the app are restored from the build cache before the
# install and saved after the build (before pruning). An app that lists them gets those
# instead of the default node_modules cache. A path must stay inside the app: absolute
# paths and `..` are skipped with a warning, since the cache is copied back into the build.

# cache_directories::list: the listed paths, one a line, that are safe to use.
cache_directories::list() {
  local path
  while IFS= read -r path; do
    if [[ -z $path || $path == /* || /$path/ == */../* || $path == . || $path == ./ ]]; then
      puts_warn <<<"Warning: cacheDirectories entry \"$path\" skipped: it must name a path inside the app."
      continue
    fi
    echo "${path%/}"
  done < <(node -e 'const p = require("./package.json");
    const dirs = p.cacheDirectories || p.cache_directories || [];
    if (Array.isArray(dirs)) for (const d of dirs) if (typeof d === "string") console.log(d)')
}

# cache_directories::restore STORE PATH...: copies each cached path back into the app.
cache_directories::restore() {
  local store=$1 path
  shift
  puts_step "Restoring cache"
  echo "Loading from cacheDirectories (package.json):" | indent
  for path in "$@"; do
    if [[ -e $store/$path && ! -e $path ]]; then
      mkdir -p "$(dirname "$path")"
      copy_tree "$store/$path" "$path"
      echo "- $path" | indent
    else
      echo "- $path (not cached - skipping)" | indent
    fi
  done
}

# cache_directories::save STORE PATH...: replaces the store with the app's paths.
cache_directories::save() {
  local store=$1 path
  shift
  puts_step "Caching build"
  echo "Saving $# cacheDirectories (package.json):" | indent
  rm -rf "$store"
  mkdir -p "$store"
  for path in "$@"; do
    if [[ -e $path ]]; then
      mkdir -p "$store/$(dirname "$path")"
      copy_tree "$path" "$store/$path"
      echo "- $path" | indent
    else
      echo "- $path (nothing to cache)" | indent
    fi
  done
}
