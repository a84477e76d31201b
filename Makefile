# podscope — see README.md. Every target works on a fresh clone as root.
GO        ?= go
BIN       ?= bin
DESTDIR   ?=
CNI_BIN_DIR ?= /opt/cni/bin
PREFIX    ?= /usr/local
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
export GOFLAGS := -buildvcs=false
export CGO_ENABLED := 0
LDFLAGS   := -s -w -X github.com/podscope/podscope/pkg/buildinfo.Version=$(VERSION)

CNI_PLUGINS := podscope podscope-nri
TOOLS       := podscopectl podscope-install

.PHONY: all build generate generate-check test unit e2e e2e-k8s netpol-conformance demo bench bench-quick bench-netpol test-kernels bench-kernels fuzz fuzz-quick churn audit-load install uninstall clean deps

all: build

build: $(addprefix $(BIN)/,$(CNI_PLUGINS) $(TOOLS))

$(BIN)/podscope $(BIN)/podscope-nri: $(BIN)/%: FORCE
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./plugins/$*
$(BIN)/podscopectl $(BIN)/podscope-install: $(BIN)/%: FORCE
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/$*
FORCE:

# Regenerate the BPF objects and their Go bindings (needs clang; bpf2go is a
# tool in go.mod). The results are committed so `go build` needs no clang.
generate:
	$(GO) generate ./pkg/...

# CI: the committed objects must be what the committed C compiles to.
generate-check: generate
	@git diff --exit-code -- pkg bpf || { echo "make generate changed committed files: run it and commit the result" >&2; exit 1; }
	@test -z "$$(git status --porcelain -- pkg bpf)" || { git status --porcelain -- pkg bpf; echo "make generate left untracked files" >&2; exit 1; }

deps:
	hack/install-deps.sh

# The README's test command: unit and privileged suites, then the
# real-containerd end-to-end suite (E2E=0 leaves it out, except under CI=true).
test:
	hack/test.sh

unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /tests/e2e)

# Every fuzz target of the parsers of outside input (docs/reliability.md):
# 30,000 executions each in CI, long by hand (FUZZTIME=1h make fuzz).
fuzz:
	hack/fuzz.sh

fuzz-quick:
	FUZZTIME=$${FUZZTIME:-30000x} hack/fuzz.sh

# Full-size churn and crash-at-every-step (docs/reliability.md); `make test`
# runs both at a reduced size. CHURN_CYCLES/CHURN_PARALLEL override;
# CHURN_DEADLINE (a duration or an RFC 3339 time) stops starting cycles then,
# checks what ran as after a whole run and reports "N of 10000".
churn:
	PODSCOPE_CHURN_CYCLES=$${CHURN_CYCLES:-10000} PODSCOPE_CHURN_PARALLEL=$${CHURN_PARALLEL:-100} \
		PODSCOPE_CHURN_DEADLINE=$${CHURN_DEADLINE:-} \
		PODSCOPE_CHURN_REPORT=$${CHURN_REPORT:-$(CURDIR)/bench/out/churn.txt} \
		$(GO) test -count=1 -timeout 6h -v -run 'TestChurn|TestCrashAtEvery' ./tests/integration

# Audit under sustained load at full size: 1,000,000 opens a minute from 4
# writer cgroups for 5 minutes, folding on and off (make test: 5 s rounds).
audit-load:
	PODSCOPE_AUDIT_LOAD_SECONDS=$${AUDIT_LOAD_SECONDS:-300} PODSCOPE_AUDIT_LOAD_RATE=$${AUDIT_LOAD_RATE:-16667} \
		PODSCOPE_AUDIT_LOAD_REPORT=$${AUDIT_LOAD_REPORT:-$(CURDIR)/bench/out/audit-load.txt} \
		$(GO) test -count=1 -timeout 2h -v -run 'TestAuditSustainedLoad' ./tests/integration

e2e: build
	hack/e2e.sh

# The cluster suite (tests/e2e-k8s) on a single-node Kubernetes built from
# source (hack/k8s/node.sh): deploy/ applied with kubectl apply -k.
e2e-k8s: build
	PODSCOPE_E2E_NO_BUILD=1 hack/k8s/e2e.sh

# The upstream Kubernetes v1.37.2 NetworkPolicy e2e tests (the Netpol set)
# on the cluster suite's node with podscope enforcing (hack/k8s/netpol.sh;
# ENFORCE=0: the baseline without enforcement, SUBSET=ci: make test's subset).
netpol-conformance: build
	PODSCOPE_E2E_NO_BUILD=1 hack/k8s/netpol.sh run

# The audit's and the datapath's tests on real distribution kernels under
# qemu (hack/kernels/kernels.list): every audit mode forced, the probe
# unforced. bench-kernels also measures the audit's overhead per mode.
test-kernels:
	hack/kernels/run.sh

bench-kernels:
	BENCH=1 hack/kernels/run.sh

demo: build
	hack/demo.sh

bench: build
	hack/bench.sh

bench-quick: build
	QUICK=1 hack/bench.sh

# NetworkPolicy rows on the cluster suite's node: TCP_RR, TCP_CRR, UDP with no
# policy and with podscope enforcing N NetworkPolicies, and the time from an
# API update to enforcement (hack/k8s/netpol.sh bench; bench/README.md).
bench-netpol: build
	PODSCOPE_E2E_NO_BUILD=1 hack/k8s/netpol.sh bench

install: build
	install -d $(DESTDIR)$(CNI_BIN_DIR) $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BIN)/podscope $(DESTDIR)$(CNI_BIN_DIR)/podscope
	install -m 0755 $(BIN)/podscope-nri $(BIN)/podscopectl $(BIN)/podscope-install $(DESTDIR)$(PREFIX)/bin/

uninstall:
	rm -f $(DESTDIR)$(CNI_BIN_DIR)/podscope
	rm -f $(addprefix $(DESTDIR)$(PREFIX)/bin/,podscope-nri podscopectl podscope-install)

clean:
	rm -rf $(BIN) bench/out
