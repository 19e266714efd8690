# Forward passes, gradients and the training loop. All inputs are `(features, batch)`.

"""
    apply_parts(model, x, ps, st, depth) -> (logits, h, z_star, st_new)

The chain's three layers applied one by one, because the losses and the residual need the
injection `h = stem(x)` and `z*` as well as the logits. With `depth > 0` the DEQ layer is
unrolled (`unrolled_deq`) instead of solved.
"""
function apply_parts(model::Chain, x, ps, st, depth::Int)
    layers = model.layers
    h, st_stem = LuxCore.apply(layers.layer_1, x, ps.layer_1, st.layer_1)
    z, st_deq = if depth > 0
        unrolled_deq(layers.layer_2, h, ps.layer_2, st.layer_2, depth)
    else
        LuxCore.apply(layers.layer_2, h, ps.layer_2, st.layer_2)
    end
    y, st_head = LuxCore.apply(layers.layer_3, z, ps.layer_3, st.layer_3)
    return y, h, z, (; layer_1 = st_stem, layer_2 = st_deq, layer_3 = st_head)
end

"""
    unrolled_deq(deq, x, ps, st, depth) -> (z, st_new)

pycdeq's `fixed_depth`: `z0` as the DEQ defines it, then `depth` calls of `f` on the running
state, `z ← f(z, x)`, with plain backpropagation through the calls; `nfe = depth`.

DeepEquilibriumNetworks' own unrolled mode (`st.fixed_depth = Val(d)`) is not used: it wraps
`f` in Lux's `RepeatedLayer` with the default `input_injection = false`, whose generated code
passes the same `(z0, x)` to every repeat, so it returns `f(z0, x)` for every `d`
(docs/julia.md, "Known differences of the reference").
"""
function unrolled_deq(deq, x, ps, st, depth::Int)
    z0 = initial_state(deq, x, ps, st)
    z, st_model = z0, st.model
    for _ in 1:depth
        z, st_model = LuxCore.apply(deq.model, (z, x), ps.model, st_model)
    end
    solution = DeepEquilibriumSolution(z, z0, nothing, zero(eltype(z)), depth, nothing)
    return z, (; st..., model = st_model, solution)
end

"""`z0` of a DEQ layer, by DeepEquilibriumNetworks' rule: `f(0, x)` when its `init` is a
`NoOpLayer` (Skip Reg.), otherwise `init(x)` (zeros for vanilla, `g(x)` for Skip)."""
function initial_state(deq, x, ps, st)
    if deq.init isa NoOpLayer
        z0, _ = LuxCore.apply(deq.model, (zero(x), x), ps.model, st.model)
        return z0
    end
    z0, _ = LuxCore.apply(deq.init, x, ps.init, st.init)
    return z0
end

"""
The layer states to keep between calls: the DEQ's `solution` (which holds the whole SciML
solution, its problem and closures) is replaced by an empty one, so that `testmode` and
device moves do not walk and rebuild it.
"""
function without_solution(st)
    return (; st..., layer_2 = (; st.layer_2..., solution = DeepEquilibriumSolution()))
end

"""
Inputs become owned `Float32` arrays on the session's device. A device array that is already
`Float32` (a CuArray wrapped by DLPack) is used as it is; everything else, including
zero-copy views of NumPy memory, is copied once so the session never aliases Python memory.
"""
function device_input(s::Session, x::AbstractArray)
    x isa DenseArray{Float32} && !(x isa Array) && return x
    return s.device(Array{Float32}(x))
end

"""Per-sample `‖f(z*, h) - z*‖` (max-abs or Euclidean, as pycdeq's termination norm)."""
function sample_residual(s::Session, h, z, ps, st)
    deq = s.model.layers.layer_2
    fz, _ = LuxCore.apply(deq.model, (z, h), ps.layer_2.model, st.layer_2.model)
    r = fz .- z
    s.residual_norm == "l2" && return vec(sqrt.(sum(abs2, r; dims = 1)))
    return vec(maximum(abs, r; dims = 1))
end

"""
    forward(session, x) -> (logits, z_star, z0, nfe, residual)

Inference pass (test mode states). Arrays are `(classes | width, batch)`; `nfe` is the
solver's function-evaluation count for the batch (`-1` if the solver reports none);
`residual` is per sample.
"""
function forward(s::Session, x::AbstractMatrix)
    xd = device_input(s, x)
    y, h, z, st_new = apply_parts(s.model, xd, s.ps, LuxCore.testmode(s.st), s.fixed_depth)
    solution = st_new.layer_2.solution
    residual = sample_residual(s, h, z, s.ps, st_new)
    return (y, z, solution.u0, Int(solution.nfe), residual)
end

"""
    value_and_gradient(session, x, cotangent) -> (value, flat_gradient)

Gradient of `sum(logits .* cotangent)` w.r.t. every parameter, flattened like `get_params`.
With a random `cotangent` this is a generic vector-Jacobian product of the classifier, which
the parity harness compares with torch's.
"""
function value_and_gradient(s::Session, x::AbstractMatrix, cotangent::AbstractMatrix)
    xd = device_input(s, x)
    w = device_input(s, cotangent)
    st = s.st
    depth = s.fixed_depth
    result = Zygote.withgradient(ps -> sum(first(apply_parts(s.model, xd, ps, st, depth)) .* w),
        s.ps)
    return Float64(result.val), flatten_gradient(s, result.grad[1])
