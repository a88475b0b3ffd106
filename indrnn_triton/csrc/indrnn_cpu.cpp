// The IndRNN recurrence on CPU: one pass over time per call, the state of a block of sequences
// in a small buffer that stays in L1/L2, vectorised over H, threads over (direction, batch).
//
// Plain C++ with no torch headers, so it compiles in seconds; Python passes raw pointers, element
// strides and dtype codes through ctypes (indrnn_triton/cpu_compiled.py). Same contract as
// indrnn_triton/cpu.py; the numerics (DESIGN.md section 3):
//   forward   h_t = relu(pre_t + b + u' h_{t-1}), relu(NaN) = NaN; a padding step (mask 0)
//             carries the state, never reads pre_t, and writes the carried state as output.
//   backward  d_t = (g_t + u' d_{t+1}) [not h_t <= 0]; a padding step passes the carried gradient
//             straight through and writes 0 to dpre_t; du = sum d_t h_{t-1} is zeroed where u
//             was clipped; du, db are summed over the batch in a fixed order (deterministic for
//             any number of threads).
// The state and every sum run in float32 (float64 for float64 inputs).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

// The unit-stride rows of float32, float16 and bfloat16 tensors run hand-written AVX2 loops
// (8 lanes; F16C converts float16). GCC vectorises the generic loops below for float32 and
// bfloat16, but not float16's conversions, and it cannot emit streaming stores or prefetches.
#if defined(__SSE__)
#include <immintrin.h>  // _mm_getcsr; the AVX2 loops below
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define INDRNN_SIMD 1
#endif

