// The row kernels of topk_attention (csrc/cpu/topk_attention.cpp): the row pass (steps 1-3 of that file's header:
// logits, selection, exp2 arguments) and the primitives of the sparse scheme, which work on the few kept keys of
// one query row (their indices idx[0..c) into a head's [L, Dh] rows) over the head width Dh.
//
// Included twice by topk_attention.cpp, with no include guard on purpose: once for baseline x86-64 (namespace
// rows_base) and once inside the file's AVX2 + FMA region (namespace rows_avx2), so the same loops compile to 8-wide
// FMA code where the CPU has it (chosen at runtime, like the exp2 row sums).
//
// The loops use GCC / clang vector extensions (32-byte vectors: 8 floats or 4 doubles; two SSE registers each in the
// baseline copy), with four accumulators per block of 4 vectors so that four FMA dependency chains hide the FMA
// latency. Plain scalar loops were not vectorised reliably: GCC 13's unroll-and-jam fused two iterations of the loop
// over the kept keys and chose scalar code for the fused loop (2-3x slower), with or without `omp simd`. The part of
// Dh past the last whole vector is a scalar loop.

// Step 2 of the header for one finite row x [L] with max mx and min mn; 1 <= top_k <= L.
template <typename A>
Selection<A> select_row(const A* x, int64_t L, int64_t top_k, A mx, A mn, Scratch<A>& sc) {
  // min(max((x - mn) * f, 0), nb - 1), truncated, is monotone in x (each step is, with correct rounding), so the
  // buckets are ordered like the values; clamped as floats, so the loop vectorises at baseline x86-64. nb: about
  // one bucket per two values (16 to 256), fewer counts to clear and walk in short rows. f = 0 (one bucket) when all
  // values are equal or the range is so small that its inverse overflows.
  int64_t nb = 16;
  while (2 * nb < L && nb < kBuckets) nb *= 2;  // L / 2 <= nb < L: about two values a bucket
  A f = mx > mn ? A(nb - 1) / (mx - mn) : A(0);
  if (!std::isfinite(f)) f = A(0);
  uint8_t* bk = sc.bucket.data();
  const A top = A(nb - 1);
  for (int64_t j = 0; j < L; ++j) {
    A y = (x[j] - mn) * f;
    y = y < A(0) ? A(0) : y;
    y = y > top ? top : y;
    bk[j] = static_cast<uint8_t>(static_cast<int32_t>(y));
  }
  std::fill(sc.counts, sc.counts + nb, 0);
  for (int64_t j = 0; j < L; ++j) ++sc.counts[bk[j]];
  // the bucket b_top of the top_k-th largest value, and the number of values above it, found by walking the
  // counts from the nearer end
  int64_t above = 0, b_top;
  if (2 * top_k <= L) {
    for (b_top = nb - 1; b_top > 0; --b_top) {
      if (above + sc.counts[b_top] >= top_k) break;
      above += sc.counts[b_top];
    }
  } else {
    const int64_t rank_from_below = L - top_k + 1;  // the top_k-th largest is this smallest
    int64_t below = 0;
    for (b_top = 0; b_top < nb - 1; ++b_top) {
      if (below + sc.counts[b_top] >= rank_from_below) break;
      below += sc.counts[b_top];
    }
    above = L - below - sc.counts[b_top];
  }
  // the values of bucket b_top (cd has L + 1 entries: the scalar loop is branch-free, since which values fall in
  // the bucket is data-dependent; the AVX2 build compares 32 bucket numbers at once and visits the matches only,
  // usually one to three)
  const uint8_t want = static_cast<uint8_t>(b_top);
  A* cd = sc.bucket_values.data();
  int64_t nc = 0, j0 = 0;
#ifdef AUGCL_TOPK_ROWS_AVX2
  const __m256i wv = _mm256_set1_epi8(static_cast<char>(want));
  for (; j0 + 32 <= L; j0 += 32) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bk + j0));
    uint32_t m = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(b, wv)));
    for (; m != 0; m &= m - 1) cd[nc++] = x[j0 + __builtin_ctz(m)];
  }
#endif
  for (int64_t j = j0; j < L; ++j) {
    cd[nc] = x[j];
    nc += static_cast<int64_t>(bk[j] == want);
  }
  const int64_t r = top_k - above;  // 1-based rank of t inside its bucket, descending
  std::nth_element(cd, cd + (r - 1), cd + nc, std::greater<A>());
  const A t = cd[r - 1];
  int64_t gt = above, eq = 0;
  for (int64_t e = 0; e < nc; ++e) {
    gt += cd[e] > t;
    eq += cd[e] == t;
  }
  return {t, top_k - gt, eq};
}

