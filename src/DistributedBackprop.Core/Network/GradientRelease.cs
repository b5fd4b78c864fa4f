namespace DistributedBackprop.Network;

/// <summary>
/// Told by the backward pass which part of a node's gradient is final, as soon as it is: a worker sends that part
/// to the parameter shards while the layers below are still being differentiated (issue 9's overlap).
/// </summary>
public interface IGradientRelease
{
    /// <summary>
    /// Parameters [<paramref name="from"/>, P) of the gradient are final: the backward pass writes none of them again.
    /// Called with each point of <see cref="ReleaseOrder.Points"/> in turn, so <paramref name="from"/> only decreases.
    /// </summary>
    void Released(int from);
}

/// <summary>
/// Where the backward pass hands its gradient over, as a pure function of the architecture, so a worker and a shard
/// agree on the pieces without telling each other. Backpropagation finishes the layers last first: layer l's ∂J/∂b_l
/// and then its ∂J/∂W_l in blocks of rows, the last rows first. The layout puts b_l after W_l and layer l after
/// layer l − 1, so each release is a suffix of the parameters. A block holds at most <see cref="BlockFloats"/>
/// weights (784-256-128-10: W_1 in four blocks of 64 rows), so the largest layer, differentiated last, does not
/// hold back the whole of its gradient until its last row is done.
/// </summary>
public static class ReleaseOrder
{
    /// <summary>The most weights one release holds (256 KiB), unless one row of W is more.</summary>
    public const int BlockFloats = 65_536;

    /// <summary>Rows of W_l per block: the layer's rows cut into the fewest blocks of at most <see cref="BlockFloats"/>, as even as can be.</summary>
    public static int BlockRows(Architecture architecture, int layer)
    {
        LayerSpec spec = architecture.Layers[layer];
        long blocks = Math.Max(1, ((long)spec.Outputs * spec.Inputs + BlockFloats - 1) / BlockFloats);
        return (int)((spec.Outputs + blocks - 1) / blocks);
    }

    /// <summary>The release points in the order the backward pass reaches them: decreasing, the last one 0.</summary>
    public static int[] Points(Architecture architecture)
    {
        var points = new List<int>();
        for (int l = architecture.Layers.Count - 1; l >= 0; l--)
        {
            int rows = BlockRows(architecture, l), inputs = architecture.Layers[l].Inputs;
            for (int end = architecture.Layers[l].Outputs; end > 0; end = FirstRowOfBlock(end, rows))
            {
                points.Add(architecture.WeightOffset(l) + FirstRowOfBlock(end, rows) * inputs);
            }
        }
        return points.ToArray();
    }

    /// <summary>
    /// Parameters [<paramref name="start"/>, <paramref name="start"/> + <paramref name="count"/>) cut at the release
    /// points inside them: each piece is final at one release. Offsets are from <paramref name="start"/>, ascending.
    /// </summary>
    public static (int Offset, int Count)[] Cut(Architecture architecture, int start, int count)
    {
        if (start < 0 || count < 1 || start > architecture.ParameterCount - count)
        {
            throw new ArgumentOutOfRangeException(nameof(start), $"[{start}, {start} + {count}) is not a range of the {architecture.ParameterCount} parameters");
        }
        var cuts = Points(architecture).Where(p => p > start && p < start + count).Order().Append(start + count).ToArray();
        var pieces = new (int Offset, int Count)[cuts.Length];
        int from = start;
        for (int i = 0; i < cuts.Length; i++)
        {
            pieces[i] = (from - start, cuts[i] - from);
            from = cuts[i];
        }
        return pieces;
    }

    /// <summary>The first row of the block that ends at row <paramref name="end"/> (blocks start at multiples of <paramref name="blockRows"/>).</summary>
    public static int FirstRowOfBlock(int end, int blockRows) => (end - 1) / blockRows * blockRows;
}
