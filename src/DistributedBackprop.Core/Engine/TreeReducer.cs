using System.Numerics.Tensors;
using DistributedBackprop.Kernels;
using DistributedBackprop.Network;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Engine;

/// <summary>
/// Collects the node gradients of one step and reduces them to the step's gradient along the canonical
/// chunk tree (<see cref="ChunkTree"/>), whatever decomposition they arrived in. Tracks coverage chunk by
/// chunk, so a node that overlaps one already received (a duplicate or a stale reassignment) is refused
/// rather than counted twice. Reduction adds in place into the received buffers (left += right), so it
/// allocates nothing; after <see cref="Reduce"/> (or <see cref="AddRange"/> over every element) the root's buffer
/// holds the result; <see cref="SumRange"/> hands it out block by block instead, and leaves the root's buffer short
/// of its last addition.
/// </summary>
public sealed class TreeReducer
{
    private readonly int _chunks;
    private readonly int _parameterCount;
    private readonly float[]?[] _gradients;
    private readonly BatchResult[] _results;
    private readonly BatchResult[] _partResults;
    private readonly bool[] _covered;
    private readonly (float[] Left, float[] Right)[] _additions;
    private int _coveredCount;
    /// <summary>Σ of the received nodes' bounds (<see cref="FiniteValues.Bound"/>); NaN or +∞ once one came without.</summary>
    private double _boundSum;
    private int _additionCount;
    /// <summary>The buffer the last <see cref="Plan"/> ends the sum in.</summary>
    private float[] _root = [];
    // The fold's two callbacks, made once: Plan runs every step and allocates nothing.
    private readonly ChunkTree.KnownValue<(float[] Gradient, BatchResult Result)> _received;
    private readonly Func<(float[] Gradient, BatchResult Result), (float[] Gradient, BatchResult Result), (float[] Gradient, BatchResult Result)> _planAddition;

    public TreeReducer(int chunks, int parameterCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(chunks, 1);
        _chunks = chunks;
        _parameterCount = parameterCount;
        _gradients = new float[2 * ChunkTree.RootSize(chunks)][];
        _results = new BatchResult[_gradients.Length];
        _partResults = new BatchResult[chunks];
        _covered = new bool[chunks];
        _additions = new (float[], float[])[chunks];
        _received = Received;
        _planAddition = PlanAddition;
    }

    public bool IsComplete => _coveredCount == _chunks;

    public bool IsCovered(int chunk) => _covered[chunk];

    public void Reset()
    {
        Array.Clear(_gradients);
        Array.Clear(_results);
        Array.Clear(_partResults);
        Array.Clear(_covered);
        Array.Clear(_additions);
        _coveredCount = 0;
        _additionCount = 0;
        _boundSum = 0;
        _root = [];
    }

    /// <summary>
    /// Accepts a node's gradient, or refuses it (returns false) when any of its chunks is already covered.
    /// The reducer borrows <paramref name="gradient"/> until <see cref="Reset"/>; it may write into it.
    /// <paramref name="partResults"/>, if not empty, are the figures of each part the node covers (with local
    /// steps: its replicas), kept for <see cref="PartResults"/>. <paramref name="bound"/>, if known, is the largest
    /// magnitude in <paramref name="gradient"/> (<see cref="FiniteValues.Bound"/>) as computed by this process: it lets
    /// the update skip checking the sum before applying it (<see cref="SumIsFinite"/>). A peer's word is not a bound.
    /// </summary>
    public bool TryAdd(TreeNode node, float[] gradient, BatchResult result, ReadOnlySpan<BatchResult> partResults = default, float bound = float.PositiveInfinity)
    {
        if (!ChunkTree.IsCanonical(node, _chunks))
        {
            throw new ArgumentException($"{node} is not a node of the chunk tree over {_chunks} chunks");
        }
        if (gradient.Length != _parameterCount)
        {
            throw new ArgumentException($"gradient of {node} has {gradient.Length} elements, expected {_parameterCount}");
        }
        int end = node.Lo + ChunkTree.CoveredChunks(node, _chunks);
        for (int c = node.Lo; c < end; c++)
        {
            if (_covered[c])
            {
                return false;
            }
        }
        for (int c = node.Lo; c < end; c++)
        {
            _covered[c] = true;
        }
        _coveredCount += end - node.Lo;
        // Only a magnitude counts: a negative bound (or NaN) is no bound, and must not lower the sum.
        _boundSum += bound >= 0 ? bound : double.PositiveInfinity;
        int index = ChunkTree.HeapIndex(node, _chunks);
        _gradients[index] = gradient;
        _results[index] = result;
        if (!partResults.IsEmpty)
        {
            if (partResults.Length != end - node.Lo)
            {
                throw new ArgumentException($"{node} covers {end - node.Lo} parts; {partResults.Length} part results came with it");
            }
            partResults.CopyTo(_partResults.AsSpan(node.Lo));
        }
        return true;
    }

