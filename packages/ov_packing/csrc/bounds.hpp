// Lower bounds on the number of bins needed to pack a set of lengths.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ov_packing {

// ceil(sum(lengths) / capacity): no packing can use fewer bins.
// Throws std::invalid_argument (naming the index) for a non-positive length or a length above the
// capacity, and for a non-positive capacity.
int64_t lower_bound_bins(const int32_t* lengths, std::size_t count, int64_t capacity);

}  // namespace ov_packing
