# shellcheck shell=bash
# Stack "services": the bookworm stack plus Debian's PostgreSQL 15 and Redis, for the add-on
# services the agent runs (managed databases with a persistent volume at /data), and the
# entrypoints the agent starts them with (/usr/local/lib/manifold/service-KIND).
# Built on bookworm's cached rootfs tarball (downloaded once for both stacks).
# Sourced by rootfs/build-stack, which provides log, die, ensure_packages and friends.

# shellcheck source=rootfs/stacks/bookworm.sh
source "$ROOTFS_DIR/stacks/bookworm.sh"

SERVICES_PACKAGES=(postgresql-15 redis-server)

# The bookworm definition is part of this stack's key: its packages and revision through
# the rootfs key, its script bytes through this line.
stack_key_inputs() {
	printf 'bookworm-def=%s\n' "$(sha256sum <"$ROOTFS_DIR/stacks/bookworm.sh" | cut -d' ' -f1)"
	printf 'services=%s\n' "${SERVICES_PACKAGES[*]}"
	bookworm_stack_key_inputs
}

stack_build() {
	local root=$1
	bookworm_stack_build "$root"
	# Debian creates a `main` cluster on install; a service's cluster lives on its volume.
	install -d -m 0755 "$root/etc/postgresql-common/createcluster.d"
	printf 'create_main_cluster = false\n' >"$root/etc/postgresql-common/createcluster.d/manifold.conf"
	bookworm_apt_install "$root" "${SERVICES_PACKAGES[@]}"
	rm -rf "$root/var/lib/postgresql/15/main" "$root/etc/postgresql/15/main"
	services_entrypoints "$root"
}

# The entrypoints run as the dyno user (uid 1000) with the volume at /data (owned by it) and
# ADDON_USER, ADDON_PASSWORD, ADDON_DATABASE in the environment. They `exec` the server, so
# the agent's stop (SIGTERM) is the server's own clean shutdown.
services_entrypoints() {
	local dir=$1/usr/local/lib/manifold
	install -d -m 0755 "$dir"
	cat >"$dir/service-postgresql" <<'EOF'
#!/bin/bash
# A managed PostgreSQL: the cluster in /data/pg, created on first boot with a superuser that
# only the local socket may use and the add-on's role and database; port 5432 inside.
set -euo pipefail
: "${ADDON_USER:?ADDON_USER is not set}" "${ADDON_PASSWORD:?ADDON_PASSWORD is not set}"
: "${ADDON_DATABASE:?ADDON_DATABASE is not set}"
bin=/usr/lib/postgresql/15/bin
data=/data/pg
sock=/tmp
if [[ ! -s $data/PG_VERSION ]]; then
	echo "initialising the database cluster"
	rm -rf "$data.init"
	# The superuser's password: random, used once below over the local socket, then
	# forgotten (the remote rules refuse `postgres` whatever its password).
	pwfile=$(mktemp)
	head -c 32 /dev/urandom | base64 | tr -d '/+=\n' >"$pwfile"
	PGPASSWORD=$(cat "$pwfile")
	export PGPASSWORD
	"$bin/initdb" -D "$data.init" -U postgres --pwfile="$pwfile" -A scram-sha-256 \
		--encoding=UTF8 --locale=C.UTF-8 >/dev/null
	rm -f "$pwfile"
	cat >"$data.init/pg_hba.conf" <<'HBA'
# TYPE  DATABASE  USER      ADDRESS      METHOD
local   all       all                    scram-sha-256
host    all       postgres  0.0.0.0/0    reject
host    all       postgres  ::/0         reject
host    all       all       0.0.0.0/0    scram-sha-256
host    all       all       ::/0         scram-sha-256
HBA
	"$bin/pg_ctl" -D "$data.init" -o "-c listen_addresses='' -c unix_socket_directories=$sock" \
		-w start >/dev/null
	# The values reach psql on its input, never its arguments (which `ps` shows). The agent
	# allows no blanks, quotes or backslashes in them.
	"$bin/psql" -v ON_ERROR_STOP=1 -h "$sock" -U postgres -d postgres -q <<SQL
\\set user $ADDON_USER
\\set password $ADDON_PASSWORD
\\set db $ADDON_DATABASE
CREATE ROLE :"user" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"user";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
SQL
	unset PGPASSWORD
	"$bin/pg_ctl" -D "$data.init" -m fast -w stop >/dev/null
	mv "$data.init" "$data"
	echo "created role $ADDON_USER and database $ADDON_DATABASE"
fi
exec "$bin/postgres" -D "$data" -c listen_addresses='*' -c port=5432 \
	-c unix_socket_directories="$sock" -c password_encryption=scram-sha-256
EOF
	cat >"$dir/service-redis" <<'EOF'
#!/bin/bash
# A managed Redis: append-only file in /data, the add-on's password required; port 6379 inside.
set -euo pipefail
: "${ADDON_PASSWORD:?ADDON_PASSWORD is not set}"
conf=/data/redis.conf
# The password goes in a file only the service reads, not on its command line.
umask 077
printf 'requirepass "%s"\n' "$ADDON_PASSWORD" >"$conf.new"
mv "$conf.new" "$conf"
exec redis-server "$conf" --dir /data --port 6379 --bind '* -::*' --protected-mode no \
	--appendonly yes --daemonize no --logfile ''
EOF
	chmod 0755 "$dir/service-postgresql" "$dir/service-redis"
}