// Steps 1-3 of the header for rows [r0, r1) of the chunk buffer x [rows, L] holding raw dots. Forward
// (lse == nullptr): shift_i = the row max, written to shift[r]; backward: shift_i = lse[r]. Runs in
// at::parallel_for: no ATen op in here.
template <typename A>
void rows_to_exp2_args(A* x, A* shift, const A* lse, int64_t r0, int64_t r1, int64_t L, A s, int64_t top_k,
                       bool keep_first, Scratch<A>& sc) {
  const A sv = s;  // a local copy: a reference capture could alias the row, which blocks vectorisation
  const A neg_inf = -std::numeric_limits<A>::infinity();
  for (int64_t r = r0; r < r1; ++r) {
    A* xr = x + r * L;
    A mx = neg_inf, mn = std::numeric_limits<A>::infinity();
    int64_t nan = 0;
#if defined(_OPENMP) && _OPENMP >= 201307  // omp simd is OpenMP 4.0: lets the compiler vectorise the reductions
#pragma omp simd reduction(max : mx) reduction(min : mn) reduction(+ : nan)
#endif
    for (int64_t j = 0; j < L; ++j) {
      const A v = sv * xr[j];  // the logit, rounded as in the reference
      xr[j] = v;
      mx = v > mx ? v : mx;
      mn = v < mn ? v : mn;
      nan += v != v;
    }
    if (!(std::isfinite(mx) && std::isfinite(mn) && nan == 0)) {
      std::fill(xr, xr + L, std::numeric_limits<A>::quiet_NaN());
      if (lse == nullptr) shift[r] = std::numeric_limits<A>::quiet_NaN();
      continue;
    }
    const Selection<A> sel = select_row(xr, L, top_k, mx, mn, sc);
    const A sh = lse == nullptr ? mx : lse[r];
    if (lse == nullptr) shift[r] = mx;  // the max is always kept (top_k >= 1)
    const A t = sel.t;
    const A x0 = xr[0];
    if (sel.n_eq > sel.keep_eq) {
      // A tie at the boundary: of the values == t only the lowest-index keep_eq are kept; the others become -inf
      // here, before the pass below, which keeps every value >= t.
      int64_t seen = 0;
      for (int64_t j = 0; j < L; ++j) {
        if (xr[j] == t && seen++ >= sel.keep_eq) xr[j] = neg_inf;
      }
    }
    // branch-free (a select per cell), so it vectorises: a kept cell's argument, or -inf
    const A lo = kMinNormalExp2<A>;
    for (int64_t j = 0; j < L; ++j) {
      const A v = xr[j];
      const A a = (v - sh) * kLog2e<A>;
      const bool keep = (v >= t) & (a >= lo);  // & rather than &&: no branch, the loop vectorises
      xr[j] = keep ? a : neg_inf;
    }
    if (keep_first) xr[0] = to_exp2_arg(x0 - sh);
  }
}

// In the baseline copy a 32-byte vector is two SSE registers and GCC warns that returning one "changes the ABI"
// (-Wpsabi): load32 is inline and internal to the kernels below, so no call crosses an ABI boundary.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
template <typename A>
struct Vec32 {
  typedef A type __attribute__((vector_size(32)));
  static constexpr int64_t n = 32 / int64_t(sizeof(A));
};

template <typename A>
inline typename Vec32<A>::type load32(const A* p) {
  typename Vec32<A>::type v;
  std::memcpy(&v, p, sizeof(v));  // an unaligned vector load
  return v;
}

template <typename A>
inline void store32(A* p, typename Vec32<A>::type v) {
  std::memcpy(p, &v, sizeof(v));
}

// y [Dh] = sum_c w[c] * rows[idx[c]] (y overwritten; 0 when c == 0).
template <typename A>
inline void combine_rows(A* __restrict y, const A* __restrict w, const int32_t* __restrict idx, int64_t c,
                         const A* __restrict rows, int64_t Dh) {
  using V = typename Vec32<A>::type;
  constexpr int64_t n = Vec32<A>::n;
  int64_t d0 = 0;
  for (; d0 + 4 * n <= Dh; d0 += 4 * n) {
    V a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t e = 0; e < c; ++e) {
      const A we = w[e];
      const A* r = rows + static_cast<int64_t>(idx[e]) * Dh + d0;
      a0 += we * load32(r);
      a1 += we * load32(r + n);
      a2 += we * load32(r + 2 * n);
      a3 += we * load32(r + 3 * n);
    }
    store32(y + d0, a0);
    store32(y + d0 + n, a1);
    store32(y + d0 + 2 * n, a2);
    store32(y + d0 + 3 * n, a3);
  }
  for (; d0 + n <= Dh; d0 += n) {
    V a0 = {};
    for (int64_t e = 0; e < c; ++e) a0 += w[e] * load32(rows + static_cast<int64_t>(idx[e]) * Dh + d0);
    store32(y + d0, a0);
  }
  for (int64_t d = d0; d < Dh; ++d) {
    A acc = 0;
    for (int64_t e = 0; e < c; ++e) acc += w[e] * rows[static_cast<int64_t>(idx[e]) * Dh + d];
    y[d] = acc;
  }
}

