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

    /// <summary>
    /// The pieces shard <paramref name="shard"/> sends its slice of θ in, in the order it sends them: the slice cut
    /// where the forward pass's blocks start (<see cref="ReleaseBlocks.Starts"/>, the same blocks of rows of W_l) and
    /// where each layer's bias starts; layer by layer, each layer's bias first. A block of the forward pass needs its
    /// rows of W_l and its entries of b_l (<see cref="Network{T}.AdvanceForward"/>), and b_l follows W_l in the
    /// layout: sent in place, it would hold back every block of the layer until the layer's last rows had come.
    /// Offsets are from the slice's start.
    /// </summary>
    public (int Offset, int Count)[] ParameterPieces(Architecture architecture, int shard)
    {
        if (architecture.ParameterCount != ParameterCount)
        {
            throw new ArgumentException($"the network has {architecture.ParameterCount} parameters, the plan {ParameterCount}");
        }
        ArgumentOutOfRangeException.ThrowIfNegative(shard);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(shard, Shards);
        return ParameterPieces(architecture, Start(shard), Count(shard));
    }

    /// <summary><see cref="ParameterPieces(Architecture, int)"/> of the slice [<paramref name="start"/>, <paramref name="start"/> + <paramref name="count"/>).</summary>
    public static (int Offset, int Count)[] ParameterPieces(Architecture architecture, int start, int count) =>
        ReleaseBlocks.Cut(architecture, start, count, alsoAt: Enumerable.Range(0, architecture.Layers.Count).Select(architecture.BiasOffset))
            .OrderBy(p => LayerAt(architecture, start + p.Offset))
            .ThenBy(p => start + p.Offset >= architecture.BiasOffset(LayerAt(architecture, start + p.Offset)) ? 0 : 1)
            .ThenBy(p => p.Offset)
            .ToArray();

    private static int LayerAt(Architecture architecture, int parameter)
    {
        int layer = architecture.Layers.Count - 1;
        while (architecture.WeightOffset(layer) > parameter)
        {
            layer--;
        }
        return layer;
    }
}

/// <summary>
/// A worker's θ put together from its shards' pieces (<see cref="ShardPlan.ParameterPieces"/>), as a plain class: per
/// shard, the step of the pieces it holds and which of them have come; whether a range of θ is there for a step
/// (the forward pass runs ahead on what is: <see cref="At"/>), and the step θ is whole at. A piece of a newer step
/// than a shard's starts that shard's slice afresh; one of an older step, or one that is not a piece of the
/// shard's cut, is refused and changes nothing.
/// </summary>
public sealed class ThetaAssembly
{
    private readonly ShardPlan _plan;
    private readonly (int Offset, int Count)[][] _pieces;
    private readonly int[][] _offsets;
    private readonly bool[][] _held;
    private readonly int[] _heldCount;
    private readonly long[] _steps;

    public ThetaAssembly(Architecture architecture, ShardPlan plan)
    {
        _plan = plan;
        _pieces = Enumerable.Range(0, plan.Shards).Select(s => plan.ParameterPieces(architecture, s).OrderBy(p => p.Offset).ToArray()).ToArray();
        _offsets = _pieces.Select(pieces => pieces.Select(p => p.Offset).ToArray()).ToArray();
        _held = _pieces.Select(pieces => new bool[pieces.Length]).ToArray();
        _heldCount = new int[plan.Shards];
        _steps = Enumerable.Repeat(-1L, plan.Shards).ToArray();
        Theta = new float[plan.ParameterCount];
        _presence = new StepPresence(this);
    }

    /// <summary>θ as put together so far; only what <see cref="At"/> says is there belongs to a step.</summary>
    public float[] Theta { get; }

    /// <summary>The lowest step any shard's pieces are of (−1 before the first piece of some shard).</summary>
    public long OldestStep => _steps.Min();

    /// <summary>The highest step any shard's pieces are of.</summary>
    public long NewestStep => _steps.Max();

    /// <summary>The step every shard's whole slice is of, or −1 while θ is not whole.</summary>
    public long WholeStep
    {
        get
        {
            for (int shard = 0; shard < _steps.Length; shard++)
            {
                if (_steps[shard] != _steps[0] || _heldCount[shard] != _held[shard].Length)
                {
                    return -1;
                }
            }
            return _steps[0];
        }
    }

