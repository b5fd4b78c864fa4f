using DistributedBackprop.Kernels;
using DistributedBackprop.Network;
using DistributedBackprop.Optimizers;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Engine;

/// <summary>
/// The parameters cut into <see cref="Shards"/> contiguous slices: slice s is [⌊s·P/K⌋, ⌊(s+1)·P/K⌋), the
/// same cut <see cref="GuardedUpdate"/> uses for its lanes. Every operation of the update is element-wise
/// (the tree additions of ∂J/∂W, the optimizer), so cutting changes no bit of the result.
/// </summary>
public sealed record ShardPlan
{
    public ShardPlan(int parameterCount, int shards)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(shards, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(shards, parameterCount);
        ParameterCount = parameterCount;
        Shards = shards;
    }

    public int ParameterCount { get; }

    public int Shards { get; }

    public int Start(int shard) => (int)((long)shard * ParameterCount / Shards);

    public int Count(int shard) => Start(shard + 1) - Start(shard);
}

/// <summary>
/// One shard's share of the parameter server's work, as a plain class: it owns slice
/// [<see cref="Start"/>, <see cref="Start"/> + <see cref="Count"/>) of θ and of the optimizer state, collects
/// the slices of a step's node gradients, reduces them along the chunk tree (<see cref="TreeReducer"/>), checks
/// the sum, and applies W ← W − γ ∂J/∂W to its slice. The two phases are apart on purpose: no shard writes
/// before every shard's sum is known to be finite, so a NaN anywhere leaves all of θ at the last good step.
/// </summary>
public sealed class ShardUpdate
{
    private readonly Optimizer _optimizer;
    private readonly TreeReducer _reducer;
    private readonly int _parts;
    private float[]? _gradient;

    /// <param name="stateSlices">this slice of each optimizer state tensor, in <see cref="Optimizer.StateTensors"/> order.</param>
    public ShardUpdate(Architecture architecture, OptimizerSettings settings, int parts, int start, float[] parameters, long optimizerSteps, IReadOnlyList<float[]> stateSlices)
    {
        Start = start;
        Parameters = parameters;
        _optimizer = new Optimizer(architecture, settings) { Steps = optimizerSteps };
        var state = _optimizer.StateTensors().ToList();
        if (state.Count != stateSlices.Count || stateSlices.Any(s => s.Length != parameters.Length) || (long)start + parameters.Length > architecture.ParameterCount)
        {
            throw new ArgumentException($"a shard at {start} of {parameters.Length} parameters needs {state.Count} state slices of that length, got {stateSlices.Count}");
        }
        for (int i = 0; i < state.Count; i++)
        {
            stateSlices[i].CopyTo(state[i].Values, start);
        }
        _parts = parts;
        _reducer = new TreeReducer(parts, parameters.Length);
    }

    /// <summary>The first parameter of the slice.</summary>
    public int Start { get; }

    public int Count => Parameters.Length;

    /// <summary>θ's slice: written only by <see cref="Apply"/>.</summary>
    public float[] Parameters { get; }

    /// <summary>Updates applied so far (Adam's t), as the server's session counts them.</summary>
    public long OptimizerSteps => _optimizer.Steps;

    public bool IsComplete => _reducer.IsComplete;

    /// <summary>The runs [Lo, Hi) of parts whose slices have not arrived, in order.</summary>
    public List<(int Lo, int Hi)> MissingRuns()
    {
        var runs = new List<(int Lo, int Hi)>();
        _reducer.AddUncoveredRuns(0, _parts, runs);
        return runs;
    }

    /// <summary>
    /// A node's slice of gradient (borrowed until the next <see cref="Reset"/>; added into in place), or false if
    /// one of its parts is already covered (a duplicate).
    /// </summary>
    public bool TryAdd(TreeNode node, float[] values) => _reducer.TryAdd(node, values, default);

    /// <summary>Sums the complete step's node slices along the chunk tree; false if the sum is not finite.</summary>
    public bool Reduce()
    {
        _gradient = _reducer.Reduce().Gradient;
        return FiniteValues.All(_gradient);
    }

    /// <summary>Applies the reduced step with γ = <paramref name="learningRate"/>; false if θ or Adam's v overflowed.</summary>
    public bool Apply(float learningRate)
    {
        float[] gradient = _gradient ?? throw new InvalidOperationException("no reduced step to apply");
        _optimizer.BeginStep();
        _optimizer.ApplySlice(Parameters, gradient, learningRate, Start);
        _gradient = null;
        bool finite = FiniteValues.All(Parameters);
        if (_optimizer.SecondMoment is { } v)
        {
            finite &= FiniteValues.All(v.AsSpan(Start, Count));
        }
        return finite;
    }

    /// <summary>Forgets the node slices of the step (call before collecting the next one).</summary>
    public void Reset()
    {
        _reducer.Reset();
        _gradient = null;
    }

    /// <summary>Copies of this slice of each optimizer state tensor, in <see cref="Optimizer.StateTensors"/> order.</summary>
    public float[][] StateSlices() => StateSlicesOf(_optimizer, Start, Count);

    /// <summary>This slice of each of <paramref name="optimizer"/>'s state tensors (for a new shard).</summary>
    public static float[][] StateSlicesOf(Optimizer optimizer, int start, int count) =>
        optimizer.StateTensors().Select(t => t.Values.AsSpan(start, count).ToArray()).ToArray();

    /// <summary>Writes a shard's slices back into the whole θ and optimizer state (to checkpoint or evaluate).</summary>
    public static void Gather(float[] parameters, Optimizer optimizer, int start, float[] parameterSlice, IReadOnlyList<float[]> stateSlices)
    {
        parameterSlice.CopyTo(parameters, start);
        int i = 0;
        foreach (var (_, values) in optimizer.StateTensors())
        {
            stateSlices[i++].CopyTo(values, start);
        }
    }
}
