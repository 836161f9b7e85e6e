// hash.h -- the AMS sketch hash family, shared by the C++ (CPU) and CUDA code.
//
// ONE definition used by every backend (and mirrored bit-for-bit by
// fda/kernels/reference.py), so that all ranks and all backends agree.
//
// Family (per sketch row r):
//   p      = 2^31 - 1 (Mersenne prime)
//   g_r(i) = a3*x^3 + a2*x^2 + a1*x + a0  (mod p),  x = i  (0 <= i < p)
//   sign   s_r(i) = +1 if (g & 1) == 0 else -1            (bit 0 of g)
//   bucket h_r(i) = ((g >> 1) * m) >> 30                  (bits 1..30 of g)
// The coefficients a0..a3 are uniform in [0, p), so g_r is a 4-wise independent
// function [p] -> [p]; the pair (s_r, h_r) is therefore jointly 4-wise
// independent (up to the O(2^-30) rounding of the range reduction), which
// implies the classical requirement (s 4-wise, h 2-wise independent).
//
// Coefficients come from splitmix64 in random-access form:
//   a_k(r) = splitmix64_mix(seed + (4*r + k + 1) * 0x9E3779B97F4A7C15) mod p
// i.e. the (4r+k+1)-th output of a splitmix64 generator seeded with `seed`.
// Row r's coefficients do not depend on the sketch depth.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define FDA_HD __host__ __device__ __forceinline__
#else
#define FDA_HD inline __attribute__((always_inline))
#endif

namespace fda {
namespace hash {

constexpr uint32_t kPrime = 0x7FFFFFFFu;  // 2^31 - 1
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

// splitmix64 finaliser (Steele, Lea, Flood 2014).
FDA_HD uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Coefficient k (0..3, a_k multiplies x^k) of sketch row r.
FDA_HD uint32_t coefficient(uint64_t seed, uint64_t row, uint64_t k) {
  return static_cast<uint32_t>(splitmix64_mix(seed + (4 * row + k + 1) * kGolden) % kPrime);
}

// x mod p for x < 2^64 - 2^33 (folding twice is enough for x < 2^62 + 2^32).
FDA_HD uint32_t mod_p(uint64_t x) {
  x = (x & kPrime) + (x >> 31);
  x = (x & kPrime) + (x >> 31);
  return static_cast<uint32_t>(x >= kPrime ? x - kPrime : x);
}

// (a + b) mod p for a, b < p: computed in 32 bits, branch-free (vectorises to
// add + sub + unsigned min).
FDA_HD uint32_t add_mod(uint32_t a, uint32_t b) {
  const uint32_t s = a + b;       // < 2^32, no overflow
  const uint32_t t = s - kPrime;  // wraps to a huge value when s < p
  return s < t ? s : t;
}

// g(x) = ((a3 x + a2) x + a1) x + a0 mod p, x < p, a_k < p.
FDA_HD uint32_t poly(uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t x) {
  uint32_t t = a3;
  t = mod_p(static_cast<uint64_t>(t) * x + a2);
  t = mod_p(static_cast<uint64_t>(t) * x + a1);
  t = mod_p(static_cast<uint64_t>(t) * x + a0);
  return t;
}

// Bucket in [0, m) from bits 1..30 of g (multiply-shift range reduction).
FDA_HD uint32_t bucket(uint32_t g, uint32_t m) {
  return static_cast<uint32_t>((static_cast<uint64_t>(g >> 1) * m) >> 30);
}

// The sign as an IEEE-754 sign-bit mask: 0 (+1) or 0x80000000 (-1).
FDA_HD uint32_t sign_mask(uint32_t g) { return g << 31; }

// Sign as +1 / -1.
FDA_HD int sign(uint32_t g) { return 1 - 2 * static_cast<int>(g & 1u); }

}  // namespace hash
}  // namespace fda