end

"""Numerically stable mean cross-entropy of `(classes, batch)` logits and one-hot targets."""
function logit_cross_entropy(logits, targets)
    shifted = logits .- maximum(logits; dims = 1)
    log_probabilities = shifted .- log.(sum(exp.(shifted); dims = 1))
    return -sum(targets .* log_probabilities) / size(logits, 2)
end

num_classes(s::Session) = size(s.ps.layer_3.weight, 1)

"""One-hot `(classes, batch)` targets from 0-based labels, on the session's device."""
function onehot(s::Session, labels::AbstractVector{<:Integer})
    classes = num_classes(s)
    y = zeros(Float32, classes, length(labels))
    for (j, label) in enumerate(labels)
        0 <= label < classes ||
            throw(ArgumentError("label $label is outside 0:$(classes - 1)"))
        y[label + 1, j] = 1
    end
    return s.device(y)
end

has_skip_loss(s::Session) = get(s.options, :variant, "vanilla") in ("skip", "skip_reg")

"""
Training loss: cross-entropy plus, for the Skip variants, `skip_weight * mean|z* - z0|`
(pycdeq's skip loss: L1 mean over every element; `z0 = g(x)` or `f(0, x)` carries its own
gradient, which is what trains `g`).
"""
function objective(s::Session, ps, x, targets, skip_weight, with_skip_loss::Bool)
    logits, _, z, st_new = apply_parts(s.model, x, ps, s.st, s.fixed_depth)
    loss = logit_cross_entropy(logits, targets)
    if with_skip_loss
        difference = z .- st_new.layer_2.solution.u0
        loss = loss + skip_weight * sum(abs, difference) / length(difference)
    end
    return loss, st_new
end

function ensure_optimiser!(s::Session, learning_rate::Real)
    rate = Float64(learning_rate)
    rate > 0 || throw(ArgumentError("learning_rate must be > 0, got $rate"))
    if s.optimiser === nothing
        s.optimiser = Optimisers.setup(Optimisers.Adam(rate), s.ps)
    elseif rate != s.learning_rate
        Optimisers.adjust!(s.optimiser, rate)
    end
    s.learning_rate = rate
    return nothing
end

"""
    train_step!(session, x, labels; learning_rate, skip_weight = 0.01) -> loss

One Adam step (Optimisers.jl) on one batch; returns the batch loss before the step.
"""
function train_step!(s::Session, x::AbstractMatrix, labels::AbstractVector{<:Integer};
        learning_rate::Real = s.learning_rate, skip_weight::Real = 0.01)
    xd = device_input(s, x)
    targets = onehot(s, labels)
    size(xd, 2) == size(targets, 2) || throw(DimensionMismatch(
        "x has $(size(xd, 2)) samples but there are $(size(targets, 2)) labels"))
    ensure_optimiser!(s, learning_rate)
    weight = Float32(skip_weight)
    with_skip_loss = has_skip_loss(s)  # decided outside the differentiated closure
    result = Zygote.withgradient(ps -> objective(s, ps, xd, targets, weight, with_skip_loss), s.ps)
    loss, st_new = result.val
    s.optimiser, s.ps = Optimisers.update!(s.optimiser, s.ps, result.grad[1])
    s.st = without_solution(st_new)
    return Float64(loss)
end

"""
    fit!(session, x, labels; epochs = 1, batch_size = 32, learning_rate, skip_weight = 0.01,
         shuffle = true, seed = 0) -> Vector{Float64}

Mini-batch training entirely in Julia; returns the sample-weighted mean loss of each epoch.
`x` is `(features, samples)` and stays on the host; batches move to the device one by one.
"""
function fit!(s::Session, x::AbstractMatrix, labels::AbstractVector{<:Integer};
        epochs::Integer = 1, batch_size::Integer = 32, learning_rate::Real = s.learning_rate,
        skip_weight::Real = 0.01, shuffle::Bool = true, seed::Integer = 0)
    epochs >= 1 || throw(ArgumentError("epochs must be >= 1, got $epochs"))
    batch_size >= 1 || throw(ArgumentError("batch_size must be >= 1, got $batch_size"))
    features = Matrix{Float32}(x)
    targets = Vector{Int}(labels)
    n = size(features, 2)
    length(targets) == n ||
        throw(DimensionMismatch("x has $n samples but there are $(length(targets)) labels"))
    rng = Xoshiro(seed)
    losses = Float64[]
    for _ in 1:epochs
        order = shuffle ? randperm(rng, n) : collect(1:n)
        total = 0.0
        for first_index in 1:batch_size:n
            batch = order[first_index:min(first_index + batch_size - 1, n)]
            loss = train_step!(s, features[:, batch], targets[batch]; learning_rate,
                skip_weight)
            total += loss * length(batch)
        end
        push!(losses, total / n)
    end
    return losses
end

"""`predict(session, x)`: 0-based class indices, one per sample (a host `Vector{Int}`)."""
function predict(s::Session, x::AbstractMatrix)
    logits = Array(first(forward(s, x)))
    return [argmax(view(logits, :, j)) - 1 for j in axes(logits, 2)]
end
