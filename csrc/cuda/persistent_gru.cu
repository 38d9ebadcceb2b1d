// Persistent GRU forward and backward: explicit instantiations (see
// persistent.cuh, persistent_backward.cuh).
#include "persistent_backward.cuh"

namespace fusedrnn::cuda::persistent {

template <typename T>
bool gru_forward(const GruSequence<T>& p) {
  return launch_persistent<GruPolicy<T>>(p);
}

template bool gru_forward<float>(const GruSequence<float>&);
template bool gru_forward<double>(const GruSequence<double>&);

template <typename T>
bool gru_backward(const GruBackwardSequence<T>& p) {
  return launch_persistent_backward<GruBackwardPolicy<T>>(p);
}

template bool gru_backward<float>(const GruBackwardSequence<float>&);
template bool gru_backward<double>(const GruBackwardSequence<double>&);

}  // namespace fusedrnn::cuda::persistent
