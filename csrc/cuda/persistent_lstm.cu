// Persistent LSTM forward and backward: explicit instantiations (see
// persistent.cuh, persistent_backward.cuh).
#include "persistent_backward.cuh"

namespace fusedrnn::cuda::persistent {

template <typename T>
bool lstm_forward(const LstmSequence<T>& p) {
  return launch_persistent<LstmPolicy<T>>(p);
}

template bool lstm_forward<float>(const LstmSequence<float>&);
template bool lstm_forward<double>(const LstmSequence<double>&);

template <typename T>
bool lstm_backward(const LstmBackwardSequence<T>& p) {
  return launch_persistent_backward<LstmBackwardPolicy<T>>(p);
}

template bool lstm_backward<float>(const LstmBackwardSequence<float>&);
template bool lstm_backward<double>(const LstmBackwardSequence<double>&);

}  // namespace fusedrnn::cuda::persistent
