# shellcheck shell=bash
# npm, Yarn or pnpm, chosen by the app's lockfile as Heroku chooses: pnpm-lock.yaml → pnpm,
# yarn.lock → Yarn, package-lock.json / npm-shrinkwrap.json (or none) → npm; two kinds of
# lockfile are an error. Yarn and pnpm are installed from the npm registry with the stack's
# npm into the build cache (npm checks each package against the registry's integrity hash),
# in the version package.json's `packageManager` or `engines` names, else Yarn 1 / pnpm 9.
# Corepack is not used: Debian's node (the bookworm stack's) does not ship it.

# package_manager::determine: prints npm, yarn or pnpm.
package_manager::determine() {
  local found=()
  [[ -f pnpm-lock.yaml ]] && found+=(pnpm-lock.yaml)
  [[ -f yarn.lock ]] && found+=(yarn.lock)
  [[ -f package-lock.json ]] && found+=(package-lock.json)
  [[ -f npm-shrinkwrap.json ]] && found+=(npm-shrinkwrap.json)
  if [[ ${#found[@]} -gt 1 && ! (${#found[@]} -eq 2 && -f package-lock.json && -f npm-shrinkwrap.json) ]]; then
    puts_error <<EOF
Error: Multiple lockfiles found.

Your app has more than one kind of lockfile:

$(printf '%s\n' "${found[@]}")

Only one package manager should be used per app, since each may
resolve different versions of your dependencies. Delete the
lockfiles of the package managers you don't use.
EOF
    exit 1
  fi
  case ${found[0]:-} in
    pnpm-lock.yaml) echo pnpm ;;
    yarn.lock) echo yarn ;;
    *) echo npm ;;
  esac
}

# package_manager::requested_version TOOL: the version package.json asks for (packageManager
# `TOOL@VERSION[+hash]`, else engines.TOOL), or the default.
package_manager::requested_version() {
  local tool=$1 field version
  field=$(node -e 'const p = require("./package.json").packageManager; if (typeof p === "string") console.log(p)')
  if [[ $field == "$tool@"* ]]; then
    version=${field#"$tool@"}
    echo "${version%%+*}"
    return 0
  fi
  version=$(engines::read "$tool")
  if [[ -n $version ]]; then
    echo "$version"
    return 0
  fi
  case $tool in
    yarn) echo 1 ;;
    pnpm) echo 9 ;;
  esac
}

# package_manager::install_tool TOOL TOOLS_DIR: installs Yarn or pnpm once per requested
# version into TOOLS_DIR and puts it first on PATH. Yarn 2+ ("berry") is published as
# @yarnpkg/cli-dist, Yarn 1 as yarn.
package_manager::install_tool() {
  local tool=$1 requested package dir
  requested=$(package_manager::requested_version "$tool")
  package=$tool
  [[ $tool == yarn && ! $requested =~ ^[~^]?1([.]|$) ]] && package=@yarnpkg/cli-dist
  dir=$2/$tool-$(echo "$package@$requested" | sha256sum | cut -c1-16)
  if [[ -x $dir/node_modules/.bin/$tool && -f $dir/version ]]; then
    puts_step "Using cached $tool $(cat "$dir/version")"
  else
    puts_step "Installing $tool $requested"
    rm -rf "$dir"
    mkdir -p "$dir"
    if ! npm install --prefix "$dir" --no-save --no-package-lock --no-audit --no-fund \
      --no-update-notifier --prefer-offline --ignore-scripts "$package@$requested" 2>&1 | indent; then
      rm -rf "$dir"
      puts_error <<EOF
Error: Unable to install $tool $requested from the npm registry.

Check the version that package.json names ("packageManager" or
"engines.$tool"), or try building again if the registry was unreachable.
EOF
      exit 1
    fi
    "$dir/node_modules/.bin/$tool" --version >"$dir/version"
  fi
  export PATH="$dir/node_modules/.bin:$PATH"
}

# package_manager::install MANAGER CACHE: installs dependencies, devDependencies included
# (the build may need them; they are pruned afterwards), from the lockfile when there is one.
package_manager::install() {
  local manager=$1 cache=$2
  case $manager in
    npm)
      local flags=(--include=dev --prefer-offline --no-audit --no-fund --no-update-notifier)
      if [[ -f package-lock.json || -f npm-shrinkwrap.json ]]; then
        puts_step "Installing dependencies with npm ci"
        npm ci "${flags[@]}" 2>&1 | indent
      else
        puts_step "Installing dependencies with npm install"
        npm install "${flags[@]}" 2>&1 | indent
      fi
      ;;
    yarn)
      if [[ $(yarn --version) == 1.* ]]; then
        puts_step "Installing dependencies with yarn install --frozen-lockfile"
        yarn install --frozen-lockfile --production=false --non-interactive \
          --cache-folder "$cache/yarn" 2>&1 | indent
      else
        puts_step "Installing dependencies with yarn install --immutable"
        YARN_ENABLE_GLOBAL_CACHE=false YARN_CACHE_FOLDER=$cache/yarn YARN_NODE_LINKER=${YARN_NODE_LINKER:-node-modules} \
          yarn install --immutable 2>&1 | indent
      fi
      ;;
    pnpm)
      puts_step "Installing dependencies with pnpm install --frozen-lockfile"
      # Copies, not hard links into the store: node_modules leaves in the slug.
      pnpm install --frozen-lockfile --prod=false --store-dir "$cache/pnpm-store" \
        --package-import-method copy --config.confirmModulesPurge=false 2>&1 | indent
      ;;
  esac
}

# package_manager::run_script MANAGER NAME: `npm run NAME` (or yarn's, pnpm's).
package_manager::run_script() {
  puts_step "Running $2"
  "$1" run "$2" 2>&1 | indent
}

# package_manager::prune MANAGER CACHE: drops devDependencies, unless the app asked to keep them as
# Heroku lets it (NODE_ENV other than production; NPM_CONFIG_PRODUCTION=false for npm and
# pnpm, YARN_PRODUCTION=false for Yarn).
package_manager::prune() {
  local manager=$1 cache=$2
  puts_step "Pruning devDependencies"
  if [[ $NODE_ENV != production ]]; then
    echo "Skipping because NODE_ENV is not 'production'" | indent
    return 0
  fi
  case $manager in
    npm)
      if [[ ${NPM_CONFIG_PRODUCTION:-} == false ]]; then
        echo "Skipping because NPM_CONFIG_PRODUCTION is 'false'" | indent
        return 0
      fi
      npm prune --omit=dev --no-audit --no-fund --no-update-notifier 2>&1 | indent
      ;;
    yarn)
      if [[ ${YARN_PRODUCTION:-} == false ]]; then
        echo "Skipping because YARN_PRODUCTION is 'false'" | indent
        return 0
      fi
      if [[ $(yarn --version) != 1.* ]]; then
        echo "Skipping because Yarn $(yarn --version) has no prune command" | indent
        return 0
      fi
      yarn install --frozen-lockfile --production=true --ignore-scripts --prefer-offline \
        --non-interactive --cache-folder "$cache/yarn" 2>&1 | indent
      ;;
    pnpm)
      if [[ ${NPM_CONFIG_PRODUCTION:-} == false ]]; then
        echo "Skipping because NPM_CONFIG_PRODUCTION is 'false'" | indent
        return 0
      fi
      pnpm prune --prod --ignore-scripts --config.confirmModulesPurge=false 2>&1 | indent
      ;;
  esac
}
