namespace DistributedBackprop.Network;

/// <summary>One dense layer: z = a_prev·Wᵀ + b with W of shape [Outputs, Inputs], then a = σ(z).</summary>
public sealed record LayerSpec(int Inputs, int Outputs, Activation Activation);

/// <summary>
/// The shape of a multilayer perceptron and where each layer's parameters live in the flat buffer:
/// layer l's weights W_l [out × in] row-major (PyTorch nn.Linear layout), then its bias b_l [out].
/// One flat buffer makes a gradient message one span, the optimizer one loop, a checkpoint one write.
/// </summary>
public sealed class Architecture : IEquatable<Architecture>
{
    private readonly int[] _weightOffsets;
    private readonly int[] _biasOffsets;

    public Architecture(int inputs, IReadOnlyList<LayerSpec> layers, Loss loss)
    {
        if (inputs < 1)
        {
            throw new ArgumentException("a network needs at least one input");
        }
        if (layers.Count == 0)
        {
            throw new ArgumentException("a network needs at least one layer");
        }
        int expectedInputs = inputs;
        for (int l = 0; l < layers.Count; l++)
        {
            LayerSpec layer = layers[l];
            if (layer.Inputs != expectedInputs)
            {
                throw new ArgumentException($"layer {l} takes {layer.Inputs} inputs but the layer below gives {expectedInputs}");
            }
            if (layer.Outputs < 1)
            {
                throw new ArgumentException($"layer {l} has {layer.Outputs} outputs; every layer needs at least one");
            }
            if (layer.Activation == Activation.Softmax && l != layers.Count - 1)
            {
                throw new ArgumentException($"softmax is only allowed on the output layer (layer {l} of {layers.Count})");
            }
            expectedInputs = layer.Outputs;
        }
        if (loss == Loss.CrossEntropy && layers[^1].Activation != Activation.Softmax)
        {
            throw new ArgumentException($"cross_entropy needs a softmax output layer, not {layers[^1].Activation.Name()}");
        }
        if (loss == Loss.CrossEntropy && layers[^1].Outputs < 2)
        {
            throw new ArgumentException("cross_entropy needs at least two output classes");
        }

        Inputs = inputs;
        Layers = layers.ToArray();
        Loss = loss;
        _weightOffsets = new int[layers.Count];
        _biasOffsets = new int[layers.Count];
        long offset = 0;
        for (int l = 0; l < layers.Count; l++)
        {
            _weightOffsets[l] = checked((int)offset);
            offset += (long)layers[l].Inputs * layers[l].Outputs;
            _biasOffsets[l] = checked((int)offset);
            offset += layers[l].Outputs;
        }
        ParameterCount = checked((int)offset);
    }

    /// <summary>Hidden layers share one activation; the output layer has its own.</summary>
    public static Architecture Create(int inputs, IReadOnlyList<int> hidden, int outputs, Activation hiddenActivation, Activation outputActivation, Loss loss)
    {
        var layers = new List<LayerSpec>();
        int previous = inputs;
        foreach (int width in hidden)
        {
            layers.Add(new LayerSpec(previous, width, hiddenActivation));
            previous = width;
        }
        layers.Add(new LayerSpec(previous, outputs, outputActivation));
        return new Architecture(inputs, layers, loss);
    }

    public int Inputs { get; }
    public IReadOnlyList<LayerSpec> Layers { get; }
    public Loss Loss { get; }
    public int Outputs => Layers[^1].Outputs;
    public int ParameterCount { get; }
    public int MaxWidth => Math.Max(Inputs, Layers.Max(l => l.Outputs));

    public int WeightOffset(int layer) => _weightOffsets[layer];
    public int BiasOffset(int layer) => _biasOffsets[layer];
    public int WeightCount(int layer) => Layers[layer].Inputs * Layers[layer].Outputs;

    public Span<T> Weight<T>(Span<T> flat, int layer) => flat.Slice(_weightOffsets[layer], WeightCount(layer));
    public ReadOnlySpan<T> Weight<T>(ReadOnlySpan<T> flat, int layer) => flat.Slice(_weightOffsets[layer], WeightCount(layer));
    public Span<T> Bias<T>(Span<T> flat, int layer) => flat.Slice(_biasOffsets[layer], Layers[layer].Outputs);
    public ReadOnlySpan<T> Bias<T>(ReadOnlySpan<T> flat, int layer) => flat.Slice(_biasOffsets[layer], Layers[layer].Outputs);

    /// <summary>e.g. "64-128-10 relu,softmax cross_entropy".</summary>
    public string Describe() =>
        $"{Inputs}-{string.Join('-', Layers.Select(l => l.Outputs))} {string.Join(',', Layers.Select(l => l.Activation.Name()))} {Loss.Name()}";

    public bool Equals(Architecture? other) =>
        other is not null && Inputs == other.Inputs && Loss == other.Loss && Layers.SequenceEqual(other.Layers);

    public override bool Equals(object? obj) => Equals(obj as Architecture);

    public override int GetHashCode() => HashCode.Combine(Inputs, Loss, Layers.Count, Layers[^1]);

    public override string ToString() => Describe();
}
