// pybind11 bindings of the packing core: `ov_packing._core`. Work runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <utility>
#include <vector>

#include "bounds.hpp"
#include "packing.hpp"

namespace py = pybind11;

using Int32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

namespace {

void require_one_dimensional(const Int32Array& array, const char* name) {
  if (array.ndim() != 1) {
    throw std::invalid_argument(std::string(name) + " must be one-dimensional, got " +
                                std::to_string(array.ndim()) + " dimensions");
  }
}

// Hands a vector to numpy without copying: the array owns it through a capsule.
template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& values) {
  auto* owned = new std::vector<T>(std::move(values));
  py::capsule owner(owned, [](void* pointer) { delete static_cast<std::vector<T>*>(pointer); });
  return py::array_t<T>(static_cast<py::ssize_t>(owned->size()), owned->data(), owner);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "C++ core of ov_packing: bin packing of sample lengths.";

  m.def(
      "lower_bound_bins",
      [](const Int32Array& lengths, int64_t capacity) {
        require_one_dimensional(lengths, "lengths");
        const int32_t* data = lengths.data();
        const auto count = static_cast<std::size_t>(lengths.size());
        py::gil_scoped_release release;
        return ov_packing::lower_bound_bins(data, count, capacity);
      },
      py::arg("lengths"), py::arg("capacity"),
      "ceil(sum(lengths) / capacity); ValueError for a non-positive or over-capacity length.");

  m.def(
      "pack",
      [](const Int32Array& tokens, const std::optional<Int32Array>& patches, int64_t capacity,
         int64_t patch_capacity, int64_t max_per_bin, uint64_t seed, int threads, bool first_fit,
         bool best_fit) {
        require_one_dimensional(tokens, "tokens");
        ov_packing::PackRequest request;
        request.tokens = tokens.data();
        request.count = static_cast<std::size_t>(tokens.size());
        if (patches.has_value()) {
          require_one_dimensional(*patches, "patches");
          if (patches->size() != tokens.size()) {
            throw std::invalid_argument("tokens and patches differ in length");
          }
          request.patches = patches->data();
        }
        request.capacity = capacity;
        request.patch_capacity = patch_capacity;
        request.max_per_bin = max_per_bin;
        request.seed = seed;
        request.threads = threads;
        request.first_fit = first_fit;
        request.best_fit = best_fit;
        ov_packing::PackResult result;
        {
          py::gil_scoped_release release;
          result = ov_packing::pack(request);
        }
        return py::make_tuple(to_numpy(std::move(result.bin_offsets)),
                              to_numpy(std::move(result.bin_samples)),
                              to_numpy(std::move(result.rejected)),
                              to_numpy(std::move(result.rejected_reasons)), result.algorithm);
      },
      py::arg("tokens"), py::arg("patches"), py::arg("capacity"), py::arg("patch_capacity") = 0,
      py::arg("max_per_bin") = 0, py::arg("seed") = 0, py::arg("threads") = 1,
      py::arg("first_fit") = true, py::arg("best_fit") = true,
      "Pack samples into bins. Returns (bin_offsets int64, bin_samples int32, rejected int32, "
      "rejected_reasons uint8, algorithm).");
}