// out[c] = <x, rows[idx[c]]> over Dh.
template <typename A>
inline void dot_rows(A* __restrict out, const A* __restrict x, const int32_t* __restrict idx, int64_t c,
                     const A* __restrict rows, int64_t Dh) {
  using V = typename Vec32<A>::type;
  constexpr int64_t n = Vec32<A>::n;
  for (int64_t e = 0; e < c; ++e) {
    const A* r = rows + static_cast<int64_t>(idx[e]) * Dh;
    V a0 = {}, a1 = {}, a2 = {}, a3 = {};
    int64_t d = 0;
    for (; d + 4 * n <= Dh; d += 4 * n) {
      a0 += load32(x + d) * load32(r + d);
      a1 += load32(x + d + n) * load32(r + d + n);
      a2 += load32(x + d + 2 * n) * load32(r + d + 2 * n);
      a3 += load32(x + d + 3 * n) * load32(r + d + 3 * n);
    }
    for (; d + n <= Dh; d += n) a0 += load32(x + d) * load32(r + d);
    const V a = (a0 + a1) + (a2 + a3);
    A sum = 0;
    for (int64_t u = 0; u < n; ++u) sum += a[u];
    for (; d < Dh; ++d) sum += x[d] * r[d];
    out[e] = sum;
  }
}

// rows[idx[c]][d0, d1) += w[c] * x[d0, d1) for each c (a scatter: one query row's share of dk or dv). No chain here:
// each vector is a load, an FMA and a store.
template <typename A>
inline void scatter_rows(A* __restrict rows, const A* __restrict w, const int32_t* __restrict idx, int64_t c,
                         const A* __restrict x, int64_t Dh, int64_t d0, int64_t d1) {
  constexpr int64_t n = Vec32<A>::n;
  for (int64_t e = 0; e < c; ++e) {
    const A we = w[e];
    A* r = rows + static_cast<int64_t>(idx[e]) * Dh;
    int64_t d = d0;
    for (; d + n <= d1; d += n) store32(r + d, load32(r + d) + we * load32(x + d));
    for (; d < d1; ++d) r[d] += we * x[d];
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// The kept keys of one row of exp2 arguments xr [L] (-inf off the kept set): their indices and arguments in key
// order, at most kk; returns how many. idx and val hold kk + kCompactSlack entries: the loops are branch-free (the
// kept positions are data-dependent, so a branch would be mispredicted about once per kept key). The scalar loop
// writes every cell at position c, which advances only past a kept one; the AVX2 float build compresses 8 cells at
// a time (a compare, its 8-bit mask, a table of the permutation that packs the kept lanes first, one permute of the
// values and one of the indices, stores of all 8 lanes at c, c += the mask's popcount). c stops at kk.
template <typename A>
inline int64_t compact_row(const A* __restrict xr, int64_t L, int64_t kk, int32_t* __restrict idx,
                           A* __restrict val) {
  const A neg_inf = -std::numeric_limits<A>::infinity();
  int64_t c = 0, j0 = 0;
#ifdef AUGCL_TOPK_ROWS_AVX2
  if constexpr (std::is_same_v<A, float>) {
    const __m256 ninf = _mm256_set1_ps(neg_inf);
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    const __m256i seven = _mm256_set1_epi32(7);
    for (; j0 + 8 <= L; j0 += 8) {
      const __m256 xv = _mm256_loadu_ps(xr + j0);
      const int m = _mm256_movemask_ps(_mm256_cmp_ps(xv, ninf, _CMP_NEQ_UQ));
      const __m256i perm = _mm256_and_si256(
          _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(kCompressLut.v[m])), shifts), seven);
      _mm256_storeu_ps(val + c, _mm256_permutevar8x32_ps(xv, perm));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx + c),
                          _mm256_add_epi32(perm, _mm256_set1_epi32(static_cast<int>(j0))));
      c = std::min<int64_t>(c + __builtin_popcount(static_cast<unsigned>(m)), kk);
    }
  }
#endif
  for (int64_t j = j0; j < L; ++j) {
    const A a = xr[j];
    idx[c] = static_cast<int32_t>(j);
    val[c] = a;
    c += static_cast<int64_t>(a != neg_inf) & static_cast<int64_t>(c < kk);
  }
  return c;
}
