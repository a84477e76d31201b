# podscope's node image: podscope (CNI plugin), podscope-nri, podscopectl and
# podscope-install in /usr/local/bin. The DaemonSet in deploy/ runs all of
# its containers from it.
#
#   docker build -t podscope:dev .            # or: podman build / buildah bud
#   docker build --build-arg VERSION=$(git describe --always --dirty) -t podscope:dev .
#
# The BPF objects and their Go bindings are committed, so the build needs
# Go only (no clang). Everything is static (CGO_ENABLED=0).
ARG GO_VERSION=1.26

FROM docker.io/library/golang:${GO_VERSION} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN make build BIN=/out VERSION=${VERSION}

# distroless/static: no shell, no package manager; runs as root (uid 0),
# which the privileged containers need. podscopectl is run with
# `kubectl exec ... -- podscopectl status`.
FROM gcr.io/distroless/static-debian12
COPY --from=build /out/podscope /out/podscope-nri /out/podscopectl /out/podscope-install /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/podscope-nri"]
