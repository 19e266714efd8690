# Models built from a spec, the session that owns their parameters, and flat parameter access.

const VARIANTS = ("vanilla", "skip", "skip_reg", "node")

"""
    mnist_dense(; in_features, width, num_classes, variant, solver, kwargs)

The MNIST fully connected model of the paper's experiments (SciML/DeepEquilibriumNetworks.jl,
`experiments/mnist/mnist_fc.jl` at commit a20094a), with the same structure as
`pycdeq.models.MNISTDense`:

    Chain(Dense(in => width, relu),
          DEQ(Parallel(+, Dense(width => width, relu; use_bias = false),    # W_z z
                          Dense(width => width, relu; use_bias = false)),   # W_x x
              solver; init),
          Dense(width => num_classes))

`init` per variant, as DeepEquilibriumNetworks v2 defines it: `vanilla` → `missing`
(z0 = 0), `skip_reg` → `nothing` (z0 = f(0, x)), `skip` → `Dense(width => width, relu)`
(z0 = g(x)). `node` is the same layer with `problem_type = ODEProblem{false}`:
dz/dt = f(z, x) - z on (0, 1) from z0 = 0.
"""
function mnist_dense(; in_features::Integer, width::Integer, num_classes::Integer,
        variant::AbstractString, solver, kwargs::NamedTuple)
    f = Parallel(+, Dense(width => width, relu; use_bias = false),
        Dense(width => width, relu; use_bias = false))
    deq = if variant == "vanilla"
        DeepEquilibriumNetwork(f, solver; kwargs...)
    elseif variant == "skip_reg"
        SkipDeepEquilibriumNetwork(f, solver; kwargs...)
    elseif variant == "skip"
        SkipDeepEquilibriumNetwork(f, Dense(width => width, relu), solver; kwargs...)
    elseif variant == "node"
        DeepEquilibriumNetwork(f, solver; problem_type = ODEProblem{false}, kwargs...)
    else
        throw(ArgumentError("variant must be one of $(join(VARIANTS, ", ")); got $(repr(variant))"))
    end
    return Chain(Dense(in_features => width, relu), deq, Dense(width => num_classes))
end

"""
    Session

Everything one model needs on the Julia side: the Lux model, its parameters and states, the
optimiser state, the device, and the options it was built from (for `save`/`load`). Python
holds it as an opaque handle.
"""
mutable struct Session
    model::Any
    ps::Any
    st::Any
    options::Dict{Symbol, Any}
    paths::Vector{Vector{Symbol}}
    optimiser::Any          # Optimisers state tree, or `nothing` before the first step
    learning_rate::Float64
    device::Any             # an MLDataDevices device: cpu_device() or gpu_device()
    residual_norm::String   # "max" or "l2": how `forward` reports per-sample residuals
    fixed_depth::Int        # > 0: the DEQ layer is unrolled this many times (`unrolled_deq`)
end

"""
    build_model(; architecture = "mnist-dense", kwargs...) -> Session

Build the model from the options `ModelSpec.julia_kwargs()` produces in Python and set it up
with `Lux.setup(Xoshiro(seed), model)`. The parameters are random until `set_params!`.
"""
function build_model(; kwargs...)
    session = _build(; kwargs...)
    session.options = Dict{Symbol, Any}(kwargs)
    return session
end

