/* Shim: generic UAPI posix types for the BPF target. */
#pragma once
#include <asm-generic/posix_types.h>
