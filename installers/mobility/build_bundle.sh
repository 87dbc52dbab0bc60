#!/usr/bin/env bash
# Builds the self-contained mobility bundle: build/godwit-mobility-<version>-linux-x86_64.tar.gz
#
#   sudo bash installers/mobility/build_bundle.sh [--deb]      (from the repository root; --deb: the .deb too)
#
# The bundle runs `godwit mobility run` on Linux source servers that have no Python 3.11 (Debian 11 and later,
# any x86_64 distribution with glibc 2.31 or newer). It holds:
#   - CPython 3.11 compiled from Debian's python3.11 source (the upstream tarball plus Debian's security and bug
#     fixes, not its packaging patches) in a Debian 11 root: built on the oldest glibc we support, it runs on
#     newer ones. Prefix /opt/godwit-mobility; the interpreter and its modules find the libraries they need that a
#     minimal distribution may lack (libssl/libcrypto 1.1, libffi, sqlite, lzma, bz2, zlib, uuid) in the bundle's
#     lib/ through their rpath ($ORIGIN/../lib), so it also runs where no libssl1.1 exists (Debian 12);
#   - the godwit package of this checkout (engine/ only: no console) and only the mobility service's
#     dependencies, pinned exactly as in pyproject.toml;
#   - bin/godwit, a launcher that works wherever the bundle is unpacked or installed;
#   - install.sh, uninstall.sh and share/godwit-mobility/ (the systemd unit and the configuration template).
#
# Downloads are cached in build/cache (Debian roots as tarballs, the Python source, wheels): a rebuild reuses
# them and needs no network. The tarball is written under a temporary name and renamed once complete.
set -Eeuo pipefail
source "$(dirname "$0")/common.sh"

VERSION=$(project_version)
NAME=godwit-mobility-$VERSION
TARBALL=$BUILD/$NAME-linux-x86_64.tar.gz
WORK=$BUILD/mobility-work
LOG=$BUILD/logs/build_bundle.log

# CPython: Debian 12's python3.11 source package (deb.debian.org; python.org is not reachable from every build
# host). The checksums pin the exact files.
PY_ORIG=python3.11_3.11.2.orig.tar.gz
PY_ORIG_SHA256=2411c74bda5bbcfcddaf4531f66d1adc73f247f529aee981b029513aefdbf849
PY_DEBIAN=python3.11_3.11.2-6+deb12u8.debian.tar.xz
PY_DEBIAN_SHA256=ece2d63c70ac0b7a401fbe6b51b0103be997c294a01a3865549be1862794ba97
PY_POOL=$DEBIAN_MIRROR/pool/main/p/python3.11
#: The first of Debian's patches that is a fix rather than packaging (layout, multiarch, Debian's install
#: schemes): it and every patch after it in debian/patches/series are applied (security fixes up to deb12u8).
PY_FIRST_FIX=shutdown-deadlock.diff

BUILD_PACKAGES=libssl-dev,libffi-dev,libsqlite3-dev,liblzma-dev,libbz2-dev,zlib1g-dev,uuid-dev,patchelf,ca-certificates,file
#: What `godwit mobility run` imports (engine/mobility, engine/updater for its own updates, engine/cli):
#: pinned from pyproject.toml. PySide6, qasync, keyring and azure-storage-blob are the console's and appliance's.
MOBILITY_DEPENDENCIES=(aiohttp cryptography zstandard platformdirs xxhash tuf)

with_deb=no
for arg in "$@"; do
  case $arg in
    --deb) with_deb=yes ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "build_bundle.sh: unknown argument $arg (the only option is --deb)" >&2; exit 2 ;;
  esac
done

current_step=""
on_error() {
  local code=$?
  if grep -qi "no space left on device" "$LOG" 2>/dev/null; then
    echo "build_bundle.sh: the disk is full (while: $current_step): free some space under $BUILD and run it again" >&2
  elif grep -q "CERTIFICATE_VERIFY_FAILED" "$LOG" 2>/dev/null; then
    echo "build_bundle.sh: PyPI's certificate is not trusted (while: $current_step): add your proxy's CA to /etc/ssl/certs/ca-certificates.crt (update-ca-certificates)" >&2
  elif grep -qiE "temporary failure in name resolution|could not resolve|connection (refused|timed out)|network is unreachable|Max retries exceeded" "$LOG" 2>/dev/null; then
    echo "build_bundle.sh: the network failed (while: $current_step): check that deb.debian.org and pypi.org are reachable" >&2
  else
    echo "build_bundle.sh: failed while: $current_step (exit $code); the details are in $LOG" >&2
  fi
  exit 1
}
run_step() {
  current_step=$1
  step "$1"
  shift
  "$@" >>"$LOG" 2>&1
}

