# shellcheck shell=bash
# Which package manager installs the app's dependencies, and running it into the venv.
#
# As Heroku: exactly one of requirements.txt (pip), Pipfile.lock (Pipenv), poetry.lock
# (Poetry) or uv.lock (uv). Manifold also accepts a lone pyproject.toml, whose
# [project].dependencies pip installs. Pipenv, Poetry and uv are installed from the package
# index into their own venvs in the build cache (once per Python version) and run as
# `python -m TOOL`, so a moved cache directory does not break them; they install into the
# app's venv, never into their own.

# package_manager::determine BUILD_DIR: prints pip, pipenv, poetry, uv or pyproject.
package_manager::determine() {
  local build_dir=$1 found=() shown=()
  if [[ -f $build_dir/Pipfile.lock ]]; then
    found+=(pipenv) shown+=("Pipfile.lock (Pipenv)")
  elif [[ -f $build_dir/Pipfile ]]; then
    puts_error <<'EOF'
Error: No 'Pipfile.lock' found!

A 'Pipfile' file was found, however, the associated 'Pipfile.lock'
Pipenv lockfile wasn't. This means your app dependency versions
aren't pinned, which means the package versions used here
might not match those installed in other environments.

Run 'pipenv lock' locally to generate the lockfile, and make sure
that 'Pipfile.lock' isn't listed in '.gitignore' or '.slugignore'.
EOF
    exit 1
  fi
  [[ -f $build_dir/requirements.txt ]] && found+=(pip) shown+=("requirements.txt (pip)")
  [[ -f $build_dir/poetry.lock ]] && found+=(poetry) shown+=("poetry.lock (Poetry)")
  [[ -f $build_dir/uv.lock ]] && found+=(uv) shown+=("uv.lock (uv)")
  case ${#found[@]} in
    1) echo "${found[0]}" ;;
    0)
      if [[ -f $build_dir/pyproject.toml ]]; then
        echo pyproject
        return 0
      fi
      puts_error <<'EOF'
Error: Couldn't find any supported Python package manager files.

A Python app must have either a 'requirements.txt', 'Pipfile.lock',
'poetry.lock' or 'uv.lock' package manager file (or a pyproject.toml)
in the root directory of its source code.
EOF
      exit 1
      ;;
    *)
      puts_error <<EOF
Error: Multiple Python package manager files were found.

Exactly one package manager file should be present in your app's
source code, however, several were found:

$(printf -- "%s\n" "${shown[@]}")

You must decide which package manager you want to use with your
app, and then delete the file(s) and any config from the others.
EOF
      exit 1
      ;;
  esac
}

# The files whose contents decide what gets installed: the venv cache's key.
package_manager::inputs() {
  case $1 in
    pip) echo requirements.txt ;;
    pipenv) echo Pipfile Pipfile.lock ;;
    poetry) echo pyproject.toml poetry.lock ;;
    uv) echo pyproject.toml uv.lock ;;
    pyproject) echo pyproject.toml ;;
  esac
}

# package_manager::tool NAME PYTHON PYTHON_VERSION TOOLS_DIR: makes sure TOOL (pipenv, poetry,
# uv) is installed in its cached venv and sets TOOL_PYTHON to that venv's python.
package_manager::tool() {
  local name=$1 python=$2 version=$3 dir=$4/$1
  TOOL_PYTHON=$dir/venv/bin/python
  if [[ -x $TOOL_PYTHON && $(cat "$dir/python" 2>/dev/null) == "$version $python" ]]; then
    puts_step "Using cached $name $(cat "$dir/version")"
    return 0
  fi
  puts_step "Installing $name"
  rm -rf "$dir"
  mkdir -p "$dir"
  "$python" -m venv "$dir/venv" 2>&1 | indent
  if ! "$TOOL_PYTHON" -m pip install --disable-pip-version-check --no-input --progress-bar off \
    --cache-dir "$4/../pip" "$name" 2>&1 | indent; then
    rm -rf "$dir"
    puts_error <<EOF
Error: Unable to install $name.

In some cases, this happens due to a temporary issue with the
network connection or the package index. Try building again.
EOF
    exit 1
  fi
  "$TOOL_PYTHON" -c "import importlib.metadata as m; print(m.version('$name'))" >"$dir/version"
  echo "$version $python" >"$dir/python"
  echo "Installed $name $(cat "$dir/version")" | indent
}

# package_manager::install MANAGER VENV CACHE PYTHON PYTHON_VERSION: installs the app's
# dependencies into VENV (already created), run from the build directory.
package_manager::install() {
  local manager=$1 venv=$2 cache=$3 python=$4 version=$5
  local pip=("$venv/bin/python" -m pip install --disable-pip-version-check --no-input
    --progress-bar off --cache-dir "$cache/pip")
  case $manager in
    pip)
      puts_step "Installing requirements with pip"
      "${pip[@]}" -r requirements.txt 2>&1 | indent
      ;;
    pyproject)
      puts_step "Installing the dependencies of pyproject.toml with pip"
      local requirements
      requirements=$(mktemp --suffix=-requirements.txt)
      # The app runs from /app; only its declared dependencies are installed, not the app.
      "$python" - >"$requirements" <<'PY'
import sys
try:
    import tomllib
except ImportError:
    sys.exit(" !     pyproject.toml needs python 3.11 or later (tomllib)")
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f).get("project", {})
print("\n".join(project.get("dependencies", [])))
PY
      "${pip[@]}" -r "$requirements" 2>&1 | indent
      rm -f "$requirements"
      ;;
    pipenv)
      package_manager::tool pipenv "$python" "$version" "$cache/tools"
      puts_step "Installing dependencies from Pipfile.lock with pipenv"
      local requirements
      requirements=$(mktemp --suffix=-requirements.txt)
      # `verify` refuses a Pipfile.lock out of date with its Pipfile, as `install --deploy`
      # does on Heroku; the pinned, hashed list then goes to pip like any requirements file.
      (
        export PIPENV_VERBOSITY=-1 PIPENV_IGNORE_VIRTUALENVS=1 PIPENV_CACHE_DIR=$cache/pipenv
        "$TOOL_PYTHON" -m pipenv verify 2>&1 | indent
        "$TOOL_PYTHON" -m pipenv requirements --hash >"$requirements"
      )
      "${pip[@]}" -r "$requirements" 2>&1 | indent
      rm -f "$requirements"
      ;;
    poetry)
      package_manager::tool poetry "$python" "$version" "$cache/tools"
      puts_step "Installing dependencies from poetry.lock with poetry"
      # With VIRTUAL_ENV set and venv creation off, Poetry installs into the app's venv.
      VIRTUAL_ENV=$venv PATH=$venv/bin:$PATH POETRY_VIRTUALENVS_CREATE=false \
        POETRY_CACHE_DIR=$cache/poetry POETRY_NO_INTERACTION=1 \
        "$TOOL_PYTHON" -m poetry sync --only main --no-root 2>&1 | indent
      ;;
    uv)
      package_manager::tool uv "$python" "$version" "$cache/tools"
      puts_step "Installing dependencies from uv.lock with uv"
      # --locked refuses a uv.lock out of date with pyproject.toml; copies, not links into
      # the cache, since the venv leaves in the slug.
      UV_PROJECT_ENVIRONMENT=$venv UV_PYTHON=$venv/bin/python UV_PYTHON_DOWNLOADS=never \
        UV_CACHE_DIR=$cache/uv UV_LINK_MODE=copy UV_NO_PROGRESS=1 \
        "$TOOL_PYTHON" -m uv sync --locked --no-dev --no-install-project 2>&1 | indent
      ;;
  esac
}
