/* Shim: podscope's objects are built for bpfel (little endian) only. */
#pragma once
#include <linux/byteorder/little_endian.h>
