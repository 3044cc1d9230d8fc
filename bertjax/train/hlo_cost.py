"""Matmul FLOPs of a compiled XLA program, every loop body counted once per iteration, and the
fused kernels (Mosaic custom calls) it runs.

XLA's own `cost_analysis()` counts a `while` loop's body once, whatever its trip count
(HloCostAnalysis::HandleWhile: "For now compute the cost of a single iteration"), so for a
step whose layers run under `nn.scan`, or whose micro-batches run under `lax.scan`, its FLOPs
are those of one layer and one micro-batch. This module reads the compiled HLO text instead:
the FLOPs of every `dot` and `convolution` (the TPU compiler turns most dots into
convolutions), counted as HloCostAnalysis counts them (an FMA is 2 FLOPs; a convolution's
padding positions do no work), each computation weighted by how often it runs: the trip
count of the loops around it (XLA's `known_trip_count`, else the `i < N` bound of the loop's
condition, which is how JAX lowers `scan` and `fori_loop`). Work inside custom calls (the
splash attention kernel) is invisible here: `kernels` names them.
"""

from __future__ import annotations

import dataclasses
import math
import re

_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*->.*\{\s*$")
_ARRAY = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\w+\[([\d,]*)\]")
_MATMUL = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*\w+\[([\d,]*)\]\S*\s+(dot|convolution)\("
    r"%?([\w.\-]+),\s*%?([\w.\-]+)\)"
)
_INT_CONSTANT = re.compile(
    r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*s(?:32|64)\[\]\S*\s+constant\((\d+)\)"
)
_LESS_THAN = re.compile(r"^\s*ROOT\s.*\scompare\(%?[\w.\-]+,\s*%?([\w.\-]+)\),\s*direction=LT")
_CALLEE = re.compile(r"\b(calls|to_apply|body|condition)=%?([\w.\-]+)")
_CALLEE_LIST = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CONDITION = re.compile(r"\bcondition=%?([\w.\-]+)")
_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
_WINDOW = re.compile(r"window=\{([^}]*)\}")
_DIM_LABELS = re.compile(r"dim_labels=(\w+)_(\w+)->(\w+)")
_GROUPS = re.compile(r"\b(feature|batch)_group_count=(\d+)")
_KERNEL = re.compile(
    r"^\s*(?:ROOT\s+)?%?([\w\-]+?)(?:\.\d+)*\s*=.*custom_call_target=\"tpu_custom_call\""
)


@dataclasses.dataclass(frozen=True)
class ProgramCost:
    """What `analyze` reads from one device's compiled program."""

    matmul_flops: float  # dot + convolution FLOPs of one step, loop bodies x trip counts
    matmul_flops_loops_once: float  # the same with every loop body counted once (XLA's way)
    loops_of_unknown_trip_count: int  # loops with matmuls whose count could not be read
    kernels: tuple[str, ...]  # Mosaic kernels (tpu_custom_call), by name, sorted


@dataclasses.dataclass
class _Computation:
    shapes: dict = dataclasses.field(default_factory=dict)  # instruction -> dims
    matmul_lines: list = dataclasses.field(default_factory=list)
    calls: list = dataclasses.field(default_factory=list)  # (callee, trips: int | str | None)
    int_constants: dict = dataclasses.field(default_factory=dict)
    less_than_bound: str | None = None  # the constant a loop condition compares against


def _ints(text: str, sep: str = ",") -> list[int]:
    return [int(x) for x in text.split(sep) if x]


def _parse(hlo_text: str) -> tuple[dict[str, _Computation], str]:
    computations: dict[str, _Computation] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        if current is None:
            header = _HEADER.match(line)
            if header:
                current = computations.setdefault(header.group(2), _Computation())
                if header.group(1):
                    entry = header.group(2)
            continue
        if line.rstrip() == "}":  # a computation's end (continuation lines can start with "}")
            current = None
            continue
        array = _ARRAY.match(line)
        if array:
            current.shapes[array.group(1)] = _ints(array.group(2))
        if _MATMUL.match(line):
            current.matmul_lines.append(line)
        constant = _INT_CONSTANT.match(line)
        if constant:
            current.int_constants[constant.group(1)] = int(constant.group(2))
        bound = _LESS_THAN.match(line)
        if bound:
            current.less_than_bound = bound.group(1)
        trip = _TRIP_COUNT.search(line)
        for kind, callee in _CALLEE.findall(line):
            if kind != "body":
                current.calls.append((callee, 1))
            elif trip:
                current.calls.append((callee, int(trip.group(1))))
            else:  # resolved from the loop's condition once every computation is read
                current.calls.append((callee, "condition:" + _CONDITION.search(line).group(1)))
        for names in _CALLEE_LIST.findall(line):
            current.calls.extend((name, 1) for name in re.findall(r"%?([\w.\-]+)", names))
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return computations, entry


def _dot_flops(line: str, shapes: dict, out: list[int], lhs: str) -> float:
    contracting = _ints(_CONTRACTING.search(line).group(1))
    return 2 * math.prod(out) * math.prod(shapes[lhs][d] for d in contracting)


def _convolution_flops(line: str, shapes: dict, out: list[int], lhs: str, rhs: str) -> float:
    """2 x (input features / groups) x output features x (batch / groups) x the (output,
    window) position pairs that read an input element rather than padding, per spatial dim."""
    lhs_labels, rhs_labels, out_labels = _DIM_LABELS.search(line).groups()
    lhs_dims, rhs_dims = shapes[lhs], shapes[rhs]
    spatial = sum(c.isdigit() for c in lhs_labels)
    window_match = _WINDOW.search(line)
    window = dict(kv.split("=", 1) for kv in window_match.group(1).split()) if window_match else {}

    def per_dim(key, default):
        return _ints(window[key], "x") if key in window else [default] * spatial

    stride, lhs_dilate, rhs_dilate = (
        per_dim("stride", 1),
        per_dim("lhs_dilate", 1),
        per_dim("rhs_dilate", 1),
    )
    pad_low = (
        [int(p.split("_")[0]) for p in window["pad"].split("x")]
        if "pad" in window
        else [0] * spatial
    )
    positions = 1
    for i in range(spatial):
        size_in = lhs_dims[lhs_labels.index(str(i))]
        size_out = out[out_labels.index(str(i))]
        size_kernel = rhs_dims[rhs_labels.index(str(i))]
        valid = 0
        for k in range(size_kernel):
            for o in range(size_out):
                x = o * stride[i] - pad_low[i] + k * rhs_dilate[i]
                valid += x % lhs_dilate[i] == 0 and 0 <= x // lhs_dilate[i] < size_in
        positions *= valid
    groups = dict(_GROUPS.findall(line))
    features_in = lhs_dims[lhs_labels.index("f")] // int(groups.get("feature", 1))
    batch = lhs_dims[lhs_labels.index("b")] // int(groups.get("batch", 1))
    return 2 * features_in * out[out_labels.index("f")] * batch * positions


def analyze(hlo_text: str) -> ProgramCost:
    """The matmul FLOPs (and Mosaic kernels) of one device's compiled program, from
    `compiled.as_text()`."""
    computations, entry = _parse(hlo_text)
    unknown = set()

    def trips(callee, count):
        if isinstance(count, int):
            return count
        condition = computations.get(count.removeprefix("condition:"))
        bound = condition and condition.int_constants.get(condition.less_than_bound)
        if bound is None:
            unknown.add(callee)
            return 1
        return bound

    memo: dict[tuple[str, bool], float] = {}

    def flops(name: str, with_trips: bool) -> float:
        if (name, with_trips) in memo:
            return memo[name, with_trips]
        comp = computations[name]
        total = 0.0
        for line in comp.matmul_lines:
            out, kind, lhs, rhs = _MATMUL.match(line).groups()
            out = _ints(out)
            if kind == "dot":
                total += _dot_flops(line, comp.shapes, out, lhs)
            else:
                total += _convolution_flops(line, comp.shapes, out, lhs, rhs)
        for callee, count in comp.calls:
            inner = flops(callee, with_trips)
            total += inner * (trips(callee, count) if with_trips and inner else 1)
        memo[name, with_trips] = total
        return total

    kernels = sorted({m.group(1) for m in map(_KERNEL.match, hlo_text.splitlines()) if m})
    return ProgramCost(
        matmul_flops=flops(entry, True),
        matmul_flops_loops_once=flops(entry, False),
        loops_of_unknown_trip_count=len(unknown),
        kernels=tuple(kernels),
    )