namespace {

// dtype codes shared with cpu_compiled.py
enum Dtype : int64_t { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };

// A strided tensor of up to 3 dims. For masks, `dtype` is the element size in bytes (bool and
// integer masks are read as "nonzero = real step" without a conversion pass).
struct View {
  const void* data;
  int64_t dtype;
  int64_t stride[3];
};

// One call's arguments. The sequence tensors (pre, out, grad_out, grad_pre) are (T, B, D*H)
// views; u, bias, du, db are (D*H,); the states h0, h_n, grad_hn, grad_h0 are (D, B, H).
// A null `data` means the argument is absent.
struct Params {
  int64_t T, B, H, D;
  int64_t reverse, has_max, num_threads;
  int64_t stream_min;  // outputs of at least this many bytes use streaming stores (SIMD loops)
  double max_abs, min_abs;
  View pre, out, grad_out, grad_pre;
  View u, bias, h0, mask;
  View h_n, grad_hn, grad_h0;
  View du, db;
};

// 16-bit storage types, converted with integer code written without branches so that the
// loops vectorise (GCC does not vectorise _Float16 conversions).
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float to_acc(float v) { return v; }
inline double to_acc(double v) { return v; }
inline float to_acc(BFloat16 v) { return bits_to_float(static_cast<uint32_t>(v.bits) << 16); }
inline float to_acc(Half v) {  // exact, subnormals, infinities and NaN included
  const uint32_t h = v.bits;
  const uint32_t shifted = (h & 0x7fffu) << 13;  // exponent and mantissa in float position
  const uint32_t exp = shifted & 0x0f800000u;
  const uint32_t normal = shifted + ((127u - 15u) << 23);
  const uint32_t inf_nan = normal + ((128u - 16u) << 23);
  const float subnormal = bits_to_float(normal + (1u << 23)) - bits_to_float(113u << 23);
  const uint32_t mag = exp == 0x0f800000u ? inf_nan : (exp == 0 ? float_to_bits(subnormal) : normal);
  return bits_to_float(mag | ((h & 0x8000u) << 16));
}

template <class S, class A>
inline S from_acc(A v) {
  return static_cast<S>(v);
}
template <>
inline BFloat16 from_acc<BFloat16, float>(float f) {  // round to nearest even, as c10::BFloat16
  const uint32_t u = float_to_bits(f);
  const uint32_t rounded = u + 0x7fff + ((u >> 16) & 1);
  return BFloat16{static_cast<uint16_t>((f != f ? 0x7fc00000u : rounded) >> 16)};
}
template <>
inline Half from_acc<Half, float>(float f) {  // round to nearest even, as c10::Half
  const uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  // |f| >= 65520 rounds to infinity; NaN stays (a quiet) NaN.
  const uint32_t big = a > 0x7f800000u ? 0x7e00u : 0x7c00u;
  // |f| < 2^-14: the float addition of 0.5 rounds the subnormal mantissa to nearest even.
  const uint32_t sub = float_to_bits(bits_to_float(a) + 0.5f) - float_to_bits(0.5f);
  // normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even.
  const uint32_t norm = (a + ((15u - 127u) << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
  const uint32_t mag = a >= 0x47800000u ? big : (a < 0x38800000u ? sub : norm);
  return Half{static_cast<uint16_t>(sign | mag)};
}

// Element i of a small tensor of any float dtype, as double (weights, bias, states: read once).
double load(const View& v, int64_t offset) {
  switch (v.dtype) {
    case F32: return static_cast<const float*>(v.data)[offset];
    case F64: return static_cast<const double*>(v.data)[offset];
    case F16: return to_acc(static_cast<const Half*>(v.data)[offset]);
    default: return to_acc(static_cast<const BFloat16*>(v.data)[offset]);
  }
}

bool real_step(const View& mask, int64_t t, int64_t b) {
  if (mask.data == nullptr) return true;
  const char* p = static_cast<const char*>(mask.data) +
                  (t * mask.stride[0] + b * mask.stride[1]) * mask.dtype;
  switch (mask.dtype) {
    case 1: return *p != 0;
    case 2: return *reinterpret_cast<const int16_t*>(p) != 0;
    case 4: return *reinterpret_cast<const int32_t*>(p) != 0;
    default: return *reinterpret_cast<const int64_t*>(p) != 0;
  }
}

// Row (t, b) of direction d of a (T, B, D*H) view.
template <class S>
S* row(const View& v, int64_t d, int64_t H, int64_t t, int64_t b) {
  return const_cast<S*>(static_cast<const S*>(v.data)) + t * v.stride[0] + b * v.stride[1] +
         d * H * v.stride[2];
}

// u' = clamp(sign(u) max(|u|, m), -r, r) in the accumulation type, the bounds rounded to it as
// torch rounds a Python float compared with a float32 tensor (a weight equal to float32(r) is
// kept; op.py turns a bound above the type's range into no bound). keep = the gradient of u
// passes (torch's rules for where and clamp: NaN u is not raised to m, the clamp blocks it).
template <class A>
void clip_weights(const Params& p, int64_t d, A* u, A* keep) {
  const A m = static_cast<A>(p.min_abs), r = static_cast<A>(p.max_abs);
  for (int64_t i = 0; i < p.H; ++i) {
    const A w = static_cast<A>(load(p.u, (d * p.H + i) * p.u.stride[0]));
    A v = w;
    bool pass = true;
    if (p.min_abs > 0 && std::fabs(w) < m) {
      v = w > 0 ? m : (w < 0 ? -m : A(0));
      pass = false;
    }
    if (p.has_max) {
      pass = pass && w >= -r && w <= r;
      v = v > r ? r : (v < -r ? -r : v);
    }
    u[i] = v;
    keep[i] = pass ? A(1) : A(0);
  }
}

// Rows of state for sequences b0 .. b0+nb-1 of direction d from a (D, B, H) view, or zeros.
template <class A>
void load_states(const View& v, int64_t d, int64_t b0, int64_t nb, int64_t H, A* dst) {
  for (int64_t j = 0; j < nb; ++j)
    for (int64_t i = 0; i < H; ++i)
      dst[j * H + i] = v.data == nullptr
          ? A(0)
          : static_cast<A>(load(v, d * v.stride[0] + (b0 + j) * v.stride[1] + i * v.stride[2]));
}

template <class A>
void store_states(const View& v, int64_t d, int64_t b0, int64_t nb, int64_t H, const A* src) {
  for (int64_t j = 0; j < nb; ++j)
    for (int64_t i = 0; i < H; ++i)
      const_cast<A*>(static_cast<const A*>(v.data))[d * v.stride[0] + (b0 + j) * v.stride[1] +
                                                    i * v.stride[2]] = src[j * H + i];
}

// One forward step of one sequence. UNIT: pre and out rows are contiguous, so the loop
// vectorises; the strided instantiation is the same code with runtime strides.
// All row pointers are __restrict: distinct buffers, so the loops vectorise without alias checks.
template <bool UNIT, class S, class A>
void forward_row(const S* __restrict x, int64_t sx, S* __restrict o, int64_t so,
                 const A* __restrict u, const A* __restrict bias, A* __restrict h, int64_t H) {
  const int64_t xs = UNIT ? 1 : sx, os = UNIT ? 1 : so;
  for (int64_t i = 0; i < H; ++i) {
    A a = to_acc(x[i * xs]) + bias[i] + u[i] * h[i];
    a = a < A(0) ? A(0) : a;  // keeps NaN, as torch.relu
    h[i] = a;
    o[i * os] = from_acc<S, A>(a);
  }
}

// One backward step of one sequence: c (the gradient reaching h_t from later steps) becomes
// u' d_t; du, db accumulate this sequence's terms. PREV: 0 no h_{t-1} term (h0 absent),
// 1 h_{t-1} is an output row (strided like out), 2 it is an accumulation-dtype row (h0).
template <bool UNIT, bool HAS_G, int PREV, class S, class A>
void backward_row(const S* __restrict g, int64_t sg, const S* __restrict o, int64_t so,
                  const void* __restrict prev, S* __restrict gp, int64_t sgp,
                  const A* __restrict u, A* __restrict c, A* __restrict du, A* __restrict db,
                  int64_t H) {
  const int64_t gs = UNIT ? 1 : sg, os = UNIT ? 1 : so, gps = UNIT ? 1 : sgp;
  for (int64_t i = 0; i < H; ++i) {
    A cg = c[i];
    if (HAS_G) cg += to_acc(g[i * gs]);
    // The gate is "not h <= 0", as torch's threshold_backward: open at a NaN output.
    const A dd = to_acc(o[i * os]) <= A(0) ? A(0) : cg;
    gp[i * gps] = from_acc<S, A>(dd);
    c[i] = dd * u[i];
    db[i] += dd;
    if (PREV == 1) du[i] += dd * to_acc(static_cast<const S*>(prev)[i * os]);
    if (PREV == 2) du[i] += dd * static_cast<const A*>(prev)[i];
  }
}

template <bool UNIT, bool HAS_G, class S, class A>
void backward_row_prev(int prev_kind, const S* g, int64_t sg, const S* o, int64_t so,
                       const void* prev, S* gp, int64_t sgp, const A* u, A* c, A* du, A* db,
                       int64_t H) {
  if (prev_kind == 1)
    backward_row<UNIT, HAS_G, 1>(g, sg, o, so, prev, gp, sgp, u, c, du, db, H);
  else if (prev_kind == 2)
    backward_row<UNIT, HAS_G, 2>(g, sg, o, so, prev, gp, sgp, u, c, du, db, H);
  else
    backward_row<UNIT, HAS_G, 0>(g, sg, o, so, prev, gp, sgp, u, c, du, db, H);
}

#ifdef INDRNN_SIMD
namespace simd {

// 8 lanes of a storage type, as float32.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m256 load8(const BFloat16* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

// Stores 8 float32 lanes rounded to the storage type (round to nearest even, as from_acc).
// NT: a streaming store (bypasses the caches; the address must be aligned, see aligned()).
template <bool NT>
inline void store8(float* p, __m256 v) {
  if (NT) _mm256_stream_ps(p, v); else _mm256_storeu_ps(p, v);
}
template <bool NT>
inline void store_halves(void* p, __m128i v) {
  if (NT) _mm_stream_si128(static_cast<__m128i*>(p), v);
  else _mm_storeu_si128(static_cast<__m128i*>(p), v);
}
template <bool NT>
inline void store8(Half* p, __m256 v) {
  store_halves<NT>(p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
template <bool NT>
inline void store8(BFloat16* p, __m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd));
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc00000), _mm256_castps_si256(nan));
  r = _mm256_srli_epi32(r, 16);  // < 2^16, so the unsigned saturating pack keeps every value
  store_halves<NT>(p, _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
}

// Streaming stores need 8 lanes' worth of alignment (32 bytes for float32, 16 for 16-bit).
template <class S>
inline bool aligned(const S* p) {
  return reinterpret_cast<uintptr_t>(p) % (8 * sizeof(S)) == 0;
}

inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
// A line the loop will store to: PREFETCHW (cpu_compiled passes -mprfchw where the CPU has it)
// fetches it ready to be written, so the store does not wait for the read a store miss does.
// Not with streaming stores, which skip the caches (prefetching their lines slowed the
// T=1000, B=32, H=256 forward 1.6x).
inline void prefetch_write(const void* p) { __builtin_prefetch(p, 1, 3); }

// Elements of S in a 64-byte cache line: the loops prefetch one line per line they read.
template <class S>
constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(S));

// Elements [0, n) where o + n is the first aligned output (all of them if none is).
template <bool NT, class S>
inline int64_t head(const S* o, int64_t H) {
  if (!NT) return 0;
  int64_t n = 0;
  while (n < H && !aligned(o + n)) ++n;
  return n;
}

// forward_row<true> for A = float: same arithmetic (fma(u, h, x + b), then ReLU keeping NaN).
// pf, pf_out: the input and output rows the loop will reach some rows later (see ahead()),
// prefetched a line at a time alongside this one; null for none.
template <bool NT, class S>
void forward(const S* __restrict x, S* __restrict o, const float* __restrict u,
             const float* __restrict bias, float* __restrict h, int64_t H, const S* pf,
             const S* pf_out) {
  int64_t i = head<NT>(o, H);
  forward_row<true>(x, 1, o, 1, u, bias, h, i);
  const __m256 zero = _mm256_setzero_ps();
  for (const int64_t i0 = i; i + 8 <= H; i += 8) {
    if (pf != nullptr && (i - i0) % kLine<S> == 0) {
      prefetch(pf + i);
      if (!NT) prefetch_write(pf_out + i);
    }
    const __m256 a = _mm256_fmadd_ps(_mm256_loadu_ps(u + i), _mm256_loadu_ps(h + i),
                                     _mm256_add_ps(load8(x + i), _mm256_loadu_ps(bias + i)));
    const __m256 r = _mm256_max_ps(zero, a);  // max returns its second operand for a NaN
    _mm256_storeu_ps(h + i, r);
    store8<NT>(o + i, r);
  }
  forward_row<true>(x + i, 1, o + i, 1, u + i, bias + i, h + i, H - i);
}

// backward_row<true, HAS_G, PREV> for A = float. pf_o, pf_g, pf_gp: the out, grad_out and
// grad_pre rows of some rows later (see ahead()), or null.
template <bool NT, bool HAS_G, int PREV, class S>
void backward(const S* __restrict g, const S* __restrict o, const void* __restrict prev,
              S* __restrict gp, const float* __restrict u, float* __restrict c,
              float* __restrict du, float* __restrict db, int64_t H, const S* pf_o,
              const S* pf_g, const S* pf_gp) {
  int64_t i = head<NT>(gp, H);
  const S* ps = static_cast<const S*>(prev);
  const float* pa = static_cast<const float*>(prev);
  backward_row<true, HAS_G, PREV>(g, 1, o, 1, prev, gp, 1, u, c, du, db, i);
  const __m256 zero = _mm256_setzero_ps();
  for (const int64_t i0 = i; i + 8 <= H; i += 8) {
    if (pf_o != nullptr && (i - i0) % kLine<S> == 0) {
      prefetch(pf_o + i);
      if (HAS_G) prefetch(pf_g + i);
      if (!NT) prefetch_write(pf_gp + i);
    }
    __m256 cg = _mm256_loadu_ps(c + i);
    if (HAS_G) cg = _mm256_add_ps(cg, load8(g + i));
    // The gate "not h <= 0": the ordered compare is false at NaN, which keeps the gradient.
    const __m256 closed = _mm256_cmp_ps(load8(o + i), zero, _CMP_LE_OQ);
    const __m256 dd = _mm256_andnot_ps(closed, cg);
    store8<NT>(gp + i, dd);
    _mm256_storeu_ps(c + i, _mm256_mul_ps(dd, _mm256_loadu_ps(u + i)));
    _mm256_storeu_ps(db + i, _mm256_add_ps(_mm256_loadu_ps(db + i), dd));
    if (PREV != 0) {
      const __m256 hp = PREV == 1 ? load8(ps + i) : _mm256_loadu_ps(pa + i);
      _mm256_storeu_ps(du + i, _mm256_fmadd_ps(dd, hp, _mm256_loadu_ps(du + i)));
    }
  }
  const void* rest = PREV == 1 ? static_cast<const void*>(ps + i) : static_cast<const void*>(pa + i);
  backward_row<true, HAS_G, PREV>(HAS_G ? g + i : g, 1, o + i, 1, rest, gp + i, 1, u + i, c + i,
                                   du + i, db + i, H - i);
}

}  // namespace simd
#endif  // INDRNN_SIMD

// Where the SIMD loops run, outputs of at least p.stream_min bytes (cpu_compiled.STREAM_MIN_BYTES)
// are written with streaming stores: they would not stay in the caches until their next use
// anyway, and a streaming store skips the read of the line that a normal store first does (the
// forward then moves 2 bytes per output byte instead of 3).

// A unit-stride forward row: the SIMD loop for float accumulation where built, else the generic.
template <class S, class A>
void forward_unit(bool nt, const S* x, S* o, const A* u, const A* bias, A* h, int64_t H,
                  const S* pf, const S* pf_out) {
#ifdef INDRNN_SIMD
  if constexpr (std::is_same_v<A, float>) {
    if (nt) simd::forward<true>(x, o, u, bias, h, H, pf, pf_out);
    else simd::forward<false>(x, o, u, bias, h, H, pf, pf_out);
    return;
  }
#endif
  (void)nt;
  (void)pf;
  (void)pf_out;
  forward_row<true>(x, 1, o, 1, u, bias, h, H);
}

// A unit-stride backward row, likewise.
template <bool HAS_G, class S, class A>
void backward_unit(bool nt, int prev_kind, const S* g, const S* o, const void* prev, S* gp,
                   const A* u, A* c, A* du, A* db, int64_t H, const S* pf_o, const S* pf_g,
                   const S* pf_gp) {
#ifdef INDRNN_SIMD
  if constexpr (std::is_same_v<A, float>) {
    auto run = [&](auto stream) {  // stream: std::bool_constant, NT as a compile-time value
      constexpr bool NT = decltype(stream)::value;
      if (prev_kind == 1)
        simd::backward<NT, HAS_G, 1>(g, o, prev, gp, u, c, du, db, H, pf_o, pf_g, pf_gp);
      else if (prev_kind == 2)
        simd::backward<NT, HAS_G, 2>(g, o, prev, gp, u, c, du, db, H, pf_o, pf_g, pf_gp);
      else
        simd::backward<NT, HAS_G, 0>(g, o, prev, gp, u, c, du, db, H, pf_o, pf_g, pf_gp);
    };
    if (nt) run(std::true_type{});
    else run(std::false_type{});
    return;
  }
#endif
  (void)nt;
  (void)pf_o;
  (void)pf_g;
  (void)pf_gp;
  backward_row_prev<true, HAS_G>(prev_kind, g, 1, o, 1, prev, gp, 1, u, c, du, db, H);
}

// The SIMD loops prefetch the row the time loop reaches this many bytes of rows later (at least
// the next row): the hardware prefetchers alone leave a single thread's time loop well below the
// copy bandwidth, and only the loop knows where its next rows are (the time loop of a
// batch-major sequence walks down in memory in the backward, for one).
constexpr int64_t kAheadBytes = 4096;

template <class S>
int64_t rows_ahead(int64_t H) {
  return std::max<int64_t>(1, kAheadBytes / (H * static_cast<int64_t>(sizeof(S))));
}

// A block's time loop visits its nb sequences at each time step in turn, the steps in the order
// t = k (up) or t = T - 1 - k (down) for k = 0 .. T-1. From the visit of (k, j), the visit `a`
// rows later: its t and sequence j, or false past the last one.
inline bool ahead(int64_t T, int64_t nb, int64_t k, int64_t j, int64_t a, bool up, int64_t* t,
                  int64_t* jn) {
  const int64_t kn = k + (j + a) / nb;
  if (kn >= T) return false;
  *t = up ? kn : T - 1 - kn;
  *jn = (j + a) % nb;
  return true;
}

// Streaming stores for an output of this many elements of S (see stream_min).
template <class S>
bool streams(const Params& p, int64_t elements) {
  return elements * static_cast<int64_t>(sizeof(S)) >= p.stream_min;
}

template <class S, class A>
void forward_block(const Params& p, int64_t d, int64_t b0, int64_t nb, bool nt) {
  const int64_t H = p.H;
  std::vector<A> u(H), keep(H), bias(H, A(0)), h(nb * H);
  clip_weights(p, d, u.data(), keep.data());
  if (p.bias.data != nullptr)
    for (int64_t i = 0; i < H; ++i)
      bias[i] = static_cast<A>(load(p.bias, (d * H + i) * p.bias.stride[0]));
  load_states(p.h0, d, b0, nb, H, h.data());
  const int64_t sx = p.pre.stride[2], so = p.out.stride[2];
  const bool unit = sx == 1 && so == 1;
  const bool rev = p.reverse || d == 1;
  const int64_t a = rows_ahead<S>(H);
  for (int64_t step = 0; step < p.T; ++step) {
    const int64_t t = rev ? p.T - 1 - step : step;
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t b = b0 + j;
      A* hb = h.data() + j * H;
      S* o = row<S>(p.out, d, H, t, b);
      if (!real_step(p.mask, t, b)) {
        for (int64_t i = 0; i < H; ++i) o[i * so] = from_acc<S, A>(hb[i]);
        continue;
      }
      const S* x = row<S>(p.pre, d, H, t, b);
      int64_t tf, jf;
      const bool more = unit && ahead(p.T, nb, step, j, a, !rev, &tf, &jf);
      if (unit)
        forward_unit(nt, x, o, u.data(), bias.data(), hb, H,
                     more ? row<S>(p.pre, d, H, tf, b0 + jf) : nullptr,
                     more ? row<S>(p.out, d, H, tf, b0 + jf) : nullptr);
      else
        forward_row<false>(x, sx, o, so, u.data(), bias.data(), hb, H);
    }
  }
  store_states(p.h_n, d, b0, nb, H, h.data());
#ifdef INDRNN_SIMD
  if (nt) _mm_sfence();  // the streaming stores are visible before the call returns
#endif
}

