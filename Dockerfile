# syntax=docker/dockerfile:1

# coordproxy as a static binary on distroless: no shell, no package manager,
# runs as an unprivileged user. Health checks use the binary itself:
#   /coordproxy probe http://127.0.0.1:23790/readyz
#
#   docker build -t coordproxy .
#   docker run --rm -p 23790:23790 coordproxy --endpoints http://etcd:2379
# Without endpoints it starts its embedded dev-mode etcd, with the data in
# /home/nonroot/coordproxy.etcd (mount a volume there to keep it).

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
# Modules first, as their own layer: it is rebuilt only when go.mod or go.sum
# change, not on every source edit.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG TARGETOS TARGETARCH
RUN --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags="-s -w" -o /coordproxy ./cmd/coordproxy

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /coordproxy /coordproxy
# The nonroot user's home: writable, for dev mode's data directory.
WORKDIR /home/nonroot
USER 65532:65532
# The binary's own default is 127.0.0.1, right for a process on a laptop but
# unreachable from outside a container.
ENV COORDPROXY_LISTEN=0.0.0.0:23790
EXPOSE 23790
ENTRYPOINT ["/coordproxy"]
