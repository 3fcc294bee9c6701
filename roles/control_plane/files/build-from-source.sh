#!/usr/bin/env bash
# Build the Kubernetes binaries and etcd through the Go module proxy.
#
#   build-from-source.sh KUBERNETES_VERSION ETCD_VERSION DEST_DIR [NAME...]
#
# NAME is any of etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy and
# kubectl; without names all of them are built. The role passes only the ones missing from
# DEST_DIR, so a cache made before a component was added gets just that one.
# k8s.io/kubernetes pins its staging modules at v0.0.0 with local replace lines,
# which a dependent module ignores; a wrapper module replaces each staging module
# with its published v0.<minor>.<patch> tag (kubernetes/kubernetes#79384).
# etcd is built in a wrapper module of its own so the two dependency graphs never mix.
# The binaries are version-stamped the way hack/lib/version.sh does it.
# Binaries are written to a temporary directory and moved into DEST_DIR only when
# every build succeeded, so an interrupted build never leaves a half-filled cache.
set -euo pipefail

usage="usage: build-from-source.sh KUBERNETES_VERSION ETCD_VERSION DEST_DIR [NAME...]"
k8s_version=${1:?$usage}
etcd_version=${2:?$usage}
dest=${3:?$usage}
shift 3

all_k8s=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl)
k8s_cmds=()
build_etcd=false
if [ $# -eq 0 ]; then
  k8s_cmds=("${all_k8s[@]}")
  build_etcd=true
fi
for name in "$@"; do
  case " ${all_k8s[*]} " in
    *" ${name} "*) k8s_cmds+=("$name") ;;
    *) if [ "$name" = etcd ]; then build_etcd=true; else echo "build-from-source: unknown binary '${name}'; $usage" >&2; exit 2; fi ;;
  esac
done

command -v go >/dev/null || { echo "build-from-source: 'go' is not on PATH; install Go or use control_plane_binaries_source=download|path" >&2; exit 2; }

export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod
work=$(mktemp -d "${TMPDIR:-/tmp}/wasmlet-k8s-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/k8s" "$work/etcd" "$work/out"

# ---- Kubernetes -------------------------------------------------------------
if [ ${#k8s_cmds[@]} -gt 0 ]; then
  info=$(go mod download -json "k8s.io/kubernetes@${k8s_version}")
  field() { sed -n 's/^[[:space:]]*"'"$1"'": "\(.*\)",*$/\1/p' | head -n1; }
  gomod=$(printf '%s' "$info" | field GoMod)
  info_file=$(printf '%s' "$info" | field Info)
  git_commit=$(printf '%s' "$info" | field Hash)
  build_date=$(sed -n 's/.*"Time": *"\([^"]*\)".*/\1/p' "$info_file")
  [ -n "$gomod" ] || { echo "build-from-source: go mod download gave no go.mod for k8s.io/kubernetes@${k8s_version}" >&2; exit 1; }
  go_line=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")
  godebug_line=$(sed -n 's/^godebug \(.*\)$/\1/p' "$gomod")
  staging_version="v0.${k8s_version#v1.}"

  {
    echo "module local/wasmlet-k8sbin"
    echo
    echo "go ${go_line}"
    [ -n "$godebug_line" ] && echo "godebug ${godebug_line}"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*$#\t\1 => \1 '"${staging_version}"'#p' "$gomod"
    echo ")"
  } >"$work/k8s/go.mod"
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for cmd in "${k8s_cmds[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$cmd"; done
    printf ')\n'
  } >"$work/k8s/tools.go"

  minor=${k8s_version#v1.}; minor=${minor%%.*}
  ldf="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf+=" -X ${pkg}.gitVersion=${k8s_version} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    ldf+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${build_date:-1970-01-01T00:00:00Z}"
    # The module proxy does not say which commit a release was cut from; an empty gitCommit
    # is honest, the default placeholder ("$Format:%H$") is not.
    ldf+=" -X ${pkg}.gitCommit=${git_commit}"
  done

  (
    cd "$work/k8s"
    go get "k8s.io/kubernetes@${k8s_version}"
    go mod tidy -e >/dev/null 2>&1 || true
    go get "k8s.io/kubernetes@${k8s_version}"
    for cmd in "${k8s_cmds[@]}"; do
      echo "build-from-source: building ${cmd} ${k8s_version}" >&2
      go build -trimpath -tags tools -ldflags "$ldf" -o "$work/out/${cmd}" "k8s.io/kubernetes/cmd/${cmd}"
    done
  )
fi

# ---- etcd ---------------------------------------------------------------------
if $build_etcd; then
  (
    cd "$work/etcd"
    printf 'module local/wasmlet-etcdbin\n\ngo 1.24\n' >go.mod
    go get "go.etcd.io/etcd/server/v3@${etcd_version}"
    echo "build-from-source: building etcd ${etcd_version}" >&2
    go build -trimpath -ldflags "-s -w" -o "$work/out/etcd" go.etcd.io/etcd/server/v3
  )
fi

mkdir -p "$dest"
for bin in "$work"/out/*; do
  install -m 0755 "$bin" "$dest/.$(basename "$bin").new"
  mv -f "$dest/.$(basename "$bin").new" "$dest/$(basename "$bin")"
done
echo "build-from-source: binaries ready in ${dest}" >&2
