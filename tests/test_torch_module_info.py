"""torch's own module test data, run through fusedrnn.

torch ships, in ``torch.testing._internal.common_modules``, a ModuleInfo for
nn.LSTM, nn.GRU, nn.RNN and their cells: sample inputs (with a
``reference_fn`` for the unbatched ones) and error inputs. Every sample runs,
in fp32 and fp64, in train and eval mode, through torch.nn and fusedrnn with
the same state_dict; outputs, final states and the gradients of every input
and parameter must agree within the project's tolerances, and the sample's
own reference_fn, applied to the fusedrnn module, must give its output. Every
error input must raise torch's exception type (torch.nn's own type, checked
too) with the message the ModuleInfo's regex asks for. The ModuleInfos also
declare second-order gradients: gradgradcheck runs on every fp64 sample.

Importing common_modules runs ``torch.backends.disable_global_flags()``,
which would forbid the rest of the session (the benchmark harness) to set
backend flags by assignment; the import below keeps it from running.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

import fusedrnn
from conftest import TOL
from fusedrnn import reference


def _torch_test_data():
    """common_modules, imported without its common_utils calling disable_global_flags()."""
    disable = torch.backends.disable_global_flags
    torch.backends.disable_global_flags = lambda: None
    try:
        from torch.testing._internal import common_modules
    finally:
        torch.backends.disable_global_flags = disable
    assert not torch.backends.flags_frozen()
    return common_modules


_common = _torch_test_data()
ModuleErrorEnum, module_db = _common.ModuleErrorEnum, _common.module_db

CLASSES = (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN, torch.nn.LSTMCell, torch.nn.GRUCell,
           torch.nn.RNNCell)
PACKED_SAMPLES = (torch.nn.GRU, torch.nn.RNN)  # their ModuleInfos' with_packed_sequence
INFOS = [info for info in module_db if info.module_cls in CLASSES]
DTYPES = (torch.float32, torch.float64)
MODES = (True, False)  # training


def _fused_class(info):
    return getattr(fusedrnn, info.module_cls.__name__)


def _samples():
    """Every sample of every ModuleInfo, dtype and mode (GRU's and RNN's packed samples
    included)."""
    torch.manual_seed(0)  # the samples are random: the same ones on every run
    params = []
    for info, dtype, training in itertools.product(INFOS, DTYPES, MODES):
        extra = [{}, {"with_packed_sequence": True}] if info.module_cls in PACKED_SAMPLES else [{}]
        for kwargs in extra:
            samples = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True,
                                              training=training, **kwargs)
            for sample in samples:
                packed = "packed" if kwargs and _is_packed(sample) else "plain"
                if kwargs and packed == "plain":
                    continue  # already taken without with_packed_sequence
                mode = "train" if training else "eval"
                params.append(pytest.param(info, dtype, training, sample, id=(
                    f"{info.name}-{str(dtype)[6:]}-{mode}-{packed}-{len(params)}")))
    return params


def _is_packed(sample) -> bool:
    return any(isinstance(a, PackedSequence) for a in sample.forward_input.args)


def _errors():
    torch.manual_seed(0)
    params = []
    for info, dtype, training in itertools.product(INFOS, DTYPES, MODES):
        errors = info.module_error_inputs_func(info, device="cpu", dtype=dtype, requires_grad=False,
                                               training=training)
        for k, error in enumerate(errors):
            params.append(pytest.param(info, error, id=(
                f"{info.name}-{str(dtype)[6:]}-{'train' if training else 'eval'}-{k}")))
    return params


SAMPLES = _samples()
WITH_REFERENCE = [p for p in SAMPLES if p.values[3].reference_fn is not None]
ERRORS = _errors()


def test_counts():
    """The counts the README and the report quote; fails if torch's data changes under us."""
    assert len(INFOS) == 6
    packed = sum("-packed-" in p.id for p in SAMPLES)
    assert (len(SAMPLES), packed, len(WITH_REFERENCE), len(ERRORS)) == (540, 192, 540, 232)


# ------------------------------------------------------------------ samples


def _leaf(t):
    return t.detach().clone().requires_grad_(t.requires_grad)


def _fresh(value, dtype=None):
    """A copy of a forward argument whose tensors are new leaves (gradients land there),
    converted to ``dtype`` if one is given."""
    if isinstance(value, PackedSequence):
        return PackedSequence(_fresh(value.data, dtype), value.batch_sizes, value.sorted_indices,
                              value.unsorted_indices)
    if isinstance(value, torch.Tensor):
        return _leaf(value if dtype is None else value.to(dtype))
    if isinstance(value, (tuple, list)):
        return type(value)(_fresh(v, dtype) for v in value)
    return value


def _tensors(value) -> list:
    if isinstance(value, PackedSequence):
        return [value.data]
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _forward_backward(module, args, kwargs, dtype=None) -> dict:
    """Outputs, then gradients of every input tensor and parameter, by name (inputs
    converted to ``dtype`` if one is given)."""
    args, kwargs = _fresh(args, dtype), _fresh(kwargs, dtype)
    outputs = _tensors(module(*args, **kwargs))
    gen = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=gen).to(o.dtype)).sum() for o in outputs)
    module.zero_grad(set_to_none=True)
    loss.backward()
    result = {f"output{i}": o.detach() for i, o in enumerate(outputs)}
    inputs = [t for t in _tensors((args, list(kwargs.values()))) if t.requires_grad]
    result.update({f"grad_input{i}": t.grad for i, t in enumerate(inputs)})
    result.update({f"grad_{n}": p.grad for n, p in module.named_parameters()})
    return result


