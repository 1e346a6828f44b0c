# shellcheck shell=bash
# Django's `manage.py collectstatic --noinput`, as Heroku's Python buildpack runs it: for an
# app with a manage.py (the shallowest within three levels) whose venv can import django,
# unless DISABLE_COLLECTSTATIC is set to anything but 0. Without it a Django app using
# whitenoise's manifest storage answers every page with a 500. A failure fails the build.

# collectstatic::run VENV: runs in the build directory with the config vars exported.
collectstatic::run() {
  local python=$1/bin/python manage status
  if [[ ${DISABLE_COLLECTSTATIC:-0} != 0 ]]; then
    puts_step "Skipping Django collectstatic since the env var DISABLE_COLLECTSTATIC is set."
    return 0
  fi
  "$python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("django") is None)' \
    2>/dev/null || return 0
  manage=$(find . -maxdepth 3 -type f -name manage.py -printf '%d\t%P\n' | sort -n | cut -f2 | head -n1)
  if [[ -z $manage ]]; then
    puts_step "Skipping Django collectstatic since no manage.py file found."
    return 0
  fi
  puts_step "\$ python $manage collectstatic --noinput"
  set +e
  PYTHONPATH=${PYTHONPATH:-.} "$python" "$manage" collectstatic --noinput --traceback 2>&1 | indent
  status=${PIPESTATUS[0]}
  set -e
  echo
  [[ $status == 0 ]] && return 0
  puts_error <<EOF
Error: Unable to generate Django static files.

The 'python $manage collectstatic --noinput' Django
management command to generate static files failed.

See the traceback above for details.

You may need to update application code to resolve this error.
Or, you can disable collectstatic for this application:

   \$ manifold config:set DISABLE_COLLECTSTATIC=1 -a APP

https://devcenter.heroku.com/articles/django-assets
EOF
  exit 1
}
