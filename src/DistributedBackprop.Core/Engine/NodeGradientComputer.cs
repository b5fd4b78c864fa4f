using DistributedBackprop.Data;
using DistributedBackprop.Kernels;
using DistributedBackprop.Network;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Engine;

/// <summary>
/// Computes the gradient of one node of a step's chunk tree: gathers the node's rows of the global batch
/// into the network's input, runs forward and backward with J normalised by the global batch size, and
/// writes the node's gradient (the canonical tree sum of its chunks' gradients). Whoever computes a node —
/// the plain trainer, a thread, a worker actor on another machine — gets the same bits.
/// One instance per thread; allocation-free after the first step of the largest batch.
/// </summary>
public sealed class NodeGradientComputer
{
    private readonly Network<float> _network;
    private readonly Dataset _data;
    private readonly ByteCodedValues? _byteCoded;
    private int[] _chunkStarts = [];

    public NodeGradientComputer(Architecture architecture, Dataset trainingData)
    {
        if (trainingData.Features != architecture.Inputs)
        {
            throw new ArgumentException($"the data has {trainingData.Features} features, the network {architecture.Inputs} inputs");
        }
        _network = new Network<float>(architecture);
        _data = trainingData;
        _byteCoded = trainingData.ByteCoded;
    }

    public Architecture Architecture => _network.Architecture;

    /// <param name="parameters">θ of this step.</param>
    /// <param name="batchRows">training-set indices of the whole global batch, in batch order.</param>
    /// <param name="chunks">C, the number of chunks every batch is cut into.</param>
    /// <param name="node">the canonical tree node to compute.</param>
    /// <param name="gradient">receives ∂J/∂θ of the node (J normalised by the whole batch).</param>
    /// <param name="release">if given, told each part of <paramref name="gradient"/> as soon as it is final.</param>
    public BatchResult Compute(ReadOnlySpan<float> parameters, ReadOnlySpan<int> batchRows, int chunks, TreeNode node, Span<float> gradient, IGradientRelease? release = null)
    {
        Begin(batchRows, chunks, node);
        return Finish(parameters, gradient, release);
    }

    /// <summary>
    /// Gathers the node's rows and starts its forward pass, which <see cref="AdvanceForward"/> runs ahead as θ
    /// arrives and <see cref="Finish"/> completes.
    /// </summary>
    public void Begin(ReadOnlySpan<int> batchRows, int chunks, TreeNode node)
    {
        if (!ChunkTree.IsCanonical(node, chunks))
        {
            throw new ArgumentException($"{node} is not a node of the chunk tree over {chunks} chunks");
        }
        int firstChunk = node.Lo, endChunk = node.Lo + ChunkTree.CoveredChunks(node, chunks);
        int rowStart = ChunkTree.ChunkStart(batchRows.Length, chunks, firstChunk);
        int rowEnd = ChunkTree.ChunkStart(batchRows.Length, chunks, endChunk);
        int rows = rowEnd - rowStart;

        int count = endChunk - firstChunk;
        if (_chunkStarts.Length < count + 1)
        {
            _chunkStarts = new int[count + 1];
        }
        for (int c = 0; c <= count; c++)
        {
            _chunkStarts[c] = ChunkTree.ChunkStart(batchRows.Length, chunks, firstChunk + c) - rowStart;
        }
        _chunkCount = count;
        _normaliser = batchRows.Length;

        ReadOnlySpan<int> nodeRows = batchRows.Slice(rowStart, rows);
        // The same floats either way; byte codes, where the data has them, are a quarter of the bytes to fetch.
        if (_byteCoded is not null)
        {
            RowGather.CopyScaled(_byteCoded.Codes, _data.Features, _byteCoded.Scale, nodeRows, _network.Input(rows));
        }
        else
        {
            RowGather.Copy(_data.Values, _data.Features, nodeRows, _network.Input(rows));
        }
        Span<int> labels = LabelBuffer(rows);
        for (int r = 0; r < rows; r++)
        {
            labels[r] = _data.Labels[nodeRows[r]];
        }
        _rows = rows;
        _network.BeginForward(rows);
    }

    /// <summary>The begun node's forward pass as far as <paramref name="present"/> allows; true once it is complete.</summary>
    /// <param name="parameters">θ of this step where <paramref name="present"/> says so; nothing else in it is read.</param>
    public bool AdvanceForward(ReadOnlySpan<float> parameters, IParameterPresence present)
    {
        CheckBegun();
        return _network.AdvanceForward(parameters, present);
    }

    /// <summary>Completes the begun node's forward pass and runs its backward pass: the node's gradient.</summary>
    /// <param name="parameters">θ of this step, whole: the same values any part of the forward pass ran ahead on.</param>
    public BatchResult Finish(ReadOnlySpan<float> parameters, Span<float> gradient, IGradientRelease? release = null)
    {
        CheckBegun();
        _network.AdvanceForward(parameters, AllParameters.Instance);
        int rows = _rows;
        _rows = -1;
        return _network.Backward(parameters, LabelBuffer(rows), _chunkStarts.AsSpan(0, _chunkCount + 1), _normaliser, gradient, release);
    }

    private int _rows = -1, _chunkCount, _normaliser;

    private void CheckBegun()
    {
        if (_rows < 0)
        {
            throw new InvalidOperationException("no node was begun");
        }
    }

    private int[] _labelBuffer = [];

    private Span<int> LabelBuffer(int rows)
    {
        if (_labelBuffer.Length < rows)
        {
            _labelBuffer = new int[Math.Max(rows, _labelBuffer.Length * 2)];
        }
        return _labelBuffer.AsSpan(0, rows);
    }
}
