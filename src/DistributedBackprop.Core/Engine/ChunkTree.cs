using System.Numerics;

namespace DistributedBackprop.Engine;

/// <summary>A node of the canonical reduction tree: chunks [Lo, Lo + Size) with Size a power of two and Lo a multiple of Size.</summary>
public readonly record struct TreeNode(int Lo, int Size)
{
    public override string ToString() => $"[{Lo},{Lo + Size})";
}

/// <summary>
/// The definition of one training step's gradient, shared by every way of computing it.
///
/// A global batch of n rows is cut into a fixed number C of chunks (chunk c = rows [⌊c·n/C⌋, ⌊(c+1)·n/C⌋)),
/// independent of how many workers or threads there are. The step's gradient is
/// <c>G = node(0, R)</c> on the complete binary tree over R = 2^⌈log2 C⌉ leaves, where a leaf is one chunk's
/// gradient (every sum inside it runs over the chunk's rows in order, starting from +0) and
/// <c>node(lo, s) = node(lo, s/2) + node(lo + s/2, s/2)</c>, the right half being skipped when it lies
/// wholly beyond chunk C−1. Floating-point addition is not associative, so fixing the tree fixes the bits;
/// anyone holding an aligned run of chunks may compute that subtree, and the result is the same whoever
/// does. Cost: C − 1 vector additions of the gradient per step, spread over whoever combines.
/// </summary>
public static class ChunkTree
{
    /// <summary>First row of chunk <paramref name="chunk"/> in a batch of <paramref name="batchRows"/> rows.</summary>
    public static int ChunkStart(int batchRows, int chunks, int chunk) => (int)((long)chunk * batchRows / chunks);

    /// <summary>Number of leaves of the complete tree: the smallest power of two ≥ chunks.</summary>
    public static int RootSize(int chunks) => chunks <= 1 ? 1 : (int)BitOperations.RoundUpToPowerOf2((uint)chunks);

    public static TreeNode Root(int chunks) => new(0, RootSize(chunks));

    /// <summary>Tiles the binary-counter walk of the tree keeps at once (log2 C + 2 covers the push before a merge).</summary>
    public static int MaxStackDepth(int chunks) => chunks <= 1 ? 1 : BitOperations.Log2((uint)chunks) + 2;

    /// <summary>Chunks a node covers once the tree is cut at <paramref name="chunks"/>.</summary>
    public static int CoveredChunks(TreeNode node, int chunks) => Math.Max(0, Math.Min(node.Lo + node.Size, chunks) - node.Lo);

    /// <summary>
    /// True for a node whose value is not just its left child's: Size 1, or a right half that holds a chunk.
    /// Every computed subtree is named by such a node, so one value has one name.
    /// </summary>
    public static bool IsCanonical(TreeNode node, int chunks) =>
        node.Size >= 1 && BitOperations.IsPow2(node.Size) && node.Lo >= 0 && node.Lo % node.Size == 0
        && node.Lo < chunks && (node.Size == 1 || node.Lo + node.Size / 2 < chunks);

    /// <summary>
    /// The fewest canonical nodes that exactly cover chunks [lo, hi): what a worker holding that range
    /// computes and sends (each node pre-combined, so the receiver adds fewer buffers).
    /// </summary>
    public static void Decompose(int lo, int hi, int chunks, List<TreeNode> into)
    {
        if (lo < 0 || hi > chunks || lo > hi)
        {
            throw new ArgumentOutOfRangeException(nameof(lo), $"range [{lo},{hi}) is not inside [0,{chunks})");
        }
        while (lo < hi)
        {
            int size = 1;
            while (true)
            {
                int doubled = size * 2;
                if (lo % doubled != 0 || lo + size >= chunks || Math.Min(lo + doubled, chunks) > hi)
                {
                    break;
                }
                size = doubled;
            }
            into.Add(new TreeNode(lo, size));
            lo = Math.Min(lo + size, chunks);
        }
    }

    public static List<TreeNode> Decompose(int lo, int hi, int chunks)
    {
        var nodes = new List<TreeNode>();
        Decompose(lo, hi, chunks, nodes);
        return nodes;
    }

    /// <summary>Chunk range [lo, hi) of part <paramref name="part"/> when C chunks are dealt to <paramref name="parts"/> in contiguous, balanced runs.</summary>
    public static (int Lo, int Hi) Share(int chunks, int parts, int part) =>
        ((int)((long)part * chunks / parts), (int)((long)(part + 1) * chunks / parts));

    /// <summary>Index of a node in heap order (root 1, children 2i and 2i+1): a dense key for per-node tables.</summary>
    public static int HeapIndex(TreeNode node, int chunks) => RootSize(chunks) / node.Size + node.Lo / node.Size;

    /// <summary>
    /// The canonical tree sum of per-chunk scalars (e.g. loss sums), by the recursive definition.
    /// </summary>
    public static double Sum(ReadOnlySpan<double> leaves) => leaves.Length == 0 ? 0.0 : SumNode(leaves, 0, RootSize(leaves.Length));

    private static double SumNode(ReadOnlySpan<double> leaves, int lo, int size)
    {
        if (size == 1)
        {
            return leaves[lo];
        }
        int half = size / 2;
        double left = SumNode(leaves, lo, half);
        return lo + half >= leaves.Length ? left : left + SumNode(leaves, lo + half, half);
    }
}
