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

    /// <summary>
    /// The pieces a node's gradient travels to the shards in, ascending: each shard's slice cut at the backward
    /// pass's blocks (<see cref="ReleaseBlocks.Cut"/>, as the shard cuts it), with its first parameter.
    /// </summary>
    public (int Shard, int Start, int Count)[] Pieces(Architecture architecture)
    {
        if (architecture.ParameterCount != ParameterCount)
        {
            throw new ArgumentException($"the network has {architecture.ParameterCount} parameters, the plan {ParameterCount}");
        }
        return Enumerable.Range(0, Shards)
            .SelectMany(s => ReleaseBlocks.Cut(architecture, Start(s), Count(s)).Select(p => (s, Start(s) + p.Offset, p.Count)))
            .ToArray();
    }
}

/// <summary>
/// One shard's share of the parameter server's work, as a plain class: it owns slice
/// [<see cref="Start"/>, <see cref="Start"/> + <see cref="Count"/>) of θ and of the optimizer state, collects
/// the pieces of a step's node gradients (<see cref="Pieces"/>: the slice cut where the backward pass releases
/// its gradient, so workers send each as soon as it is computed), reduces each piece along the chunk tree
/// (<see cref="TreeReducer"/>) as soon as every part of it is in, checks the sums, and applies W ← W − γ ∂J/∂W
/// to its slice. Summing and applying are apart on purpose: no shard writes before every shard's sum is known
/// to be finite, so a NaN anywhere leaves all of θ at the last good step.
/// </summary>
public sealed class ShardUpdate
{
    private readonly Optimizer _optimizer;
    private readonly (int Offset, int Count)[] _pieces;
    /// <summary>One reducer per piece: a piece is summed as soon as its last part is in, while the others still travel.</summary>
    private readonly TreeReducer[] _reducers;
    private readonly float[]?[] _sums;
    private readonly int _parts;
    private int _summed;
    private bool _finite = true;

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
        _pieces = ReleaseBlocks.Cut(architecture, start, parameters.Length);
        _reducers = _pieces.Select(p => new TreeReducer(parts, p.Count)).ToArray();
        _sums = new float[_pieces.Length][];
    }

    /// <summary>The pieces of the slice a node's gradient comes in: offsets from <see cref="Start"/>, ascending.</summary>
    public IReadOnlyList<(int Offset, int Count)> Pieces => _pieces;

    /// <summary>The first parameter of the slice.</summary>
    public int Start { get; }

    public int Count => Parameters.Length;

    /// <summary>θ's slice: written only by <see cref="Apply"/>.</summary>
    public float[] Parameters { get; }

    /// <summary>Updates applied so far (Adam's t), as the server's session counts them.</summary>
    public long OptimizerSteps => _optimizer.Steps;

    /// <summary>Every piece of every part is in and summed.</summary>
    public bool IsComplete => _summed == _pieces.Length;

    /// <summary>The runs [Lo, Hi) of parts of which some piece has not arrived, in order.</summary>
    public List<(int Lo, int Hi)> MissingRuns()
    {
        var runs = new List<(int Lo, int Hi)>();
        for (int c = 0; c < _parts;)
        {
            int lo = c;
            while (c < _parts && !Covered(c)) c++;
            if (c > lo) runs.Add((lo, c));
            while (c < _parts && Covered(c)) c++;
        }
        return runs;
    }

    private bool Covered(int part) => _reducers.All(r => r.IsCovered(part));

    /// <summary>The index of the piece at <paramref name="offset"/> of <paramref name="count"/> values, or −1 if there is none.</summary>
    public int PieceAt(int offset, int count)
    {
        int i = Array.BinarySearch(_pieces, (offset, count));
        return i >= 0 ? i : -1;
    }

    /// <summary>
    /// A node's piece of gradient at <paramref name="offset"/> of the slice (borrowed until the next <see cref="Reset"/>;
    /// added into in place), or false if one of its parts is already covered in that piece (a duplicate). A piece
    /// whose last part this is gets summed at once.
    /// </summary>
    public bool TryAdd(TreeNode node, int offset, float[] values)
    {
        int piece = PieceAt(offset, values.Length);
        if (piece < 0)
        {
            throw new ArgumentException($"no piece of {values.Length} values starts at {offset} of the slice at {Start}");
        }
        TreeReducer reducer = _reducers[piece];
        if (!reducer.TryAdd(node, values, default))
        {
            return false;
        }
        if (reducer.IsComplete)
        {
            float[] sum = reducer.Reduce().Gradient;
            _sums[piece] = sum;
            _finite &= FiniteValues.All(sum);
            _summed++;
        }
        return true;
    }

    /// <summary>Whether the complete step's sum is finite (each piece was summed along the chunk tree as it completed).</summary>
    public bool Reduce() => IsComplete ? _finite : throw new InvalidOperationException($"only {_summed} of {_pieces.Length} pieces are summed");

    /// <summary>Applies the reduced step with γ = <paramref name="learningRate"/>; false if θ or Adam's v overflowed.</summary>
    public bool Apply(float learningRate)
    {
        if (!IsComplete)
        {
            throw new InvalidOperationException("no reduced step to apply");
        }
        _optimizer.BeginStep();
        for (int i = 0; i < _pieces.Length; i++)
        {
            var (offset, count) = _pieces[i];
            _optimizer.ApplySlice(Parameters.AsSpan(offset, count), _sums[i], learningRate, Start + offset);
        }
        Array.Clear(_sums);
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
        foreach (TreeReducer reducer in _reducers)
        {
            reducer.Reset();
        }
        Array.Clear(_sums);
        _summed = 0;
        _finite = true;
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
