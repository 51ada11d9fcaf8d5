// Closes the region opened by avx2_begin.h (see there).
#undef CPU_CAPABILITY_AVX2
#undef CPU_CAPABILITY
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