// Fills grad_pre and grad_h0 for sequences b0 .. b0+nb-1 of direction d and writes their
// (unreduced) du, db terms to rows b0 .. of du_rows, db_rows ((B, H) each).
template <class S, class A>
void backward_block(const Params& p, int64_t d, int64_t b0, int64_t nb, A* du_rows,
                    A* db_rows, bool nt) {
  const int64_t H = p.H;
  std::vector<A> u(H), keep(H), c(nb * H), h0(nb * H);
  clip_weights(p, d, u.data(), keep.data());
  load_states(p.grad_hn, d, b0, nb, H, c.data());
  const bool has_h0 = p.h0.data != nullptr;
  if (has_h0) load_states(p.h0, d, b0, nb, H, h0.data());
  A* du = du_rows + b0 * H;
  A* db = db_rows + b0 * H;
  for (int64_t i = 0; i < nb * H; ++i) du[i] = db[i] = A(0);
  const bool has_g = p.grad_out.data != nullptr;
  const int64_t sg = p.grad_out.stride[2], so = p.out.stride[2], sgp = p.grad_pre.stride[2];
  const bool unit = so == 1 && sgp == 1;
  const bool rev = p.reverse || d == 1;
  const int64_t a = rows_ahead<S>(H);
  for (int64_t step = p.T - 1; step >= 0; --step) {
    const int64_t t = rev ? p.T - 1 - step : step;
    const int64_t t_prev = rev ? t + 1 : t - 1;  // the step processed before t (if step > 0)
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t b = b0 + j;
      A* cb = c.data() + j * H;
      const S* g = has_g ? row<S>(p.grad_out, d, H, t, b) : nullptr;
      S* gp = row<S>(p.grad_pre, d, H, t, b);
      if (!real_step(p.mask, t, b)) {
        for (int64_t i = 0; i < H; ++i) {
          if (has_g) cb[i] += to_acc(g[i * sg]);
          gp[i * sgp] = from_acc<S, A>(A(0));
        }
        continue;
      }
      const S* o = row<S>(p.out, d, H, t, b);
      const void* prev = step > 0 ? static_cast<const void*>(row<S>(p.out, d, H, t_prev, b))
                                  : static_cast<const void*>(h0.data() + j * H);
      const int prev_kind = step > 0 ? 1 : (has_h0 ? 2 : 0);
      A* dub = du + j * H;
      A* dbb = db + j * H;
      // The visits run backward in time: the k-th visited step is t = T-1-k (t = k reversed).
      int64_t tf, jf;
      const bool more = unit && ahead(p.T, nb, p.T - 1 - step, j, a, rev, &tf, &jf);
      const S* pf_o = more ? row<S>(p.out, d, H, tf, b0 + jf) : nullptr;
      const S* pf_g = more && has_g ? row<S>(p.grad_out, d, H, tf, b0 + jf) : nullptr;
      const S* pf_gp = more ? row<S>(p.grad_pre, d, H, tf, b0 + jf) : nullptr;
      if (unit && has_g && sg == 1)
        backward_unit<true>(nt, prev_kind, g, o, prev, gp, u.data(), cb, dub, dbb, H, pf_o,
                            pf_g, pf_gp);
      else if (unit && !has_g)
        backward_unit<false>(nt, prev_kind, g, o, prev, gp, u.data(), cb, dub, dbb, H, pf_o,
                             pf_g, pf_gp);
      else if (has_g)
        backward_row_prev<false, true>(prev_kind, g, sg, o, so, prev, gp, sgp, u.data(), cb,
                                       dub, dbb, H);
      else
        backward_row_prev<false, false>(prev_kind, g, sg, o, so, prev, gp, sgp, u.data(), cb,
                                        dub, dbb, H);
    }
  }
  store_states(p.grad_h0, d, b0, nb, H, c.data());
