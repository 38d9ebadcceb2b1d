// Persistent LSTM forward: explicit instantiations (see persistent.cuh).
#include "persistent.cuh"

namespace fusedrnn::cuda::persistent {

template <typename T>
bool lstm_forward(const LstmSequence<T>& p) {
  return launch_persistent<LstmPolicy<T>>(p);
}

template bool lstm_forward<float>(const LstmSequence<float>&);
template bool lstm_forward<double>(const LstmSequence<double>&);

}  // namespace fusedrnn::cuda::persistent
