# shellcheck shell=bash
# Stack "testing": a tiny root filesystem for tests that builds in seconds.
# Debian's busybox-static with an applet symlink for each command, plus the host's bash
# and the shared libraries it needs. Enough for buildpacks written in bash; no python.
# Sourced by rootfs/build-stack, which provides log, die, ensure_packages and friends.

stack_prereqs() { echo busybox-static; }

testing_busybox() {
	local found
	found=$(dpkg -L busybox-static | grep -E '^(/usr)?/bin/busybox$')
	printf '%s\n' "${found%%$'\n'*}"
}

# The host binaries copied in (their bytes are part of the key, so a host upgrade
# of bash, libc or busybox-static rebuilds the stack).
testing_inputs() {
	testing_busybox
	readlink -f /bin/bash
	testing_libs
}

# bash's shared libraries, plus libgcc_s: Rust programs (the slugbuilder run in a build dyno)
# need it for unwinding, and it is the only library they use beyond bash's.
testing_libs() {
	ldd /bin/bash | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
	readlink -f "$(gcc_s_path)"
}

gcc_s_path() {
	local p
	for p in /lib/x86_64-linux-gnu/libgcc_s.so.1 /usr/lib/x86_64-linux-gnu/libgcc_s.so.1 \
		/lib/aarch64-linux-gnu/libgcc_s.so.1 /usr/lib/aarch64-linux-gnu/libgcc_s.so.1; do
		[[ -e $p ]] && { echo "$p"; return; }
	done
	die "libgcc_s.so.1 not found on the host"
}

stack_key_inputs() {
	local f
	for f in $(testing_inputs); do
		sha256sum "$f"
	done
}

stack_build() {
	local root=$1 busybox applet dir name lib

	log "layout (merged /usr)"
	install -d -m 0755 "$root"/usr/{bin,sbin,lib,lib64,local/bin,local/sbin,share} \
		"$root"/{etc,home,root,var/lib,var/log,var/cache,var/spool}
	chmod 0700 "$root/root"
	ln -s usr/bin "$root/bin"
	ln -s usr/sbin "$root/sbin"
	ln -s usr/lib "$root/lib"
	ln -s usr/lib64 "$root/lib64"
	ln -s ../run "$root/var/run"

	busybox=$(testing_busybox) || die "busybox-static does not ship /bin/busybox"
	ldd "$busybox" >/dev/null 2>&1 && die "$busybox is not statically linked"
	log "busybox from $busybox ($(dpkg-query -W -f '${Version}' busybox-static))"
	install -m 0755 "$busybox" "$root/usr/bin/busybox"
	local count=0
	while read -r applet; do
		name=${applet##*/}
		case $applet in
		bin/* | usr/bin/*) dir=usr/bin target=busybox ;;
		sbin/* | usr/sbin/*) dir=usr/sbin target=../bin/busybox ;;
		linuxrc) continue ;; # initrd init; a dyno's init is the agent's
		*) die "unexpected applet path $applet" ;;
		esac
		[[ $name == busybox ]] && continue
		[[ -e $root/$dir/$name || -L $root/$dir/$name ]] && continue
		ln -s "$target" "$root/$dir/$name"
		count=$((count + 1))
	done < <("$root/usr/bin/busybox" --list-full)
	log "$count busybox applet links"

	log "bash $(dpkg-query -W -f '${Version}' bash) and its libraries"
	rm -f "$root/usr/bin/bash"
	install -m 0755 "$(readlink -f /bin/bash)" "$root/usr/bin/bash"
	ldd /bin/bash | grep -q 'not found' && die "bash has unresolved libraries"
	for lib in $(ldd /bin/bash | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }') "$(gcc_s_path)"; do
		# The stack's lib -> usr/lib and lib64 -> usr/lib64 links place these under /usr.
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
		chmod 0755 "$root$lib"
	done

	log "etc"
	cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/bash
dyno:x:1000:1000:Manifold dyno:/app:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
	cat >"$root/etc/group" <<'EOF'
root:x:0:
dyno:x:1000:
nogroup:x:65534:
EOF
	install -m 0600 /dev/null "$root/etc/shadow"
	printf '%s\n' 'root:*:::::::' 'dyno:!:::::::' 'nobody:*:::::::' >"$root/etc/shadow"
	cat >"$root/etc/os-release" <<EOF
PRETTY_NAME="Manifold testing stack (busybox $(dpkg-query -W -f '${Version}' busybox-static), bash)"
NAME="Manifold"
ID=manifold
VARIANT="testing stack"
VARIANT_ID=testing
EOF
	printf 'export PATH=%s\n' "$STACK_PATH" >"$root/etc/profile"
	printf '/bin/sh\n/bin/bash\n/bin/ash\n' >"$root/etc/shells"

	# Everything root-owned, nothing setuid: busybox must not grant privileges here.
	chown -R 0:0 "$root"
	find "$root" -type f -perm /6000 -exec chmod ug-s {} +
}
