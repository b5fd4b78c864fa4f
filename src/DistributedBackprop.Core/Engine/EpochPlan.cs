using DistributedBackprop.Randomness;

namespace DistributedBackprop.Engine;

/// <summary>
/// The order of one epoch: a seeded permutation of the training rows (stream (seed, epoch), so epoch e's
/// order never depends on how epochs before it were computed), cut into global batches of BatchSize
/// rows; the last batch keeps the remainder. Immutable, so workers in one process share it.
/// </summary>
public sealed class EpochPlan
{
    private readonly int[] _order;

    private EpochPlan(int epoch, int[] order, int batchSize)
    {
        Epoch = epoch;
        _order = order;
        BatchSize = batchSize;
        Steps = (order.Length + batchSize - 1) / batchSize;
    }

    public int Epoch { get; }
    public int BatchSize { get; }
    public int Steps { get; }
    public int Rows => _order.Length;

    /// <param name="recycle">a plan nobody reads any more, whose order array may be reused (keeps a long
    /// run of short epochs allocation-free).</param>
    public static EpochPlan Create(int trainRows, int batchSize, ulong seed, int epoch, EpochPlan? recycle = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(trainRows, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        int[] order = recycle is not null && recycle._order.Length == trainRows ? recycle._order : new int[trainRows];
        for (int i = 0; i < order.Length; i++)
        {
            order[i] = i;
        }
        Xoshiro256.ForStream(seed, StreamPurpose.EpochOrder, (ulong)epoch).Shuffle(order);
        return new EpochPlan(epoch, order, batchSize);
    }

    public static int StepsPerEpoch(int trainRows, int batchSize) => (trainRows + batchSize - 1) / batchSize;

    /// <summary>Training-set row indices of step <paramref name="step"/> of this epoch, in batch order.</summary>
    public ReadOnlySpan<int> BatchRows(int step)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(step);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(step, Steps);
        int start = step * BatchSize;
        return _order.AsSpan(start, Math.Min(BatchSize, _order.Length - start));
    }
}
