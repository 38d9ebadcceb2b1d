// The cells: each one a type (cells/*.h) holding its gate count, its saved
// layout and its per-element forward and backward, which every kernel calls.
//
// FUSEDRNN_FOR_EACH_CELL lists them; the kernels and ops are instantiated and
// registered for each entry, so a new cell is one header and one line here.
#pragma once

#include "fusedrnn/cells/common.h"
#include "fusedrnn/cells/gru.h"
#include "fusedrnn/cells/lstm.h"
#include "fusedrnn/cells/rnn.h"

#define FUSEDRNN_FOR_EACH_CELL(X) \
  X(::fusedrnn::cells::Lstm)      \
  X(::fusedrnn::cells::Gru)       \
  X(::fusedrnn::cells::RnnTanh)   \
  X(::fusedrnn::cells::RnnRelu)