pin() {  # pin NAME: the requirement of NAME exactly as pyproject.toml writes it
  local line
  line=$(grep -oE "\"$1==[^\"]+\"" "$REPO/pyproject.toml" | tr -d '"') || true
  [ -n "$line" ] || die "pyproject.toml has no exact pin for $1: pin it (name==version) or update MOBILITY_DEPENDENCIES"
  echo "$line"
}

fetch_python_source() {
  mkdir -p "$CACHE"
  local f sum
  for f in "$PY_ORIG:$PY_ORIG_SHA256" "$PY_DEBIAN:$PY_DEBIAN_SHA256"; do
    sum=${f#*:}
    f=${f%%:*}
    if [ ! -s "$CACHE/$f" ] || ! echo "$sum  $CACHE/$f" | sha256sum -c --quiet - 2>/dev/null; then
      require_mirror
      curl -fsS -o "$CACHE/$f.part" "$PY_POOL/${f//+/%2B}"
      mv "$CACHE/$f.part" "$CACHE/$f"
    fi
    echo "$sum  $CACHE/$f" | sha256sum -c --quiet - || die "$f does not match its checksum: delete it from $CACHE"
  done
}

prepare_sources() {
  local root=$1
  mkdir -p "$root/src"
  tar -C "$root/src" -xzf "$CACHE/$PY_ORIG"
  tar -C "$root/src" -xJf "$CACHE/$PY_DEBIAN"
  local p applying=no
  while read -r p; do
    [ "$p" = "$PY_FIRST_FIX" ] && applying=yes
    [ "$applying" = yes ] || continue
    case $p in skip-*) continue ;; esac  # it only skips tests, which the bundle leaves out
    patch -d "$root/src/Python-3.11.2" -p1 -s --forward <"$root/src/debian/patches/$p"
  done <"$root/src/debian/patches/series"
  [ "$applying" = yes ] || die "$PY_FIRST_FIX is not in Debian's patch series any more: update PY_FIRST_FIX"
  # Debian builds pyexpat into the interpreter; its CVE-2026-4224 fix then uses an internal header that a
  # shared module may only include as a core module (as upstream's own backport declares it).
  local expat=$root/src/Python-3.11.2/Modules/pyexpat.c
  if grep -q '^#include "pycore_' "$expat" && ! grep -q Py_BUILD_CORE_MODULE "$expat"; then
    sed -i '1i #ifndef Py_BUILD_CORE_BUILTIN\n#  define Py_BUILD_CORE_MODULE 1\n#endif' "$expat"
  fi
  # The godwit package of this checkout: engine/ and what setuptools needs to build it, nothing else.
  mkdir -p "$root/src/godwit"
  cp "$REPO/pyproject.toml" "$REPO/README.md" "$root/src/godwit/"
  tar -C "$REPO" --exclude=__pycache__ -cf - engine | tar -C "$root/src/godwit" -xf -
}

compile_python() {
  in_root "$1" "
    cd /src/Python-3.11.2
    ./configure --prefix=$PREFIX --without-ensurepip --with-lto=no --disable-test-modules
    make -j$(nproc)
    make install
    $PREFIX/bin/python3.11 -c 'import ssl, sqlite3, ctypes, lzma, bz2, zlib, hashlib, uuid, decimal, _multiprocessing, pyexpat, _elementtree'
  "
}

