# shellcheck shell=bash
# The app's own build steps, as Heroku's Python buildpack runs them: `bin/pre_compile` before
# the dependencies are installed and `bin/post_compile` after collectstatic, each from the
# build directory with the config vars set (and, for post_compile, the venv first on PATH).

# hooks::run NAME: runs bin/NAME if the app has it; its failure fails the build.
hooks::run() {
  local script=bin/$1
  [[ -f $script ]] || return 0
  puts_step "Running $script hook"
  chmod +x "$script"
  if ! "./$script" 2>&1 | indent; then
    puts_error <<EOF
Error: Failed to run the $script script.

We found a '$script' script in your app source, so ran
it to allow for customisation of the build process.

However, this script exited with a non-zero exit status.

Fix any errors output by your script above, or remove/rename
the script to prevent it from being run during the build.
EOF
    exit 1
  fi
}
