using System.Numerics;

namespace DistributedBackprop.Reduction;

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

    /// <summary>The canonical tree sum of per-chunk scalars (e.g. loss sums), without allocating.</summary>
    public static double Sum(ReadOnlySpan<double> leaves)
    {
        if (leaves.Length == 0)
        {
            return 0.0;
        }
        int depth = MaxStackDepth(leaves.Length);
        var walk = new TreeWalk(stackalloc int[depth]);
        Span<double> slots = stackalloc double[depth];
        foreach (double leaf in leaves)
        {
            slots[walk.Push()] = leaf;
            while (walk.TryMerge(out int left, out int right))
            {
                slots[left] += slots[right];
            }
        }
        while (walk.TryFold(out int left, out int right))
        {
            slots[left] += slots[right];
        }
        return slots[0];
    }

    /// <summary>A value of a node when it is a leaf (for <see cref="Fold"/> over per-chunk values).</summary>
    public static bool Leaf<TValue>(TValue[] leaves, TreeNode node, out TValue value)
    {
        value = node.Size == 1 ? leaves[node.Lo] : default!;
        return node.Size == 1;
    }

    /// <summary>The value of a node if it is known without combining its children (every leaf must be).</summary>
    public delegate bool KnownValue<TValue>(TreeNode node, out TValue value);

    /// <summary>
    /// The recursive definition itself, the one top-down walk of the tree (the naive GEMM and the reducer's
    /// plan use it): <c>node(lo, s) = node(lo, s/2) ⊕ node(lo + s/2, s/2)</c>, the right
    /// half skipped when it lies wholly beyond the last chunk; a node whose value is
    /// <paramref name="known"/> is not descended into. Combines left then right, in tree order.
    /// The fast paths walk the same tree bottom-up with <see cref="TreeWalk"/>; tests hold the two equal.
    /// </summary>
    public static TValue Fold<TValue>(int chunks, KnownValue<TValue> known, Func<TValue, TValue, TValue> combine)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(chunks, 1);
        return FoldNode(Root(chunks), chunks, known, combine);
    }

    /// <summary>As <see cref="Fold{TValue}(int, KnownValue{TValue}, Func{TValue, TValue, TValue})"/>, for the subtree under the canonical <paramref name="node"/>.</summary>
    public static TValue Fold<TValue>(TreeNode node, int chunks, KnownValue<TValue> known, Func<TValue, TValue, TValue> combine)
    {
        if (!IsCanonical(node, chunks))
        {
            throw new ArgumentException($"{node} is not a node of the chunk tree over {chunks} chunks");
        }
        return FoldNode(node, chunks, known, combine);
    }

    private static TValue FoldNode<TValue>(TreeNode node, int chunks, KnownValue<TValue> known, Func<TValue, TValue, TValue> combine)
    {
        if (known(node, out TValue value))
        {
            return value;
        }
        if (node.Size == 1)
        {
            throw new InvalidOperationException($"leaf {node} has no value");
        }
        int half = node.Size / 2;
        TValue left = FoldNode(new TreeNode(node.Lo, half), chunks, known, combine);
        return node.Lo + half >= chunks ? left : combine(left, FoldNode(new TreeNode(node.Lo + half, half), chunks, known, combine));
    }
}

/// <summary>
/// The canonical tree walked bottom-up as a binary counter, for the fast paths that hold partial sums in a
/// small stack of slots (GEMM tiles, bias rows): push each chunk's leaf in order, merge the two top slots
/// while they are subtrees of equal height (left += right), and at the end fold what remains from the right.
/// The result is the recursive definition's (<see cref="ChunkTree.Fold"/>): a complete subtree is merged as
/// soon as both halves exist, and a missing right half leaves the left alone until the final fold.
/// At most <see cref="ChunkTree.MaxStackDepth"/> slots are live; slot i is always the i-th from the bottom.
/// </summary>
/// <remarks>
/// <code>
/// var walk = new TreeWalk(stackalloc int[ChunkTree.MaxStackDepth(chunks)]);
/// for each chunk: write its leaf into slot walk.Push(); while (walk.TryMerge(out l, out r)) slot[l] += slot[r];
/// then:           while (walk.TryFold(out l, out r)) slot[l] += slot[r];   // slot 0 holds the root
/// </code>
/// </remarks>
public ref struct TreeWalk(Span<int> heights)
{
    private readonly Span<int> _heights = heights;
    private int _top;

    /// <summary>Slots in use.</summary>
    public readonly int Depth => _top;

    /// <summary>
    /// True when the top slot is a lone leaf waiting for its right sibling: the next leaf may be added straight
    /// into it (<see cref="AddedIntoTop"/>) instead of taking a slot of its own.
    /// </summary>
    public readonly bool TopAwaitsRightLeaf => _top > 0 && _heights[_top - 1] == 0;

    /// <summary>Takes a slot for the next chunk's leaf and returns its index; write the leaf there, then merge.</summary>
    public int Push()
    {
        _heights[_top] = 0;
        return _top++;
    }

    /// <summary>Records that the next chunk's leaf was added into the top slot (when <see cref="TopAwaitsRightLeaf"/>); then merge.</summary>
    public void AddedIntoTop()
    {
        if (!TopAwaitsRightLeaf)
        {
            throw new InvalidOperationException("the top slot is not a lone leaf");
        }
        _heights[_top - 1] = 1;
    }

    /// <summary>When the two top slots are subtrees of equal height: the caller adds slot <paramref name="right"/> into <paramref name="left"/>.</summary>
    public bool TryMerge(out int left, out int right)
    {
        if (_top >= 2 && _heights[_top - 1] == _heights[_top - 2])
        {
            _heights[_top - 2]++;
            return Pop(out left, out right);
        }
        left = right = -1;
        return false;
    }

    /// <summary>After the last chunk: the caller adds slot <paramref name="right"/> into <paramref name="left"/> until this returns false.</summary>
    public bool TryFold(out int left, out int right)
    {
        if (_top >= 2)
        {
            return Pop(out left, out right);
        }
        left = right = -1;
        return false;
    }

    private bool Pop(out int left, out int right)
    {
        left = _top - 2;
        right = _top - 1;
        _top--;
        return true;
    }
}
