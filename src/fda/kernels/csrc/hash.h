// hash.h -- the AMS sketch hash family, shared by the C++ (CPU) and CUDA code.
//
// ONE definition used by every backend (and mirrored bit-for-bit by
// fda/kernels/reference.py), so that all ranks and all backends agree.
//
// Family: tabulation hashing with a derived character (Thorup and Zhang, "Tabulation-based
// 5-independent hashing with applications to linear probing and second moment estimation",
// SIAM J. Comput. 41(2), 2012).  Index i (< 2^31) is split into the characters a = i >> 8 and
// b = i & 255; row r's 32-bit value is
//   v_r(i) = T0_r[a] ^ T1_r[b] ^ T2_r[a + b]          (a + b as an integer, no carry dropped)
// With fully random tables this is 5-independent (4-independence is what the AMS estimator's
// variance needs: tests/kernels/test_drift_state.py checks the combinatorial condition behind it).
// Each row has tables of its own, so the rows are independent of each other.
//
// Table entries come from splitmix64 in random-access form: rows 2p and 2p + 1 take the low and
// the high half of
//   splitmix64_mix(seed + (1 + k + 2^32 (3 p + t)) * 0x9E3779B97F4A7C15)
// for entry k of table t (0, 1, 2).  Row r's hash does not depend on the depth or on d.
//
// Sign and bucket from a field f of v: F = 16 bits (v & 0xFFFF) when m <= kNarrowMaxWidth
// ("narrow"), else F = 32 (all of v).  The top bit of f is the sign (1 = -1), the F - 1 bits
// below it give the bucket by a multiply-shift, and both come out of one multiply-high:
//   e = (f * 2m) >> F = sign * m + bucket,  bucket = ((f mod 2^(F-1)) * m) >> (F - 1)
// e indexes a table of 2m entries, the positive terms' half and the negative terms' half.  For
// m <= 4096 at least 8 field values fall in every bucket, so the buckets stay close to uniform.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define FDA_HD __host__ __device__ __forceinline__
#else
#define FDA_HD inline __attribute__((always_inline))
#endif

namespace fda {
namespace hash {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
constexpr int kLowBits = 8;                     // b = i & 255, a = i >> 8
constexpr uint32_t kLowSize = 1u << kLowBits;   // entries of T1
constexpr uint32_t kNarrowMaxWidth = 4096;      // widths with 16-bit fields
constexpr int64_t kMaxIndex = int64_t(1) << 31;  // indices hashed: i < 2^31

// splitmix64 finaliser (Steele, Lea, Flood 2014).
FDA_HD uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Entry k of table t for the row pair p: row 2p in the low 32 bits, row 2p + 1 in the high ones.
FDA_HD uint64_t table_pair(uint64_t seed, uint64_t pair, uint64_t t, uint64_t k) {
  return splitmix64_mix(seed + (1 + k + ((3 * pair + t) << 32)) * kGolden);
}

// Entry k of table t of row r.
FDA_HD uint32_t table_entry(uint64_t seed, uint64_t row, uint64_t t, uint64_t k) {
  return static_cast<uint32_t>(table_pair(seed, row >> 1, t, k) >> (32 * (row & 1)));
}

// Entries of T0 and T2 a vector of d elements needs (T1 has kLowSize).
FDA_HD int64_t high_entries(int64_t d) { return (d + kLowSize - 1) >> kLowBits; }
FDA_HD int64_t sum_entries(int64_t d) { return high_entries(d) + kLowSize - 1; }

FDA_HD bool narrow(uint32_t m) { return m <= kNarrowMaxWidth; }

// Signed bucket e = sign * m + bucket in [0, 2m) of row value v.
FDA_HD uint32_t signed_bucket(uint32_t v, uint32_t m) {
  const uint64_t m2 = 2ull * m;
  return narrow(m) ? static_cast<uint32_t>(((v & 0xFFFFu) * m2) >> 16)
                   : static_cast<uint32_t>((v * m2) >> 32);
}

// Row r's value at index i, computed from the seed (the kernels read it from tables instead).
FDA_HD uint32_t value(uint64_t seed, uint64_t row, uint64_t i) {
  const uint64_t a = i >> kLowBits, b = i & (kLowSize - 1);
  return table_entry(seed, row, 0, a) ^ table_entry(seed, row, 1, b) ^ table_entry(seed, row, 2, a + b);
}

}  // namespace hash
}  // namespace fda
