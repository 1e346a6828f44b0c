# shellcheck shell=bash
# Which Python the app asks for, and which of the stack's Pythons builds it.
#
# Heroku downloads the exact Python an app requests. Manifold builds on the stack the dynos
# run on and installs no interpreter, so it picks among the Pythons on the stack's PATH
# (`python3` and any `python3.N`): the requested major version (3.N) if the stack has it,
# else the stack's default `python3` with a warning that says what was asked for, what exists
# and what happens. Requests are read as Heroku reads them, in its order: runtime.txt
# (`python-3.N[.N]`), .python-version (`3.N[.N]`, `#` comments), then Pipfile.lock's
# `python_full_version` / `python_version` for Pipenv apps.

PYTHON_VERSION_RE='[0-9]+\.[0-9]+(\.[0-9]+)?'

# Lines of FILE without comments, blank lines or surrounding whitespace.
python_version::trimmed_lines() {
  sed -e 's/#.*//' -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' "$1" | grep -v '^$' || true
}

python_version::version_file_help() {
  cat <<EOF
However, the Python version must be specified as either:
1. The major version only, for example: 3.11 (recommended)
2. An exact patch version, for example: 3.11.9

Don't include quotes, a 'python-' prefix or wildcards. Any
code comments must be on a separate line prefixed with '#'.
EOF
}

# python_version::requested BUILD_DIR PACKAGE_MANAGER: prints "VERSION ORIGIN", or nothing
# when the app names no version. Exits 1 with Heroku's explanation on a malformed file.
python_version::requested() {
  local build_dir=$1 package_manager=$2 contents versions
  if [[ -f $build_dir/runtime.txt ]]; then
    contents=$(python_version::trimmed_lines "$build_dir/runtime.txt")
    if [[ $contents =~ ^python-($PYTHON_VERSION_RE)$ ]]; then
      echo "${BASH_REMATCH[1]} runtime.txt"
      return 0
    fi
    puts_error <<EOF
Error: Invalid Python version in runtime.txt.

The Python version specified in your runtime.txt file isn't
in the correct format: it must be 'python-' followed by the
version, for example: python-3.11

However, the runtime.txt file is deprecated since it has been
replaced by the more widely supported .python-version file,
which contains only the version, for example: 3.11
EOF
    exit 1
  fi
  if [[ -f $build_dir/.python-version ]]; then
    mapfile -t versions < <(python_version::trimmed_lines "$build_dir/.python-version")
    case ${#versions[@]} in
      0)
        puts_error <<EOF
Error: No Python version found in .python-version.

No Python version was found in your .python-version file.

Update the file so that it contains your app's major Python
version number, for example: 3.11
EOF
        exit 1
        ;;
      1)
        local found=${versions[0]}
        if [[ $found =~ ^$PYTHON_VERSION_RE$ ]]; then
          echo "$found .python-version"
          return 0
        fi
        puts_error <<EOF
Error: Invalid Python version in .python-version.

The Python version specified in your .python-version file
isn't in the correct format.

The following version was found:
${found//[^[:print:][:blank:]]/?}

$(python_version::version_file_help)
EOF
        exit 1
        ;;
      *)
        puts_error <<EOF
Error: Multiple Python versions found in .python-version.

Multiple versions were found in your .python-version file:

$(printf '%s\n' "${versions[@]}")

Update the file so it contains only one Python version.
EOF
        exit 1
        ;;
    esac
  fi
  if [[ $package_manager == pipenv ]]; then
    local from_lock
    from_lock=$(python3 - "$build_dir/Pipfile.lock" <<'PY'
import json, sys
try:
    requires = json.load(open(sys.argv[1])).get("_meta", {}).get("requires", {})
except (OSError, ValueError):
    requires = {}
print(requires.get("python_full_version") or requires.get("python_version") or "")
PY
    )
    if [[ $from_lock =~ ^$PYTHON_VERSION_RE$ ]]; then
      echo "$from_lock Pipfile.lock"
    fi
  fi
}

# The Pythons on PATH as "VERSION PATH" lines: `python3` (the stack's default) first, then
# each `python3.N` that runs and is not the same version.
python_version::available() {
  local candidates=() dirs dir exe version seen=" "
  if exe=$(command -v python3); then
    candidates+=("$exe")
  fi
  IFS=: read -ra dirs <<<"$PATH"
  for dir in "${dirs[@]}"; do
    for exe in "$dir"/python3.[0-9] "$dir"/python3.[0-9][0-9]; do
      [[ -x $exe && ! -d $exe ]] && candidates+=("$exe")
    done
  done
  # Asked from / and answered with sys.executable: a version manager's shim (pyenv) picks
  # its Python from the working directory's .python-version, so the build uses the
  # interpreter itself, which is also what the venv's bin/python should point at.
  for exe in "${candidates[@]}"; do
    read -r version exe < <(cd / && "$exe" -c \
      'import platform, sys; print(platform.python_version(), sys.executable)' 2>/dev/null) || continue
    [[ -n $exe && $seen != *" $version "* ]] || continue
    seen+="$version "
    echo "$version $exe"
  done
}

# python_version::select BUILD_DIR PACKAGE_MANAGER: sets PYTHON (the interpreter's path) and
# PYTHON_VERSION, logging the choice as Heroku does and warning when the request cannot be
# met.
# shellcheck disable=SC2034 # PYTHON and PYTHON_VERSION are bin/compile's.
python_version::select() {
  local request requested origin available version exe
  # A malformed version file ends the build (the subshell's `exit 1`), its error on stderr.
  request=$(python_version::requested "$1" "$2") || exit 1
  read -r requested origin <<<"$request"
  available=$(python_version::available)
  if [[ -z $available ]]; then
    puts_error <<<"Error: the stack has no python3 on its PATH ($PATH)."
    exit 1
  fi
  read -r PYTHON_VERSION PYTHON <<<"${available%%$'\n'*}"
  if [[ -z $requested ]]; then
    puts_step "No Python version was specified. Using the stack's default: Python $PYTHON_VERSION"
    return 0
  fi
  puts_step "Using Python $requested specified in $origin"
  # 3.11 asks for any 3.11.x; 3.11.4 for exactly that, or else (with a warning) another 3.11.x.
  local requested_major=$requested
  [[ $requested =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] && requested_major=${requested%.*}
  while read -r version exe; do
    if [[ $version == "$requested" || ${version%.*} == "$requested" ]]; then
      PYTHON_VERSION=$version PYTHON=$exe
      return 0
    fi
  done <<<"$available"
  while read -r version exe; do
    if [[ ${version%.*} == "$requested_major" ]]; then
      PYTHON_VERSION=$version PYTHON=$exe
      puts_warn <<EOF
Warning: Python $requested isn't available on this stack; using $version.

Your app's $origin file asks for the exact version $requested, but
the stack has Python $version of the same $requested_major series, and
Manifold builds with the stack's own Pythons rather than downloading one.

We recommend that you specify only the major version ($requested_major) in $origin,
so that your app uses whichever $requested_major patch release the stack provides.
EOF
      return 0
    fi
  done <<<"$available"
  puts_warn <<EOF
Warning: The requested Python version isn't available on this stack.

Your app's $origin file asks for Python $requested, however, the
stack only has:
$(while read -r version exe; do echo "  Python $version ($exe)"; done <<<"$available")

Manifold builds with the stack's own Pythons rather than downloading
one, so this build continues with the stack's default, Python $PYTHON_VERSION.
If your app needs Python $requested_major, it may fail at build or run time.

To silence this warning, change the version in $origin to ${PYTHON_VERSION%.*}.
EOF
}