    /// <summary>Copies a piece of shard <paramref name="shard"/>'s slice for <paramref name="step"/> into place; false if refused.</summary>
    /// <param name="offset">the piece's first parameter, from the slice's start.</param>
    public bool Take(int shard, long step, int offset, ReadOnlySpan<float> values)
    {
        if ((uint)shard >= (uint)_steps.Length || step < 0 || step < _steps[shard])
        {
            return false;
        }
        int piece = Array.BinarySearch(_offsets[shard], offset);
        if (piece < 0 || _pieces[shard][piece].Count != values.Length)
        {
            return false;
        }
        if (step > _steps[shard])
        {
            _steps[shard] = step;
            Array.Clear(_held[shard]);
            _heldCount[shard] = 0;
        }
        values.CopyTo(Theta.AsSpan(_plan.Start(shard) + offset));
        if (!_held[shard][piece])
        {
            _held[shard][piece] = true;
            _heldCount[shard]++;
        }
        return true;
    }

    /// <summary>Whether every piece of θ overlapping [<paramref name="start"/>, <paramref name="start"/> + <paramref name="count"/>) is there for <paramref name="step"/> (false for a range that is empty or not in θ).</summary>
    public bool Has(long step, int start, int count)
    {
        if (start < 0 || count < 1 || start > Theta.Length - count)
        {
            return false;
        }
        int end = start + count;
        for (int shard = 0; shard < _steps.Length; shard++)
        {
            int lo = Math.Max(start, _plan.Start(shard)), hi = Math.Min(end, _plan.Start(shard) + _plan.Count(shard));
            if (lo >= hi)
            {
                continue;
            }
            if (_steps[shard] != step)
            {
                return false;
            }
            lo -= _plan.Start(shard);
            hi -= _plan.Start(shard);
            int i = Array.BinarySearch(_offsets[shard], lo);
            for (i = i >= 0 ? i : ~i - 1; i < _offsets[shard].Length && _offsets[shard][i] < hi; i++)
            {
                if (!_held[shard][i])
                {
                    return false;
                }
            }
        }
        return true;
    }

    /// <summary>What is there of θ for <paramref name="step"/>, as the forward pass asks (one object, valid until the next call).</summary>
    public IParameterPresence At(long step)
    {
        _presence.Step = step;
        return _presence;
    }

    private readonly StepPresence _presence;

    private sealed class StepPresence(ThetaAssembly assembly) : IParameterPresence
    {
        public long Step { get; set; }

        public bool Has(int start, int count) => assembly.Has(Step, start, count);
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
        ParameterPieces = ShardPlan.ParameterPieces(architecture, start, parameters.Length);
        _reducers = _pieces.Select(p => new TreeReducer(parts, p.Count)).ToArray();
        _sums = new float[_pieces.Length][];
    }

    /// <summary>The pieces of the slice a node's gradient comes in: offsets from <see cref="Start"/>, ascending.</summary>
    public IReadOnlyList<(int Offset, int Count)> Pieces => _pieces;

    /// <summary>The pieces θ's slice goes to the workers in, in sending order (<see cref="ShardPlan.ParameterPieces(Architecture, int)"/>).</summary>
    public IReadOnlyList<(int Offset, int Count)> ParameterPieces { get; }

    /// <summary>The first parameter of the slice.</summary>
    public int Start { get; }

    public int Count => Parameters.Length;

    /// <summary>θ's slice: written only by <see cref="Apply"/>.</summary>
    public float[] Parameters { get; }

    /// <summary>Updates applied so far (Adam's t), as the server's session counts them.</summary>
    public long OptimizerSteps => _optimizer.Steps;

    /// <summary>Every piece of every part is in and summed.</summary>
    public bool IsComplete => _summed == _pieces.Length;

    /// <summary>
    /// The runs [Lo, Hi) of parts of which some piece has not arrived, in order. A run is also cut wherever the
    /// pieces' coverage changes: a run is computed again as the canonical nodes of its parts, and a node whose
    /// parts are partly covered in a piece would be refused by that piece (a duplicate) and never complete it.
    /// </summary>
    public List<(int Lo, int Hi)> MissingRuns()
    {
        var runs = new List<(int Lo, int Hi)>();
        for (int c = 0; c < _parts;)
        {
            if (!Missing(c))
            {
                c++;
                continue;
            }
            int lo = c++;
            while (c < _parts && SameCoverage(lo, c))
            {
                c++;
            }
            runs.Add((lo, c));
        }
        return runs;
    }

