// Package integration holds podscope's privileged CNI tests: the real
// bridge + host-local reference plugins and the podscope plugin binary run
// through libcni with a real conflist, inside a throw-away "node" netns so
// the bridge, the host veths and ip_forward change there, never on the host.
//
// Run as root: go test ./tests/integration/
// The reference plugins are built once into $PODSCOPE_CACHE/cni-bin/<version>
// ($PODSCOPE_CACHE defaults to /var/cache/podscope, as for the other suites).
// Measurements (latency, throughput; see measure_test.go):
//
//	go test ./tests/integration/ -run '^$' -bench . -benchtime 1x
package integration
