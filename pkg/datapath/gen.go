// Package datapath loads podscope's TC programs once per node, pins them and
// their maps under the bpffs root, attaches them to pods' host-side veths
// (TCX links, or clsact + cls_bpf) and reads back what they counted.
package datapath

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type pod_iface -type pod_policy_ref -type policy_set_key -type policy_set -type drop_counts -type traffic_counters -type flow_key -type flow_stats -type policy_key -type policy_rule -type policy_value -type attachment_key -type attachment tc ../../bpf/tc.c -- -I../../bpf/include
//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -no-global-types netpol ../../bpf/netpol.c -- -I../../bpf/include
