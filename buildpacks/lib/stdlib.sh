# shellcheck shell=bash
# Helpers shared by the built-in buildpacks, sourced by their bin/compile as
# "$BP_DIR/../lib/stdlib.sh". slugbuilder copies this directory beside each built-in
# buildpack's private copy, so the relative path holds in the repository, in an installed
# share/manifold/buildpacks and inside a build.

# Heroku's build log: steps, indented detail, and warnings/errors in a " !     " gutter.
puts_step() { echo "-----> $*"; }
indent() { sed -u 's/^/       /'; }
# Reads a message on standard input (a heredoc) and prints it in the gutter on stderr.
puts_warn() {
  echo >&2
  sed -u 's/^/ !     /' >&2
  echo >&2
}
puts_error() { puts_warn; }

# Copies a tree with hard links when the cache and the build are on one file system:
# restoring thousands of files then costs milliseconds instead of seconds. Safe because the
# package managers replace files rather than edit them, and every install starts afresh.
copy_tree() { cp -al "$1" "$2" 2>/dev/null || { rm -rf "$2" && cp -a "$1" "$2"; }; }

# export_env ENV_DIR [NAME...]: exports the app's config vars (one file per var) so that
# package managers see them (PIP_INDEX_URL, NPM_CONFIG_*, NODE_OPTIONS, ...). Skipped, as
# Heroku's buildpacks do: the ones that would break the build itself, the extra NAMEs given,
# and every variable the buildpack made readonly before calling this (BUILD_DIR, CACHE_DIR,
# ...), so that a config var cannot redirect the build.
export_env() {
  local env_dir=$1 file name
  shift
  [[ -d $env_dir ]] || return 0
  for file in "$env_dir"/*; do
    [[ -f $file ]] || continue
    name=$(basename "$file")
    [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
    case " PATH GIT_DIR CPATH CPPATH LD_PRELOAD LIBRARY_PATH $* " in
      *" $name "*) continue ;;
    esac
    if [[ $(declare -p "$name" 2>/dev/null) =~ ^declare\ -[a-zA-Z]*r ]]; then
      continue
    fi
    export "$name=$(cat "$file")"
  done
}

# cache_key LINE FILE...: a digest of LINE and the FILEs that exist, for cache validity.
cache_key() {
  local line=$1 file
  shift
  {
    echo "$line"
    for file in "$@"; do
      if [[ -f $file ]]; then
        echo "== $file"
        cat "$file"
      fi
    done
  } | sha256sum | cut -d' ' -f1
}
