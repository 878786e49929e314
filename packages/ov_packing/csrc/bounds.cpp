#include "bounds.hpp"

#include <stdexcept>
#include <string>

namespace ov_packing {

int64_t lower_bound_bins(const int32_t* lengths, std::size_t count, int64_t capacity) {
  if (capacity <= 0) {
    throw std::invalid_argument("capacity must be positive, got " + std::to_string(capacity));
  }
  int64_t total = 0;  // at most 2^31 * 2^63/2^31 samples before overflow: far beyond any corpus
  for (std::size_t i = 0; i < count; ++i) {
    const int64_t length = lengths[i];
    if (length <= 0) {
      throw std::invalid_argument("length at index " + std::to_string(i) + " is " +
                                  std::to_string(length) + "; lengths must be positive");
    }
    if (length > capacity) {
      throw std::invalid_argument("length at index " + std::to_string(i) + " is " +
                                  std::to_string(length) + ", above the capacity " +
                                  std::to_string(capacity));
    }
    total += length;
  }
  return (total + capacity - 1) / capacity;
}

}  // namespace ov_packing
