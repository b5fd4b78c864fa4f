namespace DistributedBackprop.Network;

/// <summary>
/// Told by the backward pass which part of a node's gradient is final, as soon as it is: a worker sends that part
/// to the parameter shards while the layers below are still being differentiated (issue 9's overlap).
/// </summary>
public interface IGradientRelease
{
    /// <summary>
    /// Chooses the order in which layer <paramref name="layer"/>'s blocks of ∂J/∂W (<see cref="ReleaseBlocks"/>) are
    /// computed: <paramref name="order"/> holds them last first and may be permuted in place. Every element is its
    /// own chain, so any order gives the same bits; a worker puts first the blocks another node's shard waits for.
    /// </summary>
    void OrderBlocks(int layer, Span<int> order);

    /// <summary>
    /// Parameters [<paramref name="start"/>, <paramref name="start"/> + <paramref name="count"/>) of the gradient are
    /// final: one block of <see cref="ReleaseBlocks"/>, released once, never written again.
    /// </summary>
    void Released(int start, int count);
}

/// <summary>
/// The blocks in which the backward pass finishes the gradient, as a pure function of the architecture, so a
/// worker and a shard agree on the pieces without telling each other. Backpropagation finishes the layers last
/// first, and within layer l its ∂J/∂W_l in blocks of rows (∂J/∂b_l, computed before them, goes with the block of
/// the last rows, which it follows in the layout). A block holds at most <see cref="BlockFloats"/> weights
/// (784-256-128-10: W_1 in four blocks of 64 rows), so the largest layer, differentiated last, does not hold back
/// its whole gradient until its last row is done.
/// </summary>
public static class ReleaseBlocks
{
    /// <summary>The most weights one block holds (256 KiB), unless one row of W is more.</summary>
    public const int BlockFloats = 65_536;

    /// <summary>Rows of W_l per block: the layer's rows cut into the fewest blocks of at most <see cref="BlockFloats"/>, as even as can be.</summary>
    public static int BlockRows(Architecture architecture, int layer)
    {
        LayerSpec spec = architecture.Layers[layer];
        long blocks = Math.Max(1, ((long)spec.Outputs * spec.Inputs + BlockFloats - 1) / BlockFloats);
        return (int)((spec.Outputs + blocks - 1) / blocks);
    }

    /// <summary>How many blocks layer <paramref name="layer"/> is released in.</summary>
    public static int BlockCount(Architecture architecture, int layer)
    {
        int rows = BlockRows(architecture, layer);
        return (architecture.Layers[layer].Outputs + rows - 1) / rows;
    }

    /// <summary>Block <paramref name="block"/> of layer <paramref name="layer"/> as rows of W_l (the layer's units) [First, End).</summary>
    public static (int First, int End) Rows(Architecture architecture, int layer, int block)
    {
        int outputs = architecture.Layers[layer].Outputs, rows = BlockRows(architecture, layer);
        int first = block * rows;
        if (block < 0 || first >= outputs)
        {
            throw new ArgumentOutOfRangeException(nameof(block), $"layer {layer} has {BlockCount(architecture, layer)} blocks");
        }
        return (first, Math.Min(first + rows, outputs));
    }

    /// <summary>Block <paramref name="block"/> of layer <paramref name="layer"/> as parameters: its rows of W_l, and b_l with the last block.</summary>
    public static (int Start, int Count) Range(Architecture architecture, int layer, int block)
    {
        LayerSpec spec = architecture.Layers[layer];
        var (first, end) = Rows(architecture, layer, block);
        int start = architecture.WeightOffset(layer) + first * spec.Inputs;
        int stop = end == spec.Outputs ? architecture.BiasOffset(layer) + spec.Outputs : architecture.WeightOffset(layer) + end * spec.Inputs;
        return (start, stop - start);
    }

    /// <summary>Every block's first parameter, ascending: where a shard's slice is cut besides its own ends.</summary>
    public static int[] Starts(Architecture architecture) =>
        Enumerable.Range(0, architecture.Layers.Count)
            .SelectMany(l => Enumerable.Range(0, BlockCount(architecture, l)).Select(b => Range(architecture, l, b).Start))
            .ToArray();

    /// <summary>
    /// Parameters [<paramref name="start"/>, <paramref name="start"/> + <paramref name="count"/>) cut where blocks
    /// start, and also at <paramref name="alsoAt"/>: each piece lies in one block. Offsets are from
    /// <paramref name="start"/>, ascending.
    /// </summary>
    public static (int Offset, int Count)[] Cut(Architecture architecture, int start, int count, IEnumerable<int>? alsoAt = null)
    {
        if (start < 0 || count < 1 || start > architecture.ParameterCount - count)
        {
            throw new ArgumentOutOfRangeException(nameof(start), $"[{start}, {start} + {count}) is not a range of the {architecture.ParameterCount} parameters");
        }
        var cuts = Starts(architecture).Concat(alsoAt ?? []).Where(p => p > start && p < start + count).Append(start + count).Distinct().Order().ToArray();
        var pieces = new (int Offset, int Count)[cuts.Length];
        int from = start;
        for (int i = 0; i < cuts.Length; i++)
        {
            pieces[i] = (from - start, cuts[i] - from);
            from = cuts[i];
        }
        return pieces;
    }
}