def _assert_close(actual: dict, expected: dict, tol: float) -> None:
    assert actual.keys() == expected.keys()
    for key, e in expected.items():
        a = actual[key]
        assert a is not None and e is not None, key
        assert a.shape == e.shape and a.dtype == e.dtype, (key, a.shape, e.shape)
        err = (a - e).abs().max().item() if a.numel() else 0.0
        assert err <= tol, f"{key}: max abs error {err:.3e} > {tol:.0e}"


def _pair(info, sample, dtype, training):
    c = sample.constructor_input
    torch.manual_seed(0)
    ref = info.module_cls(*c.args, **c.kwargs).to(dtype).train(training)
    fused = _fused_class(info)(*c.args, **c.kwargs).to(dtype).train(training)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _errors_against(result: dict, exact: dict) -> dict:
    return {k: (v.double() - exact[k]).abs().max().item() if v.numel() else 0.0
            for k, v in result.items()}


@pytest.mark.parametrize("info,dtype,training,sample", SAMPLES)
def test_sample_matches_torch(info, dtype, training, sample):
    """fp64: within 1e-10 of torch.nn. fp32: against torch.nn run in fp64, within 5e-5, or
    no worse than twice torch.nn's own fp32 error where that is larger: the samples draw
    values from [-9, 9], and their weight gradients reach sizes where fp32 rounding alone
    passes 5e-5, in torch.nn too (up to 7e-5 seen)."""
    ref, fused = _pair(info, sample, dtype, training)
    args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
    actual, expected = _forward_backward(fused, args, kwargs), _forward_backward(ref, args, kwargs)
    if dtype == torch.float64:
        _assert_close(actual, expected, TOL[dtype])
        return
    for key, e in expected.items():
        assert actual[key].shape == e.shape and actual[key].dtype == e.dtype, key
    exact = _forward_backward(ref.double(), args, kwargs, torch.float64)
    ours, theirs = _errors_against(actual, exact), _errors_against(expected, exact)
    for key, err in ours.items():
        bound = max(TOL[dtype], reference.low_precision_tolerance(theirs[key]))
        assert err <= bound, f"{key}: error {err:.3e} > {bound:.1e} (torch.nn's {theirs[key]:.1e})"


@pytest.mark.parametrize("info,dtype,training,sample",
                         [p for p in WITH_REFERENCE if not _is_packed(p.values[3])])
def test_sample_reference_fn(info, dtype, training, sample):
    """The sample's own reference: the unbatched call equals the batched call, squeezed."""
    _, fused = _pair(info, sample, dtype, training)
    args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
    with torch.no_grad():
        actual = _tensors(fused(*_fresh(args), **_fresh(kwargs)))
        expected = _tensors(sample.reference_fn(fused, *_fresh(args), **_fresh(kwargs)))
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e, atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("info,dtype,training,sample",
                         [p for p in WITH_REFERENCE if _is_packed(p.values[3])])
def test_packed_sample_reference_fn_fails_on_torch_too(info, dtype, training, sample):
    """GRU's packed samples carry the no-batch-dim reference_fn of the others, which cannot
    take a PackedSequence: it fails inside the reference itself, for torch.nn as for fusedrnn."""
    for module in _pair(info, sample, dtype, training):
        with pytest.raises(AttributeError, match="'PackedSequence' object has no attribute"):
            sample.reference_fn(module, *_fresh(sample.forward_input.args))


# ----------------------------------------------------------- double backward


@pytest.mark.parametrize("info,dtype,training,sample",
                         [p for p in SAMPLES if p.values[1] == torch.float64 and not p.values[2]])
def test_sample_gradgradcheck(info, dtype, training, sample):
    """The ModuleInfos declare supports_gradgrad: gradgradcheck over inputs and parameters."""
    _, fused = _pair(info, sample, dtype, training)
    args, kwargs = _fresh(sample.forward_input.args), _fresh(sample.forward_input.kwargs)
    leaves = [t for t in _tensors(args) if t.requires_grad]
    names = [n for n, _ in fused.named_parameters()]

    def fn(*tensors):
        params = dict(zip(names, tensors[len(leaves):]))
        call_args = _replace_leaves(args, iter(tensors[:len(leaves)]))
        return tuple(_tensors(torch.func.functional_call(fused, params, call_args, kwargs)))

    tensors = tuple(leaves) + tuple(p.detach().requires_grad_() for p in fused.parameters())
    assert torch.autograd.gradgradcheck(fn, tensors, fast_mode=True)


def _replace_leaves(value, leaves):
    """``value`` with its gradient-requiring tensors taken, in order, from ``leaves``."""
    if isinstance(value, PackedSequence):
        return PackedSequence(next(leaves), value.batch_sizes, value.sorted_indices,
                              value.unsorted_indices)
    if isinstance(value, torch.Tensor):
        return next(leaves) if value.requires_grad else value
    if isinstance(value, (tuple, list)):
        return type(value)(_replace_leaves(v, leaves) for v in value)
    return value


# ------------------------------------------------------------- error inputs


def _raise(info, module_cls, error):
    c = error.module_error_input.constructor_input
    if error.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
        module_cls(*c.args, **c.kwargs)
        return
    f = error.module_error_input.forward_input
    module_cls(*c.args, **c.kwargs)(*f.args, **f.kwargs)


@pytest.mark.parametrize("info,error", ERRORS)
def test_error_input_like_torch(info, error):
    with pytest.raises(error.error_type, match=error.error_regex) as torch_error:
        _raise(info, info.module_cls, error)
    with pytest.raises(error.error_type, match=error.error_regex) as fused_error:
        _raise(info, _fused_class(info), error)
    assert isinstance(fused_error.value, type(torch_error.value)), (torch_error, fused_error)
