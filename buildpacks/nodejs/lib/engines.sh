# shellcheck shell=bash
# package.json's `engines.node` against the stack's node.
#
# Heroku downloads a node that satisfies `engines.node`. Manifold builds with the stack's own
# node (the one the dynos run), so it checks the range with npm's own semver module: a
# satisfied range is used as is; an unsatisfied one gets a warning saying what was asked for,
# what the stack has and that the build goes on with it.

# engines::read FIELD: package.json's engines.FIELD, or nothing.
engines::read() {
  node -e 'const e = require("./package.json").engines || {}; const v = e[process.argv[1]];
    if (typeof v === "string") console.log(v.trim())' "$1"
}

# engines::satisfies VERSION RANGE: 0 if it does, 1 if not, 2 if semver cannot be found, 3 if
# RANGE is not a semver range.
engines::satisfies() {
  local npm_dir
  npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
  node - "$1" "$2" "$npm_dir" <<'JS'
const [version, range, npmDir] = process.argv.slice(2);
let semver;
for (const from of [[npmDir], [npmDir + "/node_modules"], undefined]) {
  try { semver = require(require.resolve("semver", from && { paths: from })); break; } catch {}
}
if (!semver) process.exit(2);
if (semver.validRange(range) === null) process.exit(3);
process.exit(semver.satisfies(version, range, { includePrerelease: false }) ? 0 : 1);
JS
}

# engines::check_node: logs the request and warns when the stack's node does not meet it.
engines::check_node() {
  local requested version status=0
  requested=$(engines::read node)
  version=$(node --version)
  version=${version#v}
  if [[ -z $requested ]]; then
    puts_step "No Node.js version was specified (engines.node in package.json). Using the stack's node $version"
    return 0
  fi
  puts_step "Resolving node version $requested (engines.node in package.json)"
  engines::satisfies "$version" "$requested" || status=$?
  case $status in
    0) echo "Using node $version from the stack, which satisfies $requested" | indent ;;
    1)
      puts_warn <<EOF
Warning: The requested Node.js version isn't available on this stack.

Your app's package.json asks for node "$requested" (engines.node),
however, the stack only has node $version.

Manifold builds with the stack's own node rather than downloading
one, so this build continues with node $version. If your app needs
$requested, it may fail at build or run time.

To silence this warning, widen engines.node to include $version.
EOF
      ;;
    3)
      puts_warn <<EOF
Warning: Invalid semver requirement "$requested" in engines.node.

It must be a version or range such as 18.x or >=18.
The build continues with the stack's node $version.
EOF
      ;;
    *)
      puts_warn <<<"Warning: cannot check engines.node \"$requested\" (npm's semver module not found); using node $version."
      ;;
  esac
}
