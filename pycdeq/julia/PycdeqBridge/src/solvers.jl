# Solvers, termination rules and adjoints, built from the plain options Python sends
# (strings and numbers; see `ModelSpec.julia_kwargs` in pycdeq/julia/translate.py).

const DISCRETE_SOLVERS = ("broyden", "anderson", "picard")
const ODE_SOLVERS = ("tsit5", "dp5", "bs3", "vcab3", "euler", "rk4")
const NLSOLVE_SOLVERS = ("anderson", "picard")

"""
    SampleNorm{K}()

A norm over a batched state `(dims..., batch)` equal to the *largest per-sample* norm:
`K = :max` takes max-abs, `K = :l2` the Euclidean norm of each sample (column). An absolute
test `SampleNorm(r) ≤ tol` therefore holds exactly when every sample passes pycdeq's
per-sample test `‖r_b‖ ≤ tol`; the solve still stops for the whole batch at once.
"""
struct SampleNorm{K} end

function SampleNorm(kind::AbstractString)
    kind == "max" && return SampleNorm{:max}()
    kind == "l2" && return SampleNorm{:l2}()
    throw(ArgumentError("norm must be \"max\" or \"l2\", got $(repr(kind))"))
end

(::SampleNorm)(x::Number) = abs(x)
(::SampleNorm{:max})(x::AbstractArray) = maximum(abs, x)
(::SampleNorm{:l2})(x::AbstractVector) = sqrt(sum(abs2, x))
function (::SampleNorm{:l2})(x::AbstractArray)
    per_sample = sum(abs2, reshape(x, :, size(x, ndims(x))); dims = 1)
    return sqrt(maximum(per_sample))
end

"""
    make_solver(name; memory, m, beta)

The Julia algorithm for a pycdeq solver name:

  - `"broyden"`: `LimitedMemoryBroyden(; threshold = Val(memory))` (NonlinearSolve);
  - `"anderson"`: `NLsolveJL(; method = :anderson, m, beta)` (NonlinearSolve's NLsolve
    wrapper: `x ← x + beta * r` mixed over the last `m` residuals);
  - `"picard"`: the same with `m = 0`, i.e. damped fixed-point iteration with `beta`;
  - ODE methods `"tsit5"`, `"dp5"`, `"bs3"`, `"vcab3"`, `"euler"`, `"rk4"` (OrdinaryDiffEq),
    which DeepEquilibriumNetworks wraps in `DynamicSS` for a continuous DEQ.
"""
function make_solver(name::AbstractString; memory::Integer = 30, m::Integer = 5,
        beta::Real = 1.0)
    name == "broyden" && return LimitedMemoryBroyden(; threshold = Val(Int(memory)))
    name == "anderson" && return NLsolveJL(; method = :anderson, m = Int(m), beta = Float64(beta))
    name == "picard" && return NLsolveJL(; method = :anderson, m = 0, beta = Float64(beta))
    name == "tsit5" && return Tsit5()
    name == "dp5" && return DP5()
    name == "bs3" && return BS3()
    name == "vcab3" && return VCAB3()
    name == "euler" && return Euler()
    name == "rk4" && return RK4()
    known = join(vcat(collect(DISCRETE_SOLVERS), collect(ODE_SOLVERS)), ", ")
    throw(ArgumentError("unknown solver $(repr(name)); expected one of $known"))
end

"""
    make_termination(mode, norm, safe, best)

NonlinearSolveBase's termination mode for pycdeq's `Termination(mode, norm, safe, best)`,
with the per-sample-aware [`SampleNorm`](@ref). `"abs"` is exact; `"rel"` compares the
largest residual with the largest `‖f(z)‖` of the batch; `"norm"` is abs OR rel here (pycdeq:
abs AND rel). `safe` / `best` select the Safe / SafeBest modes (their patience and
divergence rules are NonlinearSolveBase's, not pycdeq's).
"""
function make_termination(mode::AbstractString, norm::AbstractString, safe::Bool, best::Bool)
    n = SampleNorm(norm)
    if best
        mode == "abs" && return AbsNormSafeBestTerminationMode(n)
        mode == "rel" && return RelNormSafeBestTerminationMode(n)
    elseif safe
        mode == "abs" && return AbsNormSafeTerminationMode(n)
        mode == "rel" && return RelNormSafeTerminationMode(n)
    else
        mode == "abs" && return AbsNormTerminationMode(n)
        mode == "rel" && return RelNormTerminationMode(n)
        mode == "norm" && return NormTerminationMode(n)
    end
    throw(ArgumentError("unsupported termination: mode=$(repr(mode)), safe=$safe, best=$best"))
end

