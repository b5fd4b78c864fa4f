using System.Numerics;
using DistributedBackprop.Network;

namespace DistributedBackprop.Optimizers;

/// <summary>
/// Applies one update to the flat parameter buffer from the step's gradient. Holds the optimizer state
/// (velocity, or Adam's moments) as flat buffers shaped like the parameters, so a checkpoint writes them
/// as they are. The loops are hand-vectorised with <see cref="Vector{T}"/>; each element sees the same
/// IEEE operations in the vector body and the scalar tail, so the result does not depend on SIMD width.
/// </summary>
public sealed class Optimizer
{
    private readonly Architecture _arch;

    public Optimizer(Architecture architecture, OptimizerSettings settings)
    {
        _arch = architecture;
        Settings = settings;
        int n = architecture.ParameterCount;
        switch (settings.Kind)
        {
            case OptimizerKind.Momentum:
                Velocity = new float[n];
                break;
            case OptimizerKind.Adam:
                FirstMoment = new float[n];
                SecondMoment = new float[n];
                break;
        }
    }

    public OptimizerSettings Settings { get; }

    private double _beta1Power = 1, _beta2Power = 1;
    private long _steps;

    /// <summary>Updates applied so far (Adam's t). Setting it (on resume) recomputes β1^t and β2^t.</summary>
    public long Steps
    {
        get => _steps;
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            _steps = value;
            // β^t by repeated multiplication in double: exact IEEE arithmetic, no pow(), so a resumed
            // run continues with the very same bits as an uninterrupted one.
            _beta1Power = 1;
            _beta2Power = 1;
            for (long t = 0; t < value; t++)
            {
                _beta1Power *= Settings.Beta1;
                _beta2Power *= Settings.Beta2;
            }
        }
    }

    /// <summary>Momentum buffer v (momentum only).</summary>
    public float[]? Velocity { get; }

    /// <summary>Adam's m (first moment).</summary>
    public float[]? FirstMoment { get; }

    /// <summary>Adam's v (second moment).</summary>
    public float[]? SecondMoment { get; }

    /// <summary>Named state tensors, for checkpoints.</summary>
    public IEnumerable<(string Name, float[] Values)> StateTensors()
    {
        if (Velocity is not null) yield return ("optimizer.velocity", Velocity);
        if (FirstMoment is not null) yield return ("optimizer.m", FirstMoment);
        if (SecondMoment is not null) yield return ("optimizer.v", SecondMoment);
    }

    /// <summary>w ← update(w, g) with learning rate γ = <paramref name="learningRate"/>.</summary>
    public void Apply(Span<float> parameters, ReadOnlySpan<float> gradient, float learningRate)
    {
        BeginStep();
        ApplyRange(parameters, gradient, learningRate, 0, _arch.ParameterCount);
    }

    /// <summary>Back to the state before the first update: velocity and moments 0, t = 0 (a replica's inner optimizer at each round's start).</summary>
    public void Reset()
    {
        if (Velocity is not null) Array.Clear(Velocity);
        if (FirstMoment is not null) Array.Clear(FirstMoment);
        if (SecondMoment is not null) Array.Clear(SecondMoment);
        Steps = 0;
    }

    /// <summary>Starts an update (advances t); follow with <see cref="ApplyRange"/> over every parameter once.</summary>
    public void BeginStep()
    {
        _steps++;
        _beta1Power *= Settings.Beta1;
        _beta2Power *= Settings.Beta2;
    }

    /// <summary>
    /// Updates parameters [start, start + count) of the step begun by <see cref="BeginStep"/>. The update is
    /// element-wise, so disjoint ranges may run on different threads and give the same bits as one call.
    /// </summary>
    public void ApplyRange(Span<float> parameters, ReadOnlySpan<float> gradient, float learningRate, int start, int count)
    {
        if (parameters.Length != _arch.ParameterCount || gradient.Length != _arch.ParameterCount)
        {
            throw new ArgumentException($"expected {_arch.ParameterCount} parameters and gradients, got {parameters.Length} and {gradient.Length}");
        }
        ApplyWindow(parameters, gradient, 0, learningRate, start, start + count);
    }

    /// <summary>
    /// Updates a shard's slice: <paramref name="parameters"/> and <paramref name="gradient"/> hold parameters
    /// [start, start + length) of the model (the optimizer state stays indexed by the model's parameter index).
    /// Element for element the same arithmetic as <see cref="ApplyRange"/>, so K slices give one pass's bits.
    /// </summary>
    public void ApplySlice(Span<float> parameters, ReadOnlySpan<float> gradient, float learningRate, int start)
    {
        if (parameters.Length != gradient.Length || start < 0 || (long)start + parameters.Length > _arch.ParameterCount)
        {
            throw new ArgumentException($"a slice of {parameters.Length} parameters and {gradient.Length} gradients at {start} does not fit {_arch.ParameterCount} parameters");
        }
        ApplyWindow(parameters, gradient, start, learningRate, start, start + parameters.Length);
    }

    /// <summary>Parameters [start, end) of the model; element 0 of the spans is parameter <paramref name="origin"/>.</summary>
    private void ApplyWindow(Span<float> parameters, ReadOnlySpan<float> gradient, int origin, float learningRate, int start, int end)
    {
        for (int l = 0; l < _arch.Layers.Count; l++)
        {
            // Weights then biases of layer l; weight decay on the weights only.
            ApplyIntersection(parameters, gradient, origin, _arch.WeightOffset(l), _arch.WeightCount(l), start, end, learningRate, Settings.WeightDecay);
            ApplyIntersection(parameters, gradient, origin, _arch.BiasOffset(l), _arch.Layers[l].Outputs, start, end, learningRate, 0f);
        }
    }

    private void ApplyIntersection(Span<float> parameters, ReadOnlySpan<float> gradient, int origin, int offset, int count, int start, int end, float lr, float decay)
    {
        int from = Math.Max(offset, start), to = Math.Min(offset + count, end);
        if (from < to)
        {
            ApplySection(parameters.Slice(from - origin, to - from), gradient.Slice(from - origin, to - from), from, lr, decay);
        }
    }

    /// <summary>One section of one tensor: <paramref name="w"/> and <paramref name="g"/> start at parameter <paramref name="offset"/>.</summary>
    private void ApplySection(Span<float> w, ReadOnlySpan<float> g, int offset, float lr, float decay)
    {
        int count = w.Length;
        switch (Settings.Kind)
        {
            case OptimizerKind.Sgd:
                Sgd(w, g, lr, decay);
                break;
            case OptimizerKind.Momentum:
                Momentum(w, g, Velocity.AsSpan(offset, count), lr, decay, Settings.Momentum, Settings.Nesterov);
                break;
            case OptimizerKind.Adam:
                Adam(w, g, FirstMoment.AsSpan(offset, count), SecondMoment.AsSpan(offset, count), lr, decay);
                break;
        }
    }

    // SGD (lecture): w ← w − γ(g + λw)
    private static void Sgd(Span<float> w, ReadOnlySpan<float> g, float lr, float decay)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            for (; i <= w.Length - Vector<float>.Count; i += Vector<float>.Count)
            {
                var wi = new Vector<float>(w[i..]);
                var gi = new Vector<float>(g[i..]) + wi * decay;
                (wi - gi * lr).CopyTo(w[i..]);
            }
        }
        for (; i < w.Length; i++)
        {
            float gi = g[i] + w[i] * decay;
            w[i] = w[i] - gi * lr;
        }
    }

    // Momentum (Sutskever et al. 2013, PyTorch form): v ← μv + (g + λw); w ← w − γv,
    // or with Nesterov w ← w − γ(g + λw + μv).
    private static void Momentum(Span<float> w, ReadOnlySpan<float> g, Span<float> v, float lr, float decay, float mu, bool nesterov)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            for (; i <= w.Length - Vector<float>.Count; i += Vector<float>.Count)
            {
                var wi = new Vector<float>(w[i..]);
                var gi = new Vector<float>(g[i..]) + wi * decay;
                var vi = new Vector<float>(v[i..]) * mu + gi;
                vi.CopyTo(v[i..]);
                var step = nesterov ? gi + vi * mu : vi;
                (wi - step * lr).CopyTo(w[i..]);
            }
        }
        for (; i < w.Length; i++)
        {
            float gi = g[i] + w[i] * decay;
            float vi = v[i] * mu + gi;
            v[i] = vi;
            float step = nesterov ? gi + vi * mu : vi;
            w[i] = w[i] - step * lr;
        }
    }

    // Adam (Kingma & Ba 2015, Alg. 1) with decoupled decay (AdamW):
    //   m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
    //   w ← w − γλw − (γ / (1−β1^t)) · m / (√v / √(1−β2^t) + ε)
    private void Adam(Span<float> w, ReadOnlySpan<float> g, Span<float> m, Span<float> v, float lr, float decay)
    {
        float beta1 = Settings.Beta1, beta2 = Settings.Beta2, eps = Settings.Epsilon;
        float stepSize = (float)(lr / (1 - _beta1Power));
        float sqrtCorrection2 = (float)Math.Sqrt(1 - _beta2Power);
        float keep = 1f - lr * decay;
        float oneMinusBeta1 = 1f - beta1, oneMinusBeta2 = 1f - beta2;
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            for (; i <= w.Length - Vector<float>.Count; i += Vector<float>.Count)
            {
                var gi = new Vector<float>(g[i..]);
                var mi = new Vector<float>(m[i..]) * beta1 + gi * oneMinusBeta1;
                var vi = new Vector<float>(v[i..]) * beta2 + gi * gi * oneMinusBeta2;
                mi.CopyTo(m[i..]);
                vi.CopyTo(v[i..]);
                var denominator = Vector.SquareRoot(vi) / sqrtCorrection2 + new Vector<float>(eps);
                (new Vector<float>(w[i..]) * keep - mi / denominator * stepSize).CopyTo(w[i..]);
            }
        }
        for (; i < w.Length; i++)
        {
            float gi = g[i];
            float mi = m[i] * beta1 + gi * oneMinusBeta1;
            float vi = v[i] * beta2 + gi * gi * oneMinusBeta2;
            m[i] = mi;
            v[i] = vi;
            float denominator = MathF.Sqrt(vi) / sqrtCorrection2 + eps;
            w[i] = w[i] * keep - mi / denominator * stepSize;
        }
    }
}