install_packages() {
  local root=$1 reqs=() d
  for d in "${MOBILITY_DEPENDENCIES[@]}"; do reqs+=("$(pin "$d")"); done
  mkdir -p "$CACHE/wheels"
  # PyPI through this host's trust: its CA bundle (a TLS-inspecting proxy's CA is in it, where there is one)
  # and its proxy settings.
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/host-ca-certificates.crt" 2>/dev/null || true
  local proxy="" v
  for v in https_proxy HTTPS_PROXY http_proxy HTTP_PROXY no_proxy NO_PROXY; do
    [ -n "${!v:-}" ] && proxy+="export $v=$(printf %q "${!v}"); "
  done
  # The first build downloads the wheels (for this interpreter and glibc 2.31) into build/cache/wheels; a
  # rebuild installs from there without the network.
  in_root "$root" "
    $proxy
    [ -s /etc/ssl/certs/host-ca-certificates.crt ] && export PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt
    py=$PREFIX/bin/python3.11
    bootstrap=\$(ls /src/Python-3.11.2/Lib/ensurepip/_bundled/pip-*.whl)
    pip() {
      local whl
      whl=\$(ls /wheels/pip-*.whl 2>/dev/null | sort -V | tail -n 1)
      PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \$py \${whl:-\$bootstrap}/pip \"\$@\"
    }
    offline() { pip install --no-index --find-links /wheels --only-binary :all: --no-compile ${reqs[*]}; }
    # pip resolves everything before it installs anything: a failed offline attempt leaves nothing behind
    if ! ls /wheels/setuptools-*.whl >/dev/null 2>&1 || ! offline; then
      PIP_DISABLE_PIP_VERSION_CHECK=1 \$py \$bootstrap/pip download -d /wheels --no-deps pip
      pip download -d /wheels --only-binary :all: ${reqs[*]} 'setuptools>=68'
      offline
    fi
    pip install --no-index --find-links /wheels --no-deps --no-compile /src/godwit
  " "$CACHE/wheels:/wheels"
}