    private bool Missing(int part) => !_reducers.All(r => r.IsCovered(part));

    private bool SameCoverage(int part, int other) => _reducers.All(r => r.IsCovered(part) == r.IsCovered(other));

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
        bool finite = true;
        for (int i = 0; i < _pieces.Length; i++)
        {
            var (offset, count) = _pieces[i];
            // Checked as written: the new parameters and Adam's v.
            finite &= _optimizer.ApplySlice(Parameters.AsSpan(offset, count), _sums[i], learningRate, Start + offset);
        }
        Array.Clear(_sums);
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

/// <summary>
/// A worker's side of the overlap, as a plain class: which pieces of a node's gradient (<see cref="ShardPlan.Pieces"/>)
/// each release of the backward pass makes ready, each handed to <c>send</c> once, and the order to ask for a layer's
/// blocks in: those with a piece for a shard on another node first (each group still last first), so they cross
/// their links while the rest is computed; the pieces for this node's own shards cross no link and come last.
/// </summary>
public sealed class PieceRelease : IGradientRelease
{
    private readonly Architecture _architecture;
    private readonly (int Shard, int Start, int Count)[] _pieces;
    private readonly int[] _starts;
    private readonly bool[] _remote;
    private readonly bool[] _sent;
    private readonly Action<int, int, int> _send;

    /// <param name="remote">per shard, whether it is on another node.</param>
    /// <param name="send">called with (shard, first parameter, count) of each piece as it becomes ready.</param>
    public PieceRelease(Architecture architecture, ShardPlan plan, IReadOnlyList<bool> remote, Action<int, int, int> send)
    {
        if (remote.Count != plan.Shards)
        {
            throw new ArgumentException($"{remote.Count} remote flags for {plan.Shards} shards");
        }
        _architecture = architecture;
        _pieces = plan.Pieces(architecture);
        _starts = _pieces.Select(p => p.Start).ToArray();
        _remote = remote.ToArray();
        _sent = new bool[_pieces.Length];
        _send = send;
        AnyRemote = _remote.Contains(true);
    }

    /// <summary>Whether any shard is on another node (in local mode none is: nothing to overlap).</summary>
    public bool AnyRemote { get; }

    /// <summary>A new node's gradient: no piece sent yet.</summary>
    public void Begin() => Array.Clear(_sent);

    public void OrderBlocks(int layer, Span<int> order)
    {
        Span<int> local = order.Length <= 256 ? stackalloc int[order.Length] : new int[order.Length];
        int remote = 0, locals = 0;
        foreach (int block in order)
        {
            var (start, count) = ReleaseBlocks.Range(_architecture, layer, block);
            if (HasRemotePiece(start, count))
            {
                order[remote++] = block;
            }
            else
            {
                local[locals++] = block;
            }
        }
        local[..locals].CopyTo(order[remote..]);
    }

    public void Released(int start, int count)
    {
        for (int i = FirstPieceAt(start); i < _pieces.Length && _pieces[i].Start < start + count; i++)
        {
            Send(i);
        }
    }

    /// <summary>Sends every piece not sent yet, the last first (all of a value no backward pass released: a round's).</summary>
    public void SendRest()
    {
        for (int i = _pieces.Length - 1; i >= 0; i--)
        {
            Send(i);
        }
    }

    private bool HasRemotePiece(int start, int count)
    {
        for (int i = FirstPieceAt(start); i < _pieces.Length && _pieces[i].Start < start + count; i++)
        {
            if (_remote[_pieces[i].Shard])
            {
                return true;
            }
        }
        return false;
    }

    private int FirstPieceAt(int start)
    {
        int i = Array.BinarySearch(_starts, start);
        return i >= 0 ? i : ~i;
    }

    private void Send(int i)
    {
        if (!_sent[i])
        {
            _sent[i] = true;
            var (shard, start, count) = _pieces[i];
            _send(shard, start, count);
        }
    }
}
