# Devices, DLPack exchange with torch, and persistence.

"""
    to_gpu!(session)

Move the parameters and states to the GPU. `gpu_device()` falls back to the CPU (with a
warning) when no functional GPU backend is loaded; that is an error here, not a silent
fallback (Python loads LuxCUDA first). The Adam moments are reset: moving restarts the
optimiser.
"""
function to_gpu!(s::Session)
    check_gpu_solver(s)
    device = gpu_device()
    device isa typeof(cpu_device()) &&
        throw(ErrorException("no functional GPU backend: load LuxCUDA (and check CUDA.functional())"))
    return move!(s, device)
end

"""
NLsolve's Anderson keeps its least-squares QR factors in host `Matrix`es (`AndersonCache` in
NLsolve 4.5 `src/solvers/anderson.jl`; `qradd!` in `src/nlsolve/utils.jl`), which meet device
arrays at the first acceleration step. Python refuses this before Julia starts
(`pycdeq.julia.devices`); this is the same rule for direct callers of the bridge.
"""
function check_gpu_solver(s::Session)
    get(s.options, :solver, "") == "anderson" && throw(ArgumentError(
        "Anderson (NLsolveJL) cannot run on a GPU: NLsolve keeps its QR factors on the host"))
    return nothing
end

"""`to_cpu!(session)`: move everything back to the host (the Adam moments are reset)."""
to_cpu!(s::Session) = move!(s, cpu_device())

function move!(s::Session, device)
    s.ps = device(s.ps)
    s.st = device(s.st)
    s.optimiser = nothing
    s.device = device
    return nothing
end

"""
    from_dlpack(tensor)

Wrap a Python DLPack producer (a contiguous torch tensor, CPU or CUDA) as a Julia array
without copying. Dimensions come out reversed: a torch `(batch, features)` tensor becomes a
`(features, batch)` array. Needs CUDA.jl loaded for CUDA tensors (DLPack's CUDA extension).
"""
from_dlpack(tensor) = DLPack.from_dlpack(tensor)

"""
    share(array, torch_from_dlpack)

Hand a Julia array to Python through DLPack (`torch.from_dlpack` as the consumer), without
copying; dimensions are reversed again, so `(classes, batch)` becomes a torch
`(batch, classes)` tensor. Non-strided arrays are collected first.
"""
function share(array::AbstractArray, consumer)
    dense = array isa StridedArray ? array : collect(array)
    return DLPack.share(dense, consumer)
end

const SAVE_FORMAT = "PycdeqBridge/1"

"""
    save(session, path; include_optimiser = true) -> path

Write the build options, the flat parameters (and the Adam state) with `Serialization`.
Readable by `load` under the same Julia and package versions (Serialization's rule).
"""
function save(s::Session, path::AbstractString; include_optimiser::Bool = true)
    optimiser = include_optimiser && s.optimiser !== nothing ? cpu_device()(s.optimiser) :
        nothing
    data = (; format = SAVE_FORMAT, options = s.options, params = get_params(s),
        optimiser, learning_rate = s.learning_rate)
    Serialization.serialize(path, data)
    return path
end

"""`load(path) -> Session` (on the CPU): rebuild from the saved options, then copy weights."""
function load(path::AbstractString)
    data = Serialization.deserialize(path)
    (data isa NamedTuple && get(data, :format, nothing) == SAVE_FORMAT) ||
        throw(ArgumentError("$path is not a $(SAVE_FORMAT) file"))
    s = build_model(; data.options...)
    set_params!(s, data.params)
    s.optimiser = data.optimiser
    s.learning_rate = data.learning_rate
    return s
end
