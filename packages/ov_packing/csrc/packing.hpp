// Bin packing of samples into fixed-capacity bins: the algorithm behind `ov_packing.pack`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ov_packing {

enum class RejectReason : uint8_t { kTokensOverCapacity = 1, kPatchesOverCapacity = 2 };

struct PackRequest {
  const int32_t* tokens = nullptr;   // per-sample token counts, all > 0
  const int32_t* patches = nullptr;  // per-sample ViT patch counts (>= 0), or null
  std::size_t count = 0;
  int64_t capacity = 0;        // tokens per bin
  int64_t patch_capacity = 0;  // patches per bin; 0 = unbounded
  int64_t max_per_bin = 0;     // samples per bin; 0 = unbounded
  uint64_t seed = 0;           // permutes the order bins are listed in
  int threads = 1;             // how many candidate packings run at once; never changes results
  bool first_fit = true;       // candidates to run (at least one)
  bool best_fit = true;
};

struct PackResult {
  std::vector<int64_t> bin_offsets;  // CSR: bin b = bin_samples[bin_offsets[b]:bin_offsets[b+1]]
  std::vector<int32_t> bin_samples;  // input indices
  std::vector<int32_t> rejected;     // input indices, ascending
  std::vector<uint8_t> rejected_reasons;
  std::string algorithm;  // the candidate that won
};

// Packs every acceptable sample; see module.cpp / the Python docstring for the algorithm.
// Throws std::invalid_argument naming the sample for a non-positive token count or a negative
// patch count, and for invalid parameters.
PackResult pack(const PackRequest& request);

}  // namespace ov_packing
