/* Shim: no arch-specific byte swapping on the BPF target. */
#pragma once
#include <asm-generic/swab.h>