    /// <summary>
    /// Whether every received gradient came with a bound and the bounds prove the sum finite: every element of the
    /// sum, and of every partial sum the tree adds on the way, is at most Σ bounds in magnitude before rounding, and
    /// each rounding raises a partial sum by at most a factor 1 + 2⁻²⁴, once per level of the tree: (1 + 2⁻²⁴)^depth
    /// with depth ≤ 31 for any int chunk count. Σ bounds ≤ float.MaxValue / 4 leaves that and the double sum's own
    /// rounding far inside float's range. So an update may write θ while adding, with no pass to check the sum first.
    /// </summary>
    public bool SumIsFinite => IsComplete && _boundSum <= float.MaxValue / 4.0;

    /// <summary>Each part's own figures, in part order, as the nodes brought them (default for a part whose node brought none).</summary>
    public ReadOnlySpan<BatchResult> PartResults => _partResults;

    /// <summary>Reduces a complete step: returns the buffer holding the root gradient and the step's totals.</summary>
    public (float[] Gradient, BatchResult Result) Reduce()
    {
        var root = Plan();
        AddRange(0, _parameterCount);
        return root;
    }

    /// <summary>
    /// Works out, without touching gradient values, which buffer ends up holding the root and the
    /// additions (left += right, in tree order) that put it there. Follow with <see cref="AddRange"/> or
    /// <see cref="SumRange"/> over every element once (not both); the additions are element-wise, so disjoint
    /// ranges may run in parallel.
    /// </summary>
    public (float[] Gradient, BatchResult Result) Plan()
    {
        if (!IsComplete)
        {
            throw new InvalidOperationException($"only {_coveredCount} of {_chunks} chunks have arrived");
        }
        _additionCount = 0;
        var root = ChunkTree.Fold(_chunks, _received, _planAddition);
        _root = root.Gradient;
        return root;
    }

    /// <summary>Performs the planned additions on elements [start, start + count).</summary>
    public void AddRange(int start, int count) => AddInPlace(_additionCount, start, count);

    /// <summary>The first <paramref name="additions"/> planned additions (left += right) on elements [start, start + count).</summary>
    private void AddInPlace(int additions, int start, int count)
    {
        for (int i = 0; i < additions; i++)
        {
            var (left, right) = _additions[i];
            Span<float> target = left.AsSpan(start, count);
            TensorPrimitives.Add(target, right.AsSpan(start, count), target);
        }
    }

    /// <summary>
    /// The sum on elements [start, start + count) without storing it in the root's buffer: the planned additions run
    /// as in <see cref="AddRange"/> but the last one (the root's: a fold plans it last) writes into
    /// <paramref name="scratch"/>, and the result is that span, or the root's own elements when there is nothing to
    /// add. Every element is the same additions in the same order: the same bits. An update that applies the sum
    /// block by block so never writes the whole sum out and reads it back.
    /// </summary>
    public ReadOnlySpan<float> SumRange(int start, int count, Span<float> scratch)
    {
        // Every addition but the root's is done in place: see SumRangeOnlyReads.
        if (_additionCount == 0)
        {
            return _root.AsSpan(start, count);
        }
        AddInPlace(_additionCount - 1, start, count);
        var (rootLeft, rootRight) = _additions[_additionCount - 1];
        Span<float> sum = scratch[..count];
        TensorPrimitives.Add(rootLeft.AsSpan(start, count), rootRight.AsSpan(start, count), sum);
        return sum;
    }

    /// <summary>
    /// Whether <see cref="SumRange"/> after the last <see cref="Plan"/> only reads the nodes' buffers (at most one
    /// addition: the root's, into the scratch), so that several threads may take the same range at once.
    /// </summary>
    public bool SumRangeOnlyReads => _additionCount <= 1;

    private bool Received(TreeNode node, out (float[] Gradient, BatchResult Result) value)
    {
        int index = ChunkTree.HeapIndex(node, _chunks);
        value = (_gradients[index]!, _results[index]);
        return _gradients[index] is not null;
    }

    /// <summary>Plans left += right (the additions run later, element range by element range).</summary>
    private (float[] Gradient, BatchResult Result) PlanAddition((float[] Gradient, BatchResult Result) left, (float[] Gradient, BatchResult Result) right)
    {
        _additions[_additionCount++] = (left.Gradient, right.Gradient);
        return (left.Gradient, Combine(left.Result, right.Result));
    }

    /// <summary>Two nodes' figures combined (left first): the loss sums add in tree order like the gradients.</summary>
    public static BatchResult Combine(BatchResult left, BatchResult right) =>
        new(left.LossSum + right.LossSum, left.Correct + right.Correct, left.Rows + right.Rows);
}