trim_and_link() {
  local root=$1
  in_root "$root" "
    cd $PREFIX
    lib=lib/python3.11
    rm -rf include share lib/pkgconfig lib/libpython3.11.a \$lib/config-3.11-x86_64-linux-gnu \$lib/test \$lib/idlelib \$lib/tkinter \
      \$lib/turtledemo \$lib/turtle.py \$lib/ensurepip \$lib/lib2to3 \$lib/unittest/test \$lib/ctypes/test \
      \$lib/sqlite3/test \$lib/distutils/tests \$lib/lib-dynload/_test*.so \$lib/lib-dynload/_xxtest*.so \
      \$lib/lib-dynload/xx*.so \$lib/lib-dynload/_ctypes_test*.so \$lib/lib-dynload/*_failed.so \
      \$lib/lib-dynload/nis.*.so \$lib/lib-dynload/ossaudiodev.*.so  # NIS would drag in Kerberos and libtirpc
    find . -depth \( -name __pycache__ -o -name tests -o -name test \) -type d -exec rm -rf {} +
    # bin/: the interpreter and the launcher only (pip's console scripts name /opt/godwit-mobility literally)
    find bin -mindepth 1 ! -name python3.11 -delete
    ln -s python3.11 bin/python3
    strip --strip-unneeded bin/python3.11 \$lib/lib-dynload/*.so

    # Copy in every shared library the interpreter and its modules need that is not glibc itself (found by ldd,
    # followed through their own dependencies), then point each at the bundle's lib/.
    glibc='^(linux-vdso|ld-linux-x86-64|libc|libm|libpthread|libdl|librt|libutil|libresolv|libnsl|libcrypt)\\.so'
    copied=1
    while [ \$copied -eq 1 ]; do
      copied=0
      for elf in bin/python3.11 \$lib/lib-dynload/*.so lib/*.so.*; do
        [ -e \"\$elf\" ] || continue
        ldd \"\$elf\" | awk '/=> \\// {print \$1, \$3}' | while read -r soname path; do
          echo \"\$soname\" | grep -qE \"\$glibc\" && continue
          [ -e \"lib/\$soname\" ] && continue
          cp -L \"\$path\" \"lib/\$soname\"
          chmod 0644 \"lib/\$soname\"
          strip --strip-unneeded \"lib/\$soname\"
          echo \"bundled \$soname from \$path\"
          touch /tmp/copied
        done
        [ -e /tmp/copied ] && { rm -f /tmp/copied; copied=1; }
      done
    done
    patchelf --set-rpath '\$ORIGIN/../lib' bin/python3.11
    for so in \$lib/lib-dynload/*.so; do patchelf --set-rpath '\$ORIGIN/../..' \"\$so\"; done
    for so in lib/*.so.*; do patchelf --set-rpath '\$ORIGIN' \"\$so\"; done

    # Bytecode compiled once here, valid whatever the files' times (dpkg and tar keep them, but a copy may
    # not): nothing is written under the installed bundle at run time.
    bin/python3.11 -m compileall -q -j0 --invalidation-mode unchecked-hash lib >/dev/null
    # What the build was made from, for whoever has to answer \"which OpenSSL does it use\".
    {
      echo \"godwit $VERSION mobility bundle\"
      echo \"python: \$(bin/python3.11 -c 'import sys; print(sys.version.split()[0])') from $PY_ORIG + $PY_DEBIAN fixes\"
      echo \"openssl: \$(bin/python3.11 -c 'import ssl; print(ssl.OPENSSL_VERSION)')\"
      echo \"built on: \$(. /etc/os-release; echo \$PRETTY_NAME), \$(ldd --version | head -n 1)\"
      echo \"bundled libraries: \$(cd lib && ls *.so.* | tr '\\n' ' ')\"
    } >BUILD-INFO
  "
}

assemble() {
  local root=$1 top=$WORK/$NAME
  rm -rf "$top"
  cp -a "$root$PREFIX" "$top"
  install -m 0755 "$HERE/godwit" "$top/bin/godwit"
  install -m 0755 "$HERE/install.sh" "$HERE/uninstall.sh" "$top/"
  install -d "$top/share/godwit-mobility"
  install -m 0644 "$HERE/godwit-mobility.service" "$HERE/mobility.conf" "$top/share/godwit-mobility/"
  echo "$VERSION" >"$top/VERSION"
  # Quick look that the assembled tree runs outside the chroot's /opt (the launcher finds its own folder).
  "$top/bin/godwit" mobility run --help >/dev/null
  rm -f "$TARBALL.part"
  tar -C "$WORK" --sort=name --owner=0 --group=0 --numeric-owner -czf "$TARBALL.part" "$NAME"
  mv "$TARBALL.part" "$TARBALL"
  (cd "$BUILD" && sha256sum "$(basename "$TARBALL")" >"$TARBALL.sha256")
}

# main is read whole before it runs: editing this file during a build cannot change the build under way.
main() {
  require_root
  require_tools mmdebstrap unshare chroot curl tar patch sha256sum
  require_space "$BUILD" 4096
  mkdir -p "$BUILD/logs" "$CACHE"
  : >"$LOG"
  [ -n "$VERSION" ] || die "no version in pyproject.toml"
  for d in "${MOBILITY_DEPENDENCIES[@]}"; do pin "$d" >/dev/null; done
  step "building $NAME (log: $LOG)"

  current_step="the Debian 11 build root"
  step "$current_step (cached in build/cache)"
  build_root=$(debian_root bullseye buildd "$BUILD_PACKAGES" 2>>"$LOG") || on_error
  trap on_error ERR
  run_step "the Python source ($PY_ORIG, Debian's fixes)" fetch_python_source
  run_step "a fresh build root in $WORK/root" unpack_root "$build_root" "$WORK/root"
  run_step "sources: CPython with Debian's fixes, godwit (engine/)" prepare_sources "$WORK/root"
  run_step "compiling CPython 3.11 (prefix $PREFIX)" compile_python "$WORK/root"
  run_step "installing godwit and ${MOBILITY_DEPENDENCIES[*]} (wheels cached in build/cache/wheels)" \
    install_packages "$WORK/root"
  run_step "trimming, bundling shared libraries, rpath, bytecode" trim_and_link "$WORK/root"
  run_step "writing $(basename "$TARBALL")" assemble "$WORK/root"
  rm -rf "$WORK"  # the tarball holds the tree
  trap - ERR
  step "done: $TARBALL ($(du -h "$TARBALL" | cut -f1))"
  if [ "$with_deb" = yes ]; then
    bash "$HERE/build_deb.sh" "$TARBALL"
  fi
}

main "$@"
