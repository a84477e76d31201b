module github.com/podscope/podscope

go 1.26.0

require (
	github.com/cilium/ebpf v0.22.0
	golang.org/x/sys v0.48.0
)

tool github.com/cilium/ebpf/cmd/bpf2go