"""
    make_sensealg(name; abstol, reltol, maxiters, restart)

  - `"steady_state"`: `SteadyStateAdjoint` with a matrix-free VJP (Zygote) and an explicit
    `KrylovJL_GMRES(; gmres_restart = restart)` (LinearSolve), truncated at `maxiters` /
    `abstol` / `reltol`: pycdeq's GMRES settings. The linear solver is passed explicitly
    because `linsolve = nothing` (DeepEquilibriumNetworks' default) makes SciMLSensitivity
    build a dense ForwardDiff Jacobian and solve exactly whenever the whole batch state has
    at most 50 entries (`src/steadystate_adjoint.jl`), ignoring the iteration cap, and
    otherwise picks LinearSolve's unrestarted GMRES;
  - `"gauss"`: `GaussAdjoint` (Neural ODE; DeepEquilibriumNetworks' default for ODEs);
  - `"backsolve"`: `BacksolveAdjoint` (Neural ODE, constant memory).
"""
function make_sensealg(name::AbstractString; abstol::Real = 1.0e-3, reltol::Real = 1.0e-3,
        maxiters::Integer = 10, restart::Integer = 20)
    if name == "steady_state"
        restart >= 1 || throw(ArgumentError("adjoint_restart must be >= 1, got $restart"))
        linsolve = KrylovJL_GMRES(; gmres_restart = Int(restart))
        linsolve_kwargs = (; maxiters = Int(maxiters), abstol = Float64(abstol),
            reltol = Float64(reltol))
        return SteadyStateAdjoint(; linsolve, linsolve_kwargs, autojacvec = ZygoteVJP())
    end
    name == "gauss" && return GaussAdjoint(; autojacvec = ZygoteVJP())
    name == "backsolve" && return BacksolveAdjoint(; autojacvec = ZygoteVJP())
    throw(ArgumentError("unknown adjoint $(repr(name)); expected steady_state, gauss or backsolve"))
end

"""Keywords for the ODE integrator (its own tolerances, never the steady-state test's)."""
function integrator_kwargs(; ode_abstol::Real, ode_reltol::Real, dt::Real, dtmin::Real,
        adaptive::Bool)
    kw = (; abstol = Float64(ode_abstol), reltol = Float64(ode_reltol))
    if !adaptive
        dt > 0 || throw(ArgumentError("a fixed-step method needs dt > 0, got dt=$dt"))
        kw = (; kw..., adaptive = false)
    end
    dt > 0 && (kw = (; kw..., dt = Float64(dt)))
    dtmin > 0 && (kw = (; kw..., dtmin = Float64(dtmin)))
    return kw
end

"""
    solve_kwargs(; variant, solver, ...)

The keyword arguments that `DeepEquilibriumNetwork` forwards to `solve` (they override its
defaults `abstol = reltol = 1f-3, maxiters = 32`, max-abs termination, truncated adjoint).
"""
function solve_kwargs(; variant::AbstractString, solver::AbstractString,
        termination::AbstractString, norm::AbstractString, safe::Bool, best::Bool,
        abstol::Real, reltol::Real, maxiters::Integer, ode_abstol::Real, ode_reltol::Real,
        dt::Real, dtmin::Real, adaptive::Bool, adjoint::AbstractString,
        adjoint_abstol::Real, adjoint_reltol::Real, adjoint_maxiters::Integer)
    sensealg = make_sensealg(adjoint; abstol = adjoint_abstol, reltol = adjoint_reltol,
        maxiters = adjoint_maxiters)
    integrator = integrator_kwargs(; ode_abstol, ode_reltol, dt, dtmin, adaptive)
    if variant == "node"
        solver in ODE_SOLVERS ||
            throw(ArgumentError("a Neural ODE needs an ODE method, got $(repr(solver))"))
        # An ODEProblem on (0, 1): the integrator tolerances are the only tolerances.
        return (; integrator..., maxiters = Int(maxiters), sensealg)
    end
    if solver in NLSOLVE_SOLVERS && (termination != "abs" || safe || best)
        # NLsolve tests max|r| <= ftol itself and rejects other termination modes.
        throw(ArgumentError("$solver supports only termination=\"abs\" without safe/best"))
    end
    kw = (; abstol = Float64(abstol), reltol = Float64(reltol), maxiters = Int(maxiters),
        termination_condition = make_termination(termination, norm, safe, best), sensealg)
    if solver in ODE_SOLVERS
        # DynamicSS hands abstol/reltol to both its steady-state test and the integrator, then
        # applies `odesolve_kwargs` last: this keeps the two sets of tolerances apart.
        return (; kw..., odesolve_kwargs = integrator)
    end
    return kw
end
