package audit

// The audit programs are CO-RE (bpf/vmlinux.h); -mcpu=v3 for the atomic
// exchange used by dedup and the per-CPU scratch guard.
//go:generate go tool bpf2go -tags linux -cc clang -target bpfel -type event -type identity -type dedup_key -type dedup_val -type audit_cgroup -type armed_levels -type object_id -type probe_refusal -type write_op -type attach_mode -type aux_kind -type exit_fn audit ../../bpf/audit.c -- -I../../bpf -mcpu=v3 -Wall
