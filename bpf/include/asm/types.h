/* Shim: the BPF target has no arch asm/ headers; the UAPI types are the generic ones. */
#pragma once
#include <asm-generic/types.h>