function _build(; architecture::AbstractString = "mnist-dense", in_features::Integer,
        width::Integer = 128, num_classes::Integer = 10,
        variant::AbstractString = "vanilla", solver::AbstractString,
        memory::Integer = 30, m::Integer = 5, beta::Real = 1.0,
        termination::AbstractString = "abs", norm::AbstractString = "max",
        safe::Bool = false, best::Bool = false, abstol::Real = 1.0e-3,
        reltol::Real = 1.0e-3, maxiters::Integer = 32, ode_abstol::Real = 1.0e-6,
        ode_reltol::Real = 1.0e-3, dt::Real = 0.0, dtmin::Real = 0.0, adaptive::Bool = true,
        adjoint::AbstractString = "steady_state", adjoint_abstol::Real = 1.0e-3,
        adjoint_reltol::Real = 1.0e-3, adjoint_maxiters::Integer = 10,
        adjoint_restart::Integer = 20, fixed_depth::Integer = 0, seed::Integer = 0)
    architecture == "mnist-dense" ||
        throw(ArgumentError("only architecture \"mnist-dense\" is supported, got $(repr(architecture))"))
    fixed_depth >= 0 || throw(ArgumentError("fixed_depth must be >= 0, got $fixed_depth"))
    (fixed_depth > 0 && variant == "node") &&
        throw(ArgumentError("fixed_depth applies to a DEQ, not to a Neural ODE"))
    alg = make_solver(solver; memory, m, beta)
    kwargs = solve_kwargs(; variant, solver, termination, norm, safe, best, abstol, reltol,
        maxiters, ode_abstol, ode_reltol, dt, dtmin, adaptive, adjoint, adjoint_abstol,
        adjoint_reltol, adjoint_maxiters, adjoint_restart)
    model = mnist_dense(; in_features, width, num_classes, variant, solver = alg, kwargs)
    # The DEQ's own `fixed_depth` state stays `Val(0)`: DeepEquilibriumNetworks' unrolled mode
    # (a `RepeatedLayer` without input injection) feeds the same `(z0, x)` to every repeat,
    # so it returns f(z0, x) whatever the depth. `unrolled_deq` (training.jl) unrolls instead.
    ps, st = Lux.setup(Xoshiro(seed), model)
    return Session(model, ps, st, Dict{Symbol, Any}(), parameter_paths(ps), nothing, 1.0e-3,
        cpu_device(), String(norm), Int(fixed_depth))
end

"""All parameter arrays of a nested NamedTuple, depth first in field order."""
function parameter_paths(ps, prefix::Vector{Symbol} = Symbol[])
    paths = Vector{Vector{Symbol}}()
    for key in keys(ps)
        value = getproperty(ps, key)
        path = vcat(prefix, key)
        if value isa AbstractArray
            push!(paths, path)
        elseif value isa NamedTuple
            append!(paths, parameter_paths(value, path))
        end
    end
    return paths
end

"""Follow `path` into a nested NamedTuple; `nothing` where a level is missing (gradients)."""
function getpath(tree, path::Vector{Symbol})
    for key in path
        (tree isa NamedTuple && haskey(tree, key)) || return nothing
        tree = getproperty(tree, key)
    end
    return tree
end

"""
    layout(session) -> String

`"layer_1.weight=128x784;layer_1.bias=128;..."`: every parameter array's path and Lux size,
in the order of the flat vectors of `get_params`, `set_params!` and `value_and_gradient`.
Python checks it against its own translation before copying any weights.
"""
function layout(s::Session)
    entries = map(s.paths) do path
        string(join(string.(path), "."), "=", join(size(getpath(s.ps, path)), "x"))
    end
    return join(entries, ";")
end

num_params(s::Session) = sum(path -> length(getpath(s.ps, path)), s.paths; init = 0)

"""All parameters as one `Vector{Float32}` (column-major per array, `layout` order)."""
function get_params(s::Session)
    return reduce(vcat, [vec(Array{Float32}(getpath(s.ps, p))) for p in s.paths];
        init = Float32[])
end

"""
    set_params!(session, flat)

Copy a flat vector (any `AbstractVector{<:Real}`, e.g. a zero-copy NumPy view) into the
parameter arrays, in `layout` order. One conversion to `Vector{Float32}` first, so the
session never aliases Python memory.
"""
function set_params!(s::Session, flat::AbstractVector{<:Real})
    total = num_params(s)
    length(flat) == total ||
        throw(DimensionMismatch("expected $total parameters, got $(length(flat))"))
    source = Vector{Float32}(flat)
    offset = 0
    for path in s.paths
        destination = getpath(s.ps, path)
        n = length(destination)
        copyto!(destination, 1, source, offset + 1, n)
        offset += n
    end
    return nothing
end

"""Flatten a gradient tree like `get_params`; missing (`nothing`) entries become zeros."""
function flatten_gradient(s::Session, grads)
    parts = map(s.paths) do path
        g = getpath(grads, path)
        n = length(getpath(s.ps, path))
        g isa AbstractArray ? vec(Array{Float32}(g)) : zeros(Float32, n)
    end
    return reduce(vcat, parts; init = Float32[])
end
