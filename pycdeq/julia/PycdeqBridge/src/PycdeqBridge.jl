"""
    PycdeqBridge

Glue between pycdeq (Python) and DeepEquilibriumNetworks.jl. Python builds a model from a
flat list of keyword options (`build_model`), copies the torch weights in (`set_params!`)
and then calls a few coarse entry points: `forward`, `value_and_gradient`, `train_step!`,
`fit!`, `predict`, `save` / `load`. Training loops run here; Python calls once per batch or
per epoch, never per solver step.

Layout conventions (the Python side converts; see `pycdeq/julia/convert.py`):

  - features are `(features, batch)` matrices, i.e. a C-contiguous torch/NumPy `(batch,
    features)` array with its dimensions reversed (zero-copy on the Python side);
  - parameters travel as one flat `Vector{Float32}`: every Lux parameter array in
    column-major order, concatenated in the order `layout(session)` reports;
  - class labels are 0-based integers, as in torch.
"""
module PycdeqBridge

using DeepEquilibriumNetworks: DeepEquilibriumNetwork, SkipDeepEquilibriumNetwork,
    DeepEquilibriumSolution
using Lux: Lux, Chain, Dense, NoOpLayer, Parallel, relu, cpu_device, gpu_device
using LuxCore: LuxCore
using NonlinearSolve: LimitedMemoryBroyden, NLsolveJL, AbsNormTerminationMode,
    RelNormTerminationMode, NormTerminationMode, AbsNormSafeTerminationMode,
    RelNormSafeTerminationMode, AbsNormSafeBestTerminationMode,
    RelNormSafeBestTerminationMode
# NLsolve and LineSearches are the two triggers of NonlinearSolve's NLsolveJL extension,
# which provides Anderson acceleration (NonlinearSolve itself has none).
import NLsolve
import LineSearches
import SteadyStateDiffEq  # DynamicSS / SSRootfind, chosen by DeepEquilibriumNetworks
using OrdinaryDiffEqTsit5: Tsit5
using OrdinaryDiffEqLowOrderRK: BS3, DP5, Euler, RK4
using OrdinaryDiffEqAdamsBashforthMoulton: VCAB3
using SciMLBase: ODEProblem
using SciMLSensitivity: SteadyStateAdjoint, GaussAdjoint, BacksolveAdjoint, ZygoteVJP
using LinearSolve: KrylovJL_GMRES
using Zygote: Zygote
using Optimisers: Optimisers
using DLPack: DLPack
using Random: Xoshiro, randperm
using Serialization: Serialization

include("solvers.jl")
include("models.jl")
include("training.jl")
include("interop.jl")

# Nothing is exported: names such as `forward`, `save` and `load` are generic, and Python
# reaches everything qualified (`PycdeqBridge.forward`).

end