#ifdef INDRNN_SIMD
  if (nt) _mm_sfence();
#endif
}

// Work below this many elements (T * B * D * H) runs on the calling thread: a parallel region
// costs microseconds, which a one-token generation step would feel.
constexpr int64_t kParallelMin = 1 << 15;

// Runs fn(d, b0, nb) over every (direction, sequence block), in parallel over threads. A block
// is the run of sequences one thread owns within one direction when the batch stride is at most
// the time stride (time-major: each step reads one contiguous stretch of rows), and a single
// sequence otherwise (batch-major: each sequence is one contiguous stream).
template <class Fn>
void for_blocks(const Params& p, const View& seq, Fn fn) {
  const int64_t tasks = p.D * p.B;
  int64_t nt = p.T * tasks * p.H >= kParallelMin ? p.num_threads : 1;
  nt = nt < 1 ? 1 : (nt > tasks ? tasks : nt);
  const bool joint = std::llabs(seq.stride[1]) <= std::llabs(seq.stride[0]);
#if defined(__SSE__)
  // The worker threads compute under the caller's floating-point mode, so that
  // torch.set_flush_denormal (which sets the calling thread's MXCSR) holds on every thread.
  const unsigned int csr = _mm_getcsr();
#endif
#pragma omp parallel for num_threads(nt) schedule(static, 1) if (nt > 1)
  for (int64_t k = 0; k < nt; ++k) {
#if defined(__SSE__)
    const unsigned int own = _mm_getcsr();
    if (own != csr) _mm_setcsr(csr);
#endif
    int64_t lo = tasks * k / nt;
    const int64_t hi = tasks * (k + 1) / nt;
    while (lo < hi) {  // split [lo, hi) at the direction boundary
      const int64_t d = lo / p.B, b0 = lo % p.B;
      const int64_t end = std::min(hi, (d + 1) * p.B);
      if (joint) {
        fn(d, b0, end - lo);
      } else {
        for (int64_t b = b0; b < b0 + (end - lo); ++b) fn(d, b, 1);
      }
      lo = end;
    }
#if defined(__SSE__)
    if (own != csr) _mm_setcsr(own);  // the pool's threads are torch's too: leave them as found
#endif
  }
}

