#!/usr/bin/env bash
# Generates the Go code of coordproxy's own API from proto/coordproxy/v1 with
# buf and the protoc plugins pinned in proto/tools/go.mod (no protoc needed).
# Usage: proto/gen.sh [OUTDIR]   (default: next to the .proto files)
# proto/gen_test.go runs it into a temp dir and fails if the committed code
# differs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here}")
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
(cd "$here/tools" && go build -o "$bin/" \
	github.com/bufbuild/buf/cmd/buf \
	google.golang.org/protobuf/cmd/protoc-gen-go \
	google.golang.org/grpc/cmd/protoc-gen-go-grpc \
	github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway)
cd "$here"
PATH="$bin:$PATH" buf generate --output "$out"
