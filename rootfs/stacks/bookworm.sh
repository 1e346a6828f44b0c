# shellcheck shell=bash
# Stack "bookworm": Debian 12 minbase from debootstrap plus language runtimes.
# The package mirror comes from the machine's own apt configuration (debian_mirror).
# Sourced by rootfs/build-stack, which provides log, die, ensure_packages and friends.

BOOKWORM_SUITE=bookworm
BOOKWORM_VARIANT=minbase
# Installed on top of minbase with apt (no recommends).
# postgresql-client and redis-tools: apps run `psql` and `redis-cli` against their add-ons
# (a release phase's migration), as on Heroku's stacks.
BOOKWORM_PACKAGES=(bash ca-certificates curl git netbase python3 python3-pip python3-venv nodejs npm
	postgresql-client redis-tools)
# Bump to throw away the cached rootfs tarball and download again (e.g. for point releases).
BOOKWORM_REVISION=1

stack_prereqs() { echo debootstrap debian-archive-keyring zstd; }

# The downloaded rootfs is cached under this key: suite, variant, arch, package list.
bookworm_cache_key() {
	{
		printf 'suite=%s variant=%s arch=%s revision=%s\n' \
			"$BOOKWORM_SUITE" "$BOOKWORM_VARIANT" "$(host_arch)" "$BOOKWORM_REVISION"
		printf '%s\n' "${BOOKWORM_PACKAGES[@]}" | LC_ALL=C sort -u
	} | sha256sum | cut -c1-16
}

bookworm_tarball() {
	printf '%s/stacks/%s-%s-%s.tar.zst\n' \
		"$CACHE_DIR" "$BOOKWORM_SUITE" "$(host_arch)" "$(bookworm_cache_key)"
}

# Certificate authorities the operator added on the host (/usr/local/share/ca-certificates,
# e.g. a company's TLS-inspecting proxy) are trusted by the stack too, so that builds and
# dynos reach package registries the way the host does. They are part of the stack's key.
host_local_cas() { find /usr/local/share/ca-certificates -type f -name '*.crt' 2>/dev/null | sort; }

stack_key_inputs() { bookworm_stack_key_inputs; }

bookworm_stack_key_inputs() {
	printf 'rootfs=%s\n' "$(bookworm_cache_key)"
	local ca
	while read -r ca; do
		[[ -n $ca ]] && printf 'ca=%s %s\n' "$(basename "$ca")" "$(sha256sum <"$ca" | cut -d' ' -f1)"
	done < <(host_local_cas)
}

bookworm_trust_host_cas() {
	local root=$1 ca n=0
	while read -r ca; do
		[[ -n $ca ]] || continue
		install -D -m 0644 "$ca" "$root/usr/local/share/ca-certificates/$(basename "$ca")"
		n=$((n + 1))
	done < <(host_local_cas)
	if ((n > 0)); then
		log "trusting $n certificate authorities added on this host"
		chroot "$root" update-ca-certificates >/dev/null
	fi
}

stack_build() { bookworm_stack_build "$@"; }

bookworm_stack_build() {
	local root=$1 tarball
	tarball=$(bookworm_tarball)
	if [[ -f $tarball ]]; then
		log "unpacking cached rootfs $tarball"
		if ! tar -C "$root" --numeric-owner --xattrs --xattrs-include='*' -I zstd -xpf "$tarball"; then
			warn "cached rootfs $tarball is unreadable; removing it and downloading again"
			rm -f "$tarball"
			find "$root" -mindepth 1 -delete
		fi
	fi
	if [[ ! -f $tarball ]]; then
		bookworm_bootstrap "$root"
		bookworm_save "$root" "$tarball"
	fi
	bookworm_trust_host_cas "$root"
	local n
	n=$(find "$root" -xdev -type f -perm /6000 | wc -l)
	log "$n setuid/setgid files, as Debian ships them"
}

bookworm_bootstrap() {
	local root=$1 mirror
	mirror=$(debian_mirror "$BOOKWORM_SUITE")
	log "debootstrap --variant=$BOOKWORM_VARIANT $BOOKWORM_SUITE from $mirror (apt configuration)"
	debootstrap --variant="$BOOKWORM_VARIANT" --arch="$(host_arch)" \
		"$BOOKWORM_SUITE" "$root" "$mirror"

	# Stays in the stack: packages added later skip docs too.
	cat >"$root/etc/dpkg/dpkg.cfg.d/manifold-slim" <<'EOF'
# Manifold stack: no documentation beyond copyright files, no message translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF

	bookworm_apt_install "$root" "${BOOKWORM_PACKAGES[@]}"
}

# bookworm_apt_install ROOT PKG...: install packages into a bookworm root (no recommends, no
# daemons started) and strip what a stack does not keep. Also used by the services stack.
bookworm_apt_install() {
	local root=$1
	shift
	log "apt-get install $*"
	printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
	chmod 0755 "$root/usr/sbin/policy-rc.d"
	# A cached rootfs has no resolv.conf (debootstrap's copy was removed).
	rm -f "$root/etc/resolv.conf"
	cp -L /etc/resolv.conf "$root/etc/resolv.conf"
	mount -t proc proc "$root/proc"
	in_chroot "$root" apt-get update -q
	in_chroot "$root" apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "$@"
	in_chroot "$root" apt-get clean
	umount "$root/proc"
	rm -f "$root/usr/sbin/policy-rc.d"

	log "cleaning apt lists, logs, docs and translations"
	rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
		"$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
		"$root"/var/log/apt/* "$root"/var/log/*.log \
		"$root"/usr/share/man/* "$root"/usr/share/info/* "$root/root/.npm"
	mkdir -p "$root/var/lib/apt/lists/partial"
	find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
	find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
	find "$root/usr/share/locale" -mindepth 1 ! -type d ! -name locale.alias -delete
	find "$root/usr/share/locale" -mindepth 1 -type d -empty -delete
	# Copied from the host by debootstrap; finish_stack leaves empty placeholders.
	rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
}

# bookworm_save ROOT TARBALL: cache ROOT as TARBALL, removing older tarballs of the same
# name before the key (bookworm-ARCH-*, services-ARCH-*).
bookworm_save() {
	local root=$1 tarball=$2 old prefix
	prefix=${tarball%-*.tar.zst}
	mkdir -p "$(dirname "$tarball")"
	log "caching rootfs as $tarball"
	CACHE_TMP=$(mktemp "$tarball.XXXXXX")
	tar -C "$root" --numeric-owner --xattrs --xattrs-include='*' --one-file-system \
		-I 'zstd -T0 -10' -cf "$CACHE_TMP" .
	mv -f "$CACHE_TMP" "$tarball"
	CACHE_TMP=""
	for old in "$prefix-"*.tar.zst; do
		[[ $old == "$tarball" || ! -f $old ]] && continue
		log "removing outdated cache $old"
		rm -f "$old"
	done
}