template <class S, class A>
void forward(const Params& p) {
  const bool nt = streams<S>(p, p.T * p.B * p.D * p.H);
  for_blocks(p, p.pre,
             [&](int64_t d, int64_t b0, int64_t nb) { forward_block<S, A>(p, d, b0, nb, nt); });
}

template <class S, class A>
void backward(const Params& p) {
  const int64_t H = p.H, B = p.B;
  std::vector<A> du_rows(p.D * B * H), db_rows(p.D * B * H);
  const bool nt = streams<S>(p, p.T * B * p.D * H);
  for_blocks(p, p.out, [&](int64_t d, int64_t b0, int64_t nb) {
    backward_block<S, A>(p, d, b0, nb, du_rows.data() + d * B * H, db_rows.data() + d * B * H,
                         nt);
  });
  // Sum over the batch in a fixed order, whatever the threads did.
  std::vector<A> u(H), keep(H);
  for (int64_t d = 0; d < p.D; ++d) {
    clip_weights(p, d, u.data(), keep.data());
    A* du = static_cast<A*>(const_cast<void*>(p.du.data)) + d * H;  // contiguous (D*H,)
    A* db = static_cast<A*>(const_cast<void*>(p.db.data)) + d * H;
    for (int64_t i = 0; i < H; ++i) du[i] = db[i] = A(0);
    for (int64_t b = 0; b < B; ++b) {
      const A* dur = du_rows.data() + (d * B + b) * H;
      const A* dbr = db_rows.data() + (d * B + b) * H;
      for (int64_t i = 0; i < H; ++i) {
        du[i] += dur[i];
        db[i] += dbr[i];
      }
    }
    for (int64_t i = 0; i < H; ++i) du[i] = keep[i] != A(0) ? du[i] : A(0);
  }
}

}  // namespace

extern "C" {

// The dtype of pre/out (forward) or out/grad_out/grad_pre (backward) selects the instantiation.
void indrnn_cpu_forward(const Params* p) {
  switch (p->pre.dtype) {
    case F32: forward<float, float>(*p); break;
    case F64: forward<double, double>(*p); break;
    case F16: forward<Half, float>(*p); break;
    default: forward<BFloat16, float>(*p);
  }
}

void indrnn_cpu_backward(const Params* p) {
  switch (p->out.dtype) {
    case F32: backward<float, float>(*p); break;
    case F64: backward<double, double>(*p); break;
    case F16: backward<Half, float>(*p); break;
    default: backward<BFloat16, float>(*p);
  }
}

}  // extern "C"
