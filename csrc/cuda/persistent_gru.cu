// Persistent GRU forward: explicit instantiations (see persistent.cuh).
#include "persistent.cuh"

namespace fusedrnn::cuda::persistent {

template <typename T>
bool gru_forward(const GruSequence<T>& p) {
  return launch_persistent<GruPolicy<T>>(p);
}

template bool gru_forward<float>(const GruSequence<float>&);
template bool gru_forward<double>(const GruSequence<double>&);

}  // namespace fusedrnn::cuda::persistent
