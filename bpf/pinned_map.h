/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * PINNED_MAP: a BTF-defined map pinned by its name (LIBBPF_PIN_BY_NAME)
 * in its loader's pin directory: the one shape every podscope object
 * (tc, netpol, audit) declares its plain maps with. Needs
 * <bpf/bpf_helpers.h> for __uint/__type.
 */
#pragma once

#define PINNED_MAP(name, map_type, entries, key_type, value_type) \
	struct {                                                  \
		__uint(type, map_type);                           \
		__uint(max_entries, entries);                     \
		__type(key, key_type);                            \
		__type(value, value_type);                        \
		__uint(pinning, LIBBPF_PIN_BY_NAME);              \
	} name SEC(".maps")
