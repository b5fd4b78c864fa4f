using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using DistributedBackprop.Engine;
using DistributedBackprop.Kernels;
using DistributedBackprop.Reduction;

namespace DistributedBackprop.Network;

/// <summary>Loss and accuracy counts of a batch (or a node of chunks): <c>LossSum / n</c> is the mean loss.</summary>
public readonly record struct BatchResult(double LossSum, int Correct, int Rows);

/// <summary>
/// The forward and backward passes of a multilayer perceptron over a flat parameter buffer
/// (layout: <see cref="Architecture"/>), with its own workspace. Not thread-safe: one instance per
/// thread or worker; after the first batch of the largest size it allocates nothing.
///
/// Generic so the very same code runs in float32 (training, fast kernels) and float64 (gradient checks,
/// the `gradients` command; naive kernels).
/// </summary>
public sealed class Network<T>
    where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly Architecture _arch;
    private int _capacity;
    private T[] _input = [];
    private readonly T[][] _z;
    private readonly T[][] _a;
    private T[] _delta = [];
    private T[] _dActivation = [];
    private readonly T[] _scratchRow;
    private T[] _biasStack = [];
    private double[] _chunkLoss = [];

    public Network(Architecture architecture)
    {
        _arch = architecture;
        _z = new T[architecture.Layers.Count][];
        _a = new T[architecture.Layers.Count][];
        _scratchRow = new T[architecture.MaxWidth];
        _unitBlockDone = new bool[Enumerable.Range(0, architecture.Layers.Count).Max(l => ReleaseBlocks.BlockCount(architecture, l))];
        for (int l = 0; l < _z.Length; l++)
        {
            _z[l] = [];
            _a[l] = [];
        }
    }

    public Architecture Architecture => _arch;

    /// <summary>The input rows (rows × inputs, row-major) of the next batch, to be filled by the caller.</summary>
    public Span<T> Input(int rows)
    {
        EnsureCapacity(rows);
        return _input.AsSpan(0, rows * _arch.Inputs);
    }

    /// <summary>z_l of the last forward pass (rows × outputs of layer l); for tests that need the ReLU pattern.</summary>
    public ReadOnlySpan<T> PreActivations(int layer, int rows) => _z[layer].AsSpan(0, rows * _arch.Layers[layer].Outputs);

    /// <summary>The output activations a_L (rows × outputs) of the last forward pass.</summary>
    public ReadOnlySpan<T> Output(int rows) => _a[^1].AsSpan(0, rows * _arch.Outputs);

    /// <summary>
    /// Forward pass on the rows in <see cref="Input"/>: for each layer l,
    /// z_l = a_{l−1}·W_lᵀ + b_l and a_l = σ_l(z_l), with a_0 = x
    /// (lecture: z_l = a_{l−1} w_l + b_l; its text writes x_1 for every layer's input, a typo).
    /// Each z element is one FMA chain over the layer's inputs starting from the bias, so a row's result
    /// does not depend on which other rows share its batch.
    /// </summary>
    public void Forward(ReadOnlySpan<T> parameters, int rows)
    {
        BeginForward(rows);
        AdvanceForward(parameters, AllParameters.Instance);
    }

    /// <summary>
    /// Starts a forward pass on the rows in <see cref="Input"/> that <see cref="AdvanceForward"/> runs as far as the
    /// parameters present allow (θ arriving in pieces).
    /// </summary>
    public void BeginForward(int rows)
    {
        if ((uint)rows > (uint)_capacity)
        {
            throw new ArgumentOutOfRangeException(nameof(rows), $"{rows} rows requested but Input() was sized for {_capacity}");
        }
        _forwardRows = rows;
        _forwardLayer = 0;
        Array.Clear(_unitBlockDone);
        _packedInput.Reset();
    }

    /// <summary>
    /// Runs the begun forward pass as far as <paramref name="present"/> allows and tells whether it is complete.
    /// Layer l's units go in the blocks of rows of W_l that <see cref="ReleaseBlocks"/> cuts: a block's z columns
    /// need only its rows of W_l and its entries of b_l, and each element is one chain over the layer's inputs
    /// whichever block it is computed in, so the bits are those of the whole layer at once. Runs of adjacent ready
    /// blocks go in one product; σ_l is applied when the whole layer is done (softmax needs whole rows), and layer
    /// l + 1 starts only then. Parameters not present are never read.
    /// </summary>
    public bool AdvanceForward(ReadOnlySpan<T> parameters, IParameterPresence present)
    {
        CheckParameters(parameters);
        if (_forwardRows < 0)
        {
            throw new InvalidOperationException("no forward pass was begun");
        }
        while (_forwardLayer < _arch.Layers.Count)
        {
            int l = _forwardLayer, blocks = ReleaseBlocks.BlockCount(_arch, l);
            bool complete = true;
            for (int b = 0; b < blocks;)
            {
                if (_unitBlockDone[b] || !UnitBlockReady(l, b, present))
                {
                    complete &= _unitBlockDone[b];
                    b++;
                    continue;
                }
                int end = b + 1;
                while (end < blocks && !_unitBlockDone[end] && UnitBlockReady(l, end, present))
                {
                    end++;
                }
                LayerUnits(parameters, l, ReleaseBlocks.Rows(_arch, l, b).First, ReleaseBlocks.Rows(_arch, l, end - 1).End);
                _unitBlockDone.AsSpan(b, end - b).Fill(true);
                b = end;
            }
            if (!complete)
            {
                return false;
            }
            Activate(l);
            _forwardLayer++;
            Array.Clear(_unitBlockDone);
            _packedInput.Reset();
        }
        return true;
    }

    /// <summary>Whether the forward pass begun last has run every layer.</summary>
    public bool ForwardComplete => _forwardRows >= 0 && _forwardLayer == _arch.Layers.Count;

    private int _forwardRows = -1;
    private int _forwardLayer;
    /// <summary>The current layer's input as packed by its first product, while the layer runs in blocks.</summary>
    private readonly Gemm.PackedLeft _packedInput = new();
    /// <summary>The current layer's blocks of units done (at most 256 KiB of W_l a block, so few).</summary>
    private bool[] _unitBlockDone = [];

    private bool UnitBlockReady(int layer, int block, IParameterPresence present)
    {
        LayerSpec spec = _arch.Layers[layer];
        var (first, end) = ReleaseBlocks.Rows(_arch, layer, block);
        int units = end - first;
        return present.Has(_arch.WeightOffset(layer) + first * spec.Inputs, units * spec.Inputs)
            && present.Has(_arch.BiasOffset(layer) + first, units);
    }

    /// <summary>z_l's columns [<paramref name="first"/>, <paramref name="end"/>): its units' rows of W_l and entries of b_l.</summary>
    private void LayerUnits(ReadOnlySpan<T> parameters, int l, int first, int end)
    {
        // x: (rows, in), W: (out, in), z = x·Wᵀ + b; here only units [first, end) of out.
        LayerSpec layer = _arch.Layers[l];
        int rows = _forwardRows, units = end - first;
        ReadOnlySpan<T> x = l == 0 ? _input.AsSpan(0, rows * layer.Inputs) : _a[l - 1].AsSpan(0, rows * layer.Inputs);
        Span<T> z = _z[l].AsSpan(0, rows * layer.Outputs);
        ReadOnlySpan<T> bias = _arch.Bias(parameters, l).Slice(first, units);
        for (int r = 0; r < rows; r++)
        {
            bias.CopyTo(z.Slice(r * layer.Outputs + first, units));
        }
        // A layer computed in several products (blocks arriving apart) packs its input once for all of them.
        MultiplyAdd(
            StridedMatrix<T>.RowMajor(x, rows, layer.Inputs),
            StridedMatrix<T>.RowMajor(_arch.Weight(parameters, l).Slice(first * layer.Inputs, units * layer.Inputs), units, layer.Inputs).Transposed(),
            z[first..], layer.Outputs, units < layer.Outputs ? _packedInput : null);
    }

    /// <summary>a_l = σ_l(z_l), row by row.</summary>
    private void Activate(int l)
    {
        int outputs = _arch.Layers[l].Outputs;
        Span<T> z = _z[l].AsSpan(0, _forwardRows * outputs), a = _a[l].AsSpan(0, _forwardRows * outputs);
        for (int r = 0; r < _forwardRows; r++)
        {
            Activations.ForwardRow(_arch.Layers[l].Activation, z.Slice(r * outputs, outputs), a.Slice(r * outputs, outputs));
        }
    }

    /// <summary>
    /// Loss of the last forward pass's rows against <paramref name="labels"/>, without gradients.
    /// </summary>
    public BatchResult Evaluate(ReadOnlySpan<int> labels)
    {
        double loss = 0;
        int correct = 0;
        for (int r = 0; r < labels.Length; r++)
        {
            loss += RowLoss(r, labels[r], out bool hit);
            correct += hit ? 1 : 0;
        }
        return new BatchResult(loss, correct, labels.Length);
    }

    /// <summary>
    /// Backpropagation over the rows of the last <see cref="Forward"/> (lecture, §backpropagation):
    /// start from δ_L = ∂J/∂z_L at the output, then walk the layers downwards, each layer reusing its δ_l
    /// for all three of its products instead of re-deriving the chain rule per weight:
    /// <code>
    ///   ∂J/∂W_l = δ_lᵀ · a_{l−1}        ∂J/∂b_l = Σ_rows δ_l        ∂J/∂a_{l−1} = δ_l · W_l
    ///   δ_{l−1} = ∂J/∂a_{l−1} ⊙ σ'_{l−1}(z_{l−1})
    /// </code>
    /// The rows are cut into chunks by <paramref name="chunkStarts"/> (0 … rows); the sums over rows in
    /// ∂J/∂W and ∂J/∂b, and the loss, are the canonical chunk-tree sums of <see cref="ChunkTree"/>.
    /// <paramref name="normaliser"/> is n of J = 1/n Σ (the global batch, not this node's rows), so
    /// gradients of the parts of a batch add up to the gradient of the batch.
    /// Writes (does not accumulate into) <paramref name="gradient"/>, laid out like the parameters; tells
    /// <paramref name="release"/>, if given, each part as soon as it is final (<see cref="ReleaseBlocks"/>).
    /// </summary>
    public BatchResult Backward(ReadOnlySpan<T> parameters, ReadOnlySpan<int> labels, ReadOnlySpan<int> chunkStarts, int normaliser, Span<T> gradient, IGradientRelease? release = null)
    {
        CheckParameters(parameters);
        if (gradient.Length != _arch.ParameterCount)
        {
            throw new ArgumentException($"gradient has {gradient.Length} elements, the network has {_arch.ParameterCount} parameters");
        }
        int rows = labels.Length;
        CheckForwardDone(rows);
        int chunks = chunkStarts.Length - 1;
        if (chunks < 1 || chunkStarts[0] != 0 || chunkStarts[^1] != rows)
        {
            throw new ArgumentException($"chunk starts must run from 0 to the {rows} rows");
        }
        ArgumentOutOfRangeException.ThrowIfLessThan(normaliser, 1);
        EnsureChunkCapacity(chunks);

        // Output layer: δ_L = ∂J/∂z_L, and each chunk's loss.
        int correct = OutputDelta(labels, chunkStarts, normaliser);
        double lossSum = ChunkTree.Sum(_chunkLoss.AsSpan(0, chunks));

        for (int l = _arch.Layers.Count - 1; l >= 0; l--)
        {
            LayerSpec layer = _arch.Layers[l];
            int inputs = layer.Inputs, outputs = layer.Outputs;
            ReadOnlySpan<T> delta = _delta.AsSpan(0, rows * outputs);
            ReadOnlySpan<T> below = l == 0 ? _input.AsSpan(0, rows * inputs) : _a[l - 1].AsSpan(0, rows * inputs);

            // ∂J/∂b_l = Σ_rows δ_l, summed over rows chunk by chunk along the chunk tree.
            BiasGradient(delta, outputs, chunkStarts, _arch.Bias(gradient, l));

            // ∂J/∂W_l = δ_lᵀ · a_{l−1}: (out, rows)·(rows, in), same chunk tree. With someone to tell, in blocks of
            // rows in the order it asks for, each released when done (every element is its own chain: the same bits).
            var deltaTransposed = StridedMatrix<T>.RowMajor(delta, rows, outputs).Transposed();
            var belowRows = StridedMatrix<T>.RowMajor(below, rows, inputs);
            if (release is null)
            {
                ChunkTreeProduct(deltaTransposed, belowRows, chunkStarts, _arch.Weight(gradient, l), inputs);
            }
            else
            {
                int blockRows = ReleaseBlocks.BlockRows(_arch, l);
                ReadOnlySpan<int> order = BlockOrder(l, (outputs + blockRows - 1) / blockRows, release);
                (_releaser ??= new BlockReleaser(_arch)).Begin(l, release);
                ChunkTreeProductInBlocks(deltaTransposed, belowRows, chunkStarts, _arch.Weight(gradient, l), inputs, blockRows, order, _releaser);
            }

            if (l == 0)
            {
                break;
            }
            // ∂J/∂a_{l−1} = δ_l · W_l: (rows, out)·(out, in), then δ_{l−1} = ∂J/∂a_{l−1} ⊙ σ'(z_{l−1}).
            Span<T> dBelow = _dActivation.AsSpan(0, rows * inputs);
            dBelow.Clear();
            MultiplyAdd(
                StridedMatrix<T>.RowMajor(delta, rows, outputs),
                StridedMatrix<T>.RowMajor(_arch.Weight(parameters, l), outputs, inputs),
                dBelow, inputs);
            Activation belowActivation = _arch.Layers[l - 1].Activation;
            for (int r = 0; r < rows; r++)
            {
                int at = r * inputs;
                Activations.BackwardRow(belowActivation, _z[l - 1].AsSpan(at, inputs), _a[l - 1].AsSpan(at, inputs),
                    dBelow.Slice(at, inputs), _scratchRow.AsSpan(0, inputs));
            }
            // The new δ becomes the current one; the old buffer is reused for the next ∂J/∂a.
            (_delta, _dActivation) = (_dActivation, _delta);
        }
        return new BatchResult(lossSum, correct, rows);
    }

    /// <summary>Layer <paramref name="layer"/>'s blocks last first, in the order <paramref name="release"/> puts them (checked: each once).</summary>
    private ReadOnlySpan<int> BlockOrder(int layer, int blocks, IGradientRelease release)
    {
        if (_blockOrder.Length < blocks)
        {
            _blockOrder = new int[blocks];
        }
        Span<int> order = _blockOrder.AsSpan(0, blocks);
        for (int i = 0; i < blocks; i++)
        {
            order[i] = blocks - 1 - i;
        }
        release.OrderBlocks(layer, order);
        Gemm.CheckRowBlocks(blocks, 1, order);
        return order;
    }

    private int[] _blockOrder = [];

    /// <summary>
    /// δ_L per row. Softmax + cross-entropy: δ = (a − y)/n directly (the softmax Jacobian and the log
    /// cancel). Otherwise ∂J/∂a = (a − y)/n for mse, pushed through σ'_L.
    /// </summary>
    private int OutputDelta(ReadOnlySpan<int> labels, ReadOnlySpan<int> chunkStarts, int normaliser)
    {
        LayerSpec output = _arch.Layers[^1];
        int width = output.Outputs;
        T inverseN = T.One / T.CreateChecked(normaliser);
        int correct = 0;
        Span<T> delta = _delta.AsSpan(0, labels.Length * width);
        ReadOnlySpan<T> a = _a[^1];
        for (int chunk = 0; chunk < chunkStarts.Length - 1; chunk++)
        {
            double chunkLoss = 0;
            for (int r = chunkStarts[chunk]; r < chunkStarts[chunk + 1]; r++)
            {
                int label = labels[r];
                chunkLoss += RowLoss(r, label, out bool hit);
                correct += hit ? 1 : 0;
                Span<T> row = delta.Slice(r * width, width);
                a.Slice(r * width, width).CopyTo(row);
                row[label] -= T.One;
                TensorPrimitives.Multiply(row, inverseN, row);
                if (_arch.Loss != Loss.CrossEntropy)
                {
                    Activations.BackwardRow(output.Activation, _z[^1].AsSpan(r * width, width), a.Slice(r * width, width), row, _scratchRow.AsSpan(0, width));
                }
            }
            _chunkLoss[chunk] = chunkLoss;
        }
        return correct;
    }

    /// <summary>Per-row loss in double (reporting only; gradients never read it).</summary>
    private double RowLoss(int row, int label, out bool correct)
    {
        int width = _arch.Outputs;
        if ((uint)label >= (uint)width)
        {
            throw new ArgumentOutOfRangeException(nameof(label), $"label {label} is not one of the {width} outputs");
        }
        ReadOnlySpan<T> a = _a[^1].AsSpan(row * width, width);
        correct = TensorPrimitives.IndexOfMax(a) == label;
        if (_arch.Loss == Loss.CrossEntropy)
        {
            // −log softmax(z)[label] = logsumexp(z) − z[label]: finite even where a[label] underflows to 0.
            ReadOnlySpan<T> z = _z[^1].AsSpan(row * width, width);
            double max = double.CreateChecked(TensorPrimitives.Max(z));
            double sum = 0;
            foreach (T value in z)
            {
                sum += Math.Exp(double.CreateChecked(value) - max);
            }
            return Math.Log(sum) + max - double.CreateChecked(z[label]);
        }
        double squares = 0;
        for (int j = 0; j < width; j++)
        {
            double diff = double.CreateChecked(a[j]) - (j == label ? 1.0 : 0.0);
            squares += diff * diff;
        }
        return 0.5 * squares;
    }

    /// <summary>
    /// ∂J/∂b = chunk-tree sum over rows of δ: each chunk summed row by row from +0, chunks combined
    /// by a binary-counter walk of the canonical tree (left + right, leftovers folded from the right).
    /// </summary>
    private void BiasGradient(ReadOnlySpan<T> delta, int width, ReadOnlySpan<int> chunkStarts, Span<T> dBias)
    {
        int chunks = chunkStarts.Length - 1;
        var walk = new TreeWalk(stackalloc int[ChunkTree.MaxStackDepth(chunks)]);
        for (int chunk = 0; chunk < chunks; chunk++)
        {
            Span<T> leaf = _biasStack.AsSpan(walk.Push() * width, width);
            leaf.Clear();
            for (int r = chunkStarts[chunk]; r < chunkStarts[chunk + 1]; r++)
            {
                TensorPrimitives.Add(leaf, delta.Slice(r * width, width), leaf);
            }
            while (walk.TryMerge(out int left, out int right))
            {
                AddSlot(left, right, width);
            }
        }
        while (walk.TryFold(out int left, out int right))
        {
            AddSlot(left, right, width);
        }
        _biasStack.AsSpan(0, width).CopyTo(dBias);
    }

    private void AddSlot(int left, int right, int width)
    {
        Span<T> target = _biasStack.AsSpan(left * width, width);
        TensorPrimitives.Add(target, _biasStack.AsSpan(right * width, width), target);
    }

    private static void MultiplyAdd(StridedMatrix<T> a, StridedMatrix<T> b, Span<T> c, int ldc, Gemm.PackedLeft? packedA = null)
    {
        if (typeof(T) == typeof(float))
        {
            Gemm.MultiplyAdd(AsFloat(a), AsFloat(b), MemoryMarshal.Cast<T, float>(c), ldc, SimdTiers.Best, packedA);
        }
        else
        {
            NaiveGemm.MultiplyAdd(a, b, c, ldc);
        }
    }

    private static void ChunkTreeProduct(StridedMatrix<T> a, StridedMatrix<T> b, ReadOnlySpan<int> chunkStarts, Span<T> c, int ldc)
    {
        if (typeof(T) == typeof(float))
        {
            Gemm.ChunkTreeProduct(AsFloat(a), AsFloat(b), chunkStarts, MemoryMarshal.Cast<T, float>(c), ldc);
        }
        else
        {
            NaiveGemm.ChunkTreeProduct(a, b, chunkStarts, c, ldc);
        }
    }

    /// <summary>∂J/∂W_l in blocks of rows in <paramref name="order"/>, each told to <paramref name="done"/> when complete.</summary>
    private static void ChunkTreeProductInBlocks(StridedMatrix<T> a, StridedMatrix<T> b, ReadOnlySpan<int> chunkStarts, Span<T> c, int ldc, int blockRows, ReadOnlySpan<int> order, IRowBlockDone done)
    {
        if (typeof(T) == typeof(float))
        {
            Gemm.ChunkTreeProduct(AsFloat(a), AsFloat(b), chunkStarts, MemoryMarshal.Cast<T, float>(c), ldc, new RowBlocks(blockRows, order, done), SimdTiers.Best);
            return;
        }
        foreach (int block in order)
        {
            int first = block * blockRows, count = Math.Min(blockRows, a.Rows - first);
            NaiveGemm.ChunkTreeProduct(a.RowRange(first, count), b, chunkStarts, c[(first * ldc)..], ldc);
            done.Done(block);
        }
    }

    private BlockReleaser? _releaser;

    /// <summary>Turns a finished block of ∂J/∂W_l's rows into the parameters it releases (with b_l for the last one).</summary>
    private sealed class BlockReleaser(Architecture architecture) : IRowBlockDone
    {
        private int _layer;
        private IGradientRelease? _release;

        public void Begin(int layer, IGradientRelease release) => (_layer, _release) = (layer, release);

        public void Done(int block)
        {
            var (start, count) = ReleaseBlocks.Range(architecture, _layer, block);
            _release!.Released(start, count);
        }
    }

    private static StridedMatrix<float> AsFloat(StridedMatrix<T> m) =>
        new(MemoryMarshal.Cast<T, float>(m.Data), m.Rows, m.Cols, m.RowStride, m.ColStride);

    private void CheckForwardDone(int rows)
    {
        if (!ForwardComplete || rows != _forwardRows)
        {
            throw new InvalidOperationException($"the forward pass on {rows} rows is not complete");
        }
    }

    private void CheckParameters(ReadOnlySpan<T> parameters)
    {
        if (parameters.Length != _arch.ParameterCount)
        {
            throw new ArgumentException($"parameters have {parameters.Length} elements, the network has {_arch.ParameterCount}");
        }
    }

    private void EnsureCapacity(int rows)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        if (rows <= _capacity)
        {
            return;
        }
        _capacity = Math.Max(rows, _capacity * 2);
        _forwardRows = -1;
        _input = new T[_capacity * _arch.Inputs];
        for (int l = 0; l < _arch.Layers.Count; l++)
        {
            _z[l] = new T[_capacity * _arch.Layers[l].Outputs];
            _a[l] = new T[_capacity * _arch.Layers[l].Outputs];
        }
        _delta = new T[_capacity * _arch.MaxWidth];
        _dActivation = new T[_capacity * _arch.MaxWidth];
    }

    private void EnsureChunkCapacity(int chunks)
    {
        if (_chunkLoss.Length < chunks)
        {
            _chunkLoss = new double[chunks];
        }
        int stackFloats = ChunkTree.MaxStackDepth(chunks) * _arch.MaxWidth;
        if (_biasStack.Length < stackFloats)
        {
            _biasStack = new T[stackFloats];
        }
    }
}
